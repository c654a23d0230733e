"""Greedy and batched beam search over any model with the decoding protocol below.

The model provides:
  ``encode(src [B,S], src_len [B]) -> (memory, state)``
  ``decode_step(prev [B], state, memory) -> (log_probs [B,V], state)``
  ``select_state(state, index [N]) -> state`` and ``select_memory(memory, index [N]) -> memory``
  ``bos_id``, ``eos_id``;
and, only where attention weights are asked for (``attention=True``),
  ``decode_step_with_attention(prev, state, memory) -> (log_probs [B,V], state, weights [B,S])``.
Hypotheses are returned without BOS and EOS. Scores that are NaN (a plugin broke its contract) are a
:class:`~nmt.errors.PluginError`, checked on the host copy each step already makes, and so are attention
weights of another shape than [B, S] or not finite (checked once a batch).
"""
from __future__ import annotations

import numpy as np
import torch

from nmt import plugin_checks
from nmt.search_rules import Hypothesis, beam_step, greedy_step, length_penalty

__all__ = ["Hypothesis", "length_penalty", "max_lengths", "greedy_search", "beam_search"]


def max_lengths(src_len: torch.Tensor, ratio: float) -> torch.Tensor:
    return (src_len.float() * ratio).long() + 10


def _step(model, prev: torch.Tensor, state, memory, attention: bool, source_length: int):
    """(log_probs [B,V], state, weights [B,S] or None): the weights only when asked for, checked to be
    [B, S] for ``source_length`` S (metadata only)."""
    if not attention:
        log_probs, state = model.decode_step(prev, state, memory)
        return log_probs, state, None
    log_probs, new_state, weights = model.decode_step_with_attention(prev, state, memory)
    if not (isinstance(weights, torch.Tensor) and weights.shape == (prev.size(0), source_length)):
        plugin_checks.refuse_weights(model, weights, (prev.size(0), source_length),
                                     lambda: model.decode_step_with_attention(prev, state, memory))
    return log_probs, new_state, weights


@torch.no_grad()
def greedy_search(model, src: torch.Tensor, src_len: torch.Tensor, max_length_ratio: float = 2.0,
                  attention: bool = False) -> list[Hypothesis]:
    """The most probable token at each step until EOS or the length limit; with ``attention``, each
    hypothesis also carries the attention weights of its steps. A sentence leaves the batch at the
    step it ends, so the steps after it cost only the rows still searching."""
    batch, device = src.size(0), src.device
    limits = max_lengths(src_len, max_length_ratio).cpu().numpy()  # [B]
    memory, state = model.encode(src, src_len)
    prev = torch.full((batch,), model.bos_id, dtype=torch.long, device=device)  # the live rows' last tokens
    live = np.arange(batch)  # the sentence of each live row
    tokens: list[list[int]] = [[] for _ in range(batch)]
    log_prob = np.zeros(batch, dtype=np.float32)
    # with attention: each sentence's weights [B, steps, S], a step's written at its live rows
    weights = torch.zeros(batch, int(limits.max()), src.size(1), device=device) if attention else None
    for t in range(int(limits.max())):
        log_probs, state, step_weights = _step(model, prev, state, memory, attention, src.size(1))  # [n,V], state, [n,S]
        if attention:
            weights[torch.from_numpy(live).to(device), t] = step_weights.float()
        best_lp, prev = log_probs.max(dim=-1)  # [n]
        # one device-to-host copy a step (float64 holds the log-probabilities and token ids exactly)
        host = torch.stack((best_lp.double(), prev.double())).cpu().numpy()  # [2, n]
        keep = greedy_step(live, host[1].astype(np.int64), host[0].astype(np.float32), tokens, log_prob,
                           limits, t, model.eos_id)
        if np.isnan(host[0]).any():  # on the host already: no device sync
            plugin_checks.refuse_scores(model)
        if len(keep) == 0:
            break
        if len(keep) < len(live):  # drop the sentences that ended from the batch
            index = torch.from_numpy(keep).to(device)
            prev, live = prev.index_select(0, index), live[keep]
            state, memory = model.select_state(state, index), model.select_memory(memory, index)
    if attention and not bool(torch.isfinite(weights).all()):  # one sync a batch, where they go to the host anyway
        plugin_checks.refuse_attention_values(model)
    out = []
    for b, (row, lp) in enumerate(zip(tokens, log_prob.tolist())):
        hyp_attention = None
        if attention:  # a row per token, and one for EOS unless the cap cut it (then it had no EOS step)
            n_rows = min(len(row) + 1, int(limits[b]))
            hyp_attention = weights[b, :n_rows, : int(src_len[b])].tolist()
        out.append(Hypothesis(row, lp, lp, hyp_attention))
    return out


@torch.no_grad()
def beam_search(model, src: torch.Tensor, src_len: torch.Tensor, beam_size: int = 5, alpha: float = 0.6,
                nbest: int = 1, max_length_ratio: float = 2.0, attention: bool = False) -> list[list[Hypothesis]]:
    """Batched beam search with a GNMT length penalty; returns the ``nbest`` best per sentence.

    Sentences leave the batch as soon as no live hypothesis can beat their ``nbest`` finished ones,
    so a batch costs what its longest unfinished sentence costs, on ever fewer rows. With
    ``attention``, each live row also keeps the attention weights along its path, reordered with
    the beams, so a hypothesis carries the weights of the steps that made it."""
    batch, k, device = src.size(0), beam_size, src.device
    limits = max_lengths(src_len, max_length_ratio).tolist()
    src_lengths = src_len.tolist()
    paths = None  # with attention: [n*K, t, S] weights of each live row's steps so far
    memory, state = model.encode(src, src_len)
    expand = torch.arange(batch, device=device).repeat_interleave(k)  # [B*K]
    memory, state = model.select_memory(memory, expand), model.select_state(state, expand)
    # each live row's tokens so far live on the host (read there when hypotheses end); the device
    # keeps the scores and the last tokens, the next step's input
    tokens = np.full((batch * k, 1), model.bos_id, dtype=np.int64)  # [B*K,1]
    last = torch.full((batch * k,), model.bos_id, dtype=torch.long, device=device)  # [B*K]
    scores = torch.zeros(batch, k, device=device)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one
    active = list(range(batch))  # original sentence index of each row group
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    for t in range(max(limits)):
        n = len(active)
        log_probs, state, weights = _step(model, last, state, memory, attention, src.size(1))  # [n*K,V], state, [n*K,S]
        if attention:  # each row's path so far, then this step: [n*K, t+1, S]
            weights = weights.float().unsqueeze(1)
            paths = weights if paths is None else torch.cat([paths, weights], dim=1)
        vocab = log_probs.size(-1)
        candidates = (scores.view(-1, 1) + log_probs).view(n, k * vocab)  # [n,K*V]
        top_scores, top_index = candidates.topk(2 * k, dim=1)  # [n,2K]
        # one device-to-host copy a step, not one per hypothesis (float64 holds the scores and indices exactly)
        host = torch.cat([top_scores.double(), top_index.double()], dim=1).cpu().numpy()  # [n, 4K]
        if np.isnan(host[:, :2 * k]).any():  # -inf is a score (no beam there yet), NaN is a broken plugin
            plugin_checks.refuse_scores(model)
        tokens, order, keep = beam_step(
            tokens, host[:, :2 * k].astype(np.float32), host[:, 2 * k:].astype(np.int64), vocab, model.eos_id,
            active, finished, limits, t, alpha, nbest,
            path=(lambda row, sent: _path(model, paths, row, src_lengths[sent])) if attention else None)
        if not keep:
            break
        live = torch.from_numpy(order).to(device)  # [n,K]: which candidates are the live beams
        scores, chosen = top_scores.gather(1, live).float(), top_index.gather(1, live)  # [n,K] each
        last = (chosen % vocab).view(-1)  # [n*K]
        rows = ((torch.arange(n, device=device) * k).unsqueeze(1) + chosen // vocab).view(-1)  # [n*K]
        state = model.select_state(state, rows)
        paths = paths[rows] if attention else None  # follow the beams to their new rows
        if len(keep) < n:  # drop finished sentences from the batch
            keep_t = torch.tensor(keep, device=device)
            rows_kept = (keep_t.unsqueeze(1) * k + torch.arange(k, device=device)).view(-1)
            scores, last = scores[keep_t], last[rows_kept]
            paths = paths[rows_kept] if attention else None
            state, memory = model.select_state(state, rows_kept), model.select_memory(memory, rows_kept)
            active = [active[r] for r in keep]
    return [sorted(hyps, key=lambda h: -h.score)[:nbest] for hyps in finished]


def _path(model, paths: torch.Tensor | None, row, source_length: int) -> list[list[float]] | None:
    """The attention weights [steps, source_length] along live row ``row``, or None when not kept;
    weights that are not finite are ``model``'s plugins' PluginError (checked on the host copy)."""
    if paths is None:
        return None
    weights = paths[int(row), :, :source_length].cpu().numpy()
    if not np.isfinite(weights).all():
        plugin_checks.refuse_attention_values(model)
    return weights.tolist()
