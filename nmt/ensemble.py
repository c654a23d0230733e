"""Ensemble decoding: several trained runs searched as one model (``nmt translate --run A --run B``).

:class:`Ensemble` speaks the decoding protocol of :mod:`nmt.search` (``encode``, ``decode_step``,
``decode_step_with_attention``, ``select_state``, ``select_memory``, ``bos_id``, ``eos_id``) over
its members, so greedy and beam search run on it unchanged: its memory and state are tuples of the
members' own, and each step combines the members' next-token distributions into one.

The runs must share one vocabulary, since the search feeds every member the same token ids and
adds up their scores for the same tokens: :func:`check_same_vocabulary` compares each side's
pieces id by id before any search starts. (Not the bytes of the fitted files: sentencepiece writes a
different ``.model`` file for the same vocabulary each time it is trained.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from nmt.errors import RunError


class Ensemble(nn.Module):
    """Several translation tasks decoded together; each step's distribution is the mean of theirs.

    ``decode_step`` returns the log of the mean of the members' probabilities,
    ``log(1/n * sum_i p_i(y | x, y<t))``, not the mean of their log-probabilities. The mean of
    probabilities (a mixture of the members, as fairseq's ensembles take it) is
    itself a distribution that sums to one, so the hypothesis scores stay log-probabilities and the
    length penalty treats them as it treats one model's; the mean of log-probabilities (a product of
    experts) is not normalised, and one member that rules a token out (a very low probability)
    vetoes it for all. An ensemble of a model with itself gives exactly that model's log-probabilities.

    The tokenizers, ``bos_id`` and ``eos_id`` are the first member's (all members share them: see
    :func:`check_same_vocabulary`). Members are kept in an ``nn.ModuleList``, so ``parameters()``,
    ``.to()`` and ``.eval()`` reach all of them."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two models, got {len(members)}")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.src_tokenizer, self.tgt_tokenizer = first.src_tokenizer, first.tgt_tokenizer
        self.bos_id, self.eos_id = first.bos_id, first.eos_id

    @property
    def max_length(self) -> int:
        """The largest ``data.max_length`` (tokens) of the members' recipes: longer input lines are warned of."""
        return max(m.max_length for m in self.members)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor):
        """Source ids [B,S] to (a tuple of the members' memories, a tuple of their initial states)."""
        encoded = [m.encode(src, src_len) for m in self.members]
        return tuple(memory for memory, _ in encoded), tuple(state for _, state in encoded)

    def decode_step(self, prev: torch.Tensor, state, memory):
        """Previous ids [B] to the ensemble's log-probabilities [B,V] and the members' next states."""
        steps = [m.decode_step(prev, s, mem) for m, s, mem in zip(self.members, state, memory)]
        log_probs = mean_probability([lp for lp, _ in steps])  # [B,V]
        return log_probs, tuple(s for _, s in steps)

    def decode_step_with_attention(self, prev: torch.Tensor, state, memory):
        """:meth:`decode_step` and the mean of the members' attention weights [B,S] (every member reads
        the same source pieces, so the heatmaps and alignments show where the ensemble as a whole looked)."""
        steps = [m.decode_step_with_attention(prev, s, mem) for m, s, mem in zip(self.members, state, memory)]
        log_probs = mean_probability([lp for lp, _, _ in steps])  # [B,V]
        weights = torch.stack([w.float() for _, _, w in steps]).mean(dim=0)  # [n,B,S] -> [B,S]
        return log_probs, tuple(s for _, s, _ in steps), weights

    def select_state(self, state, index: torch.Tensor):
        return tuple(m.select_state(s, index) for m, s in zip(self.members, state))

    def select_memory(self, memory, index: torch.Tensor):
        return tuple(m.select_memory(mem, index) for m, mem in zip(self.members, memory))


def mean_probability(log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_i exp(log_probs[i]))`` for n tensors [B,V], computed stably.

    Shifted by the element-wise maximum, as ``logsumexp`` is, but the mean is taken of the shifted
    probabilities: for identical members that mean is exactly 1, so the result is bit for bit their
    own log-probabilities (``logsumexp - log(n)`` adds and removes ``log(n)`` with rounding)."""
    stacked = torch.stack([lp.float() for lp in log_probs])  # [n,B,V]
    top = stacked.max(dim=0).values  # [B,V]
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # every member -inf: stays -inf, not NaN
    return top + (stacked - top).exp().mean(dim=0).log()  # [B,V]


def vocabulary(task) -> tuple[tuple[str, ...], ...]:
    """Each side's pieces in id order: what the members of an ensemble must share."""
    return tuple(tuple(tok.pieces(range(len(tok)))) for tok in (task.src_tokenizer, task.tgt_tokenizer))


def check_same_vocabulary(first, other, first_dir: Path, other_dir: Path) -> None:
    """A one-line error naming both runs and the first token id whose piece differs."""
    ours, theirs = vocabulary(first), vocabulary(other)
    for side, a, b in zip(("source", "target"), ours, theirs):
        if a != b:
            if len(a) != len(b):
                what = f"{len(b)} {side} tokens against {len(a)}"
            else:
                at = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
                what = f"{side} token {at} is {b[at]!r}, not {a[at]!r}"
            raise RunError(other_dir, f"its tokenizer differs from that of {first_dir} ({what}); "
                                      "an ensemble needs runs that share one vocabulary")
