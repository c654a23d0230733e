"""The rules of the search that do not depend on an array library, shared by :mod:`nmt.search`
(torch) and the ONNX engine (:mod:`nmt.onnx_engine`, numpy, no torch): a hypothesis, the length
penalty, and when a sentence's beam search may stop."""
from __future__ import annotations

from dataclasses import dataclass


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
