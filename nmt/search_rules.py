"""The host side of the search, shared by :mod:`nmt.search` (torch) and the ONNX engine
(:mod:`nmt.onnx_engine`, numpy, no torch): a hypothesis, the length penalty, when a sentence's beam
search may stop, and a greedy or beam-search step's bookkeeping in numpy once the step's candidates are known."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Hypothesis:
    tokens: list[int]
    log_prob: float  # the model's own log-probability of tokens + EOS
    score: float  # log_prob divided by the length penalty
    # With attention=True: the weights [target step][source position] that produced each token, EOS
    # included (one row per token, plus one for EOS when it ended with EOS), over the real source positions.
    attention: list[list[float]] | None = None


def length_penalty(length, alpha: float):
    """GNMT length penalty ((5 + |y|) / 6) ** alpha (Wu et al. 2016); 1 when alpha is 0. ``length``
    may be a number or an array of them."""
    return ((5.0 + length) / 6.0) ** alpha


def sentence_done(finished: list[Hypothesis], best_live: float, length: int, limit: int,
                  alpha: float, nbest: int) -> bool:
    """True when no live hypothesis (the best has log-probability ``best_live``, ``length`` tokens
    so far, at most ``limit``) can still beat the ``nbest``-th finished one."""
    if len(finished) < nbest:
        return False
    worst_kept = sorted(h.score for h in finished)[-nbest]
    # log-probabilities only fall as hypotheses grow; the largest penalty they can reach bounds them
    bound = best_live / length_penalty(limit if alpha > 0 else length, alpha)
    return bound <= worst_kept


def greedy_step(live: np.ndarray, best: np.ndarray, best_lp: np.ndarray, tokens: list[list[int]],
                log_prob: np.ndarray, limits: np.ndarray, t: int, eos_id: int) -> np.ndarray:
    """One greedy step's bookkeeping once its tokens are known: live row i (sentence ``live[i]``) took
    token ``best[i]`` with log-probability ``best_lp[i]`` (float32, added into ``log_prob[sentence]``,
    EOS included). A token other than EOS joins ``tokens[sentence]``; a sentence ends at EOS or, after
    its token, at its length limit ``limits[sentence]`` (without EOS, as a live beam of beam search
    does). Returns the live rows still searching, so the caller drops the others from the batch."""
    log_prob[live] += best_lp
    for sentence, token in zip(live.tolist(), best.tolist()):
        if token != eos_id:
            tokens[sentence].append(token)
    return np.flatnonzero((best != eos_id) & (t + 1 < limits[live]))


def beam_step(tokens: np.ndarray, top_scores: np.ndarray, top_index: np.ndarray, vocab: int, eos_id: int,
              active: list[int], finished: list[list[Hypothesis]], limits: list[int], t: int, alpha: float,
              nbest: int, path: Callable[[int, int], list[list[float]] | None] | None = None):
    """One beam-search step after its candidates: ``top_scores``/``top_index`` [n, 2K] are each active
    sentence's best 2K of its K*V candidates (index beam * V + token), best first; ``tokens`` [n*K, t+1]
    the live rows' tokens so far. Ends the hypotheses that chose EOS among the first K, takes the best K
    that did not as the live beams, and ends the sentences that are done or out of length (appending to
    ``finished[sentence]``; ``path(row, sentence)`` gives a hypothesis's attention along old row ``row``).
    Returns (the live rows' tokens [len(keep)*K, t+2] of the sentences kept, ``order`` [n, K]: which of
    the 2K candidates are the live beams, ``keep``: the rows of the sentences still searching)."""
    n, k = top_scores.shape[0], top_scores.shape[1] // 2
    top_beam, top_token = top_index // vocab, top_index % vocab
    is_eos = top_token == eos_id
    # EOS among the first K candidates finishes a hypothesis
    # (a beam wider than the vocabulary also offers the -inf copies of the start beam: not hypotheses)
    for row, col in np.argwhere(is_eos[:, :k] & np.isfinite(top_scores[:, :k])).tolist():
        source = row * k + int(top_beam[row, col])
        seq, lp = tokens[source, 1:].tolist(), float(top_scores[row, col])
        finished[active[row]].append(Hypothesis(seq, lp, lp / length_penalty(len(seq) + 1, alpha),
                                                path(source, active[row]) if path else None))
    # the live beams: the best K candidates that did not end
    order = np.argsort(is_eos.astype(np.int8), axis=1, kind="stable")[:, :k]  # non-EOS first, in score order
    scores = np.take_along_axis(top_scores, order, axis=1)  # [n, K]
    rows = ((np.arange(n) * k)[:, None] + np.take_along_axis(top_beam, order, axis=1)).reshape(-1)  # [n*K] old rows
    tokens = np.concatenate([tokens[rows], np.take_along_axis(top_token, order, axis=1).reshape(-1, 1)], axis=1)
    keep = []
    for row, sent in enumerate(active):
        done = sentence_done(finished[sent], float(scores[row].max()), tokens.shape[1], limits[sent], alpha, nbest)
        if done or t + 1 >= limits[sent]:
            if len(finished[sent]) < nbest:  # out of length: the live beams end here
                for j in range(k):
                    if np.isfinite(scores[row, j]):
                        seq, lp = tokens[row * k + j, 1:].tolist(), float(scores[row, j])
                        finished[sent].append(Hypothesis(seq, lp, lp / length_penalty(len(seq), alpha),
                                                         path(int(rows[row * k + j]), sent) if path else None))
        else:
            keep.append(row)
    kept_rows = ((np.array(keep, dtype=np.int64) * k)[:, None] + np.arange(k)).reshape(-1)
    return tokens[kept_rows], order, keep
