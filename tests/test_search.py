"""Greedy and beam search against toy scoring models whose best sequences are known.

A toy model here is a function ``(source, prefix) -> log-probabilities over the vocabulary``; the
fake task below wraps it in the decoding protocol of ``nmt.search``. Expected results come from
hand-set tables, worked out with the GNMT formula, or from enumerating every short sequence.
"""
from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable

import pytest
import torch

from nmt import search
from nmt.data.tokenizer import BOS_ID, EOS_ID, PAD_ID

A, B = 4, 5  # the two ordinary tokens; ids 0-3 are the specials
VOCAB = 6
NEVER = -1e4  # pad, unk and bos: finite, like a softmax, but never worth choosing

Source = tuple[int, ...]
Prefix = tuple[int, ...]
Scorer = Callable[[Source, Prefix], dict[int, float]]  # EOS, A, B -> log-probability


class ToyTask(torch.nn.Module):
    """The decoding protocol of ``nmt.search`` over a scoring function of (source, prefix).

    The state of a row is its prefix (tokens after BOS) and its memory is its unpadded source, so
    ``select_state``/``select_memory`` reorder plain lists. Every prefix decoded is recorded."""

    bos_id, eos_id = BOS_ID, EOS_ID

    def __init__(self, scorer: Scorer):
        super().__init__()
        self.scorer = scorer
        self.decoded: list[Prefix] = []

    def encode(self, src: torch.Tensor, src_len: torch.Tensor):
        memory = [tuple(row[:n]) for row, n in zip(src.tolist(), src_len.tolist())]
        return memory, [None] * len(memory)

    def decode_step(self, prev: torch.Tensor, state, memory):
        rows, log_probs = [], []
        for prefix, token, source in zip(state, prev.tolist(), memory):
            prefix = () if prefix is None else prefix + (token,)
            self.decoded.append(prefix)
            scores = self.scorer(source, prefix)
            log_probs.append([scores.get(i, NEVER) for i in range(VOCAB)])
            rows.append(prefix)
        return torch.tensor(log_probs), rows  # [N,V]

    def select_state(self, state, index: torch.Tensor):
        return [state[i] for i in index.tolist()]

    def select_memory(self, memory, index: torch.Tensor):
        return [memory[i] for i in index.tolist()]


def batch(*sources: Source) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources padded into [B,S] with their lengths [B]."""
    width = max(map(len, sources))
    src = torch.tensor([list(s) + [PAD_ID] * (width - len(s)) for s in sources])
    return src, torch.tensor([len(s) for s in sources])


def random_scorer(source: Source, prefix: Prefix, eos_bias: float = 0.8) -> dict[int, float]:
    """Seeded log-probabilities that depend on the source and the whole prefix; EOS grows likelier."""
    rng = random.Random(f"{source}|{prefix}")
    logits = {EOS_ID: rng.gauss(0, 1.5) + eos_bias * len(prefix), A: rng.gauss(0, 1.5), B: rng.gauss(0, 1.5)}
    norm = math.log(sum(math.exp(x) for x in logits.values()))
    return {token: x - norm for token, x in logits.items()}


def table_scorer(table: dict[Prefix, dict[int, float]], default: float = -6.0) -> Scorer:
    """Hand-set log-probabilities per prefix; anything not listed costs ``default``."""
    return lambda source, prefix: {EOS_ID: default, A: default, B: default, **table.get(prefix, {})}


def brute_force(scorer: Scorer, source: Source, limit: int, alpha: float, n: int) -> list[tuple[list[int], float]]:
    """The ``n`` best (tokens, score) over every sequence of A/B up to ``limit`` tokens.

    A sequence ends with EOS (its length counts the EOS) or, at ``limit`` tokens, without one,
    as ``nmt.search`` ends a hypothesis that runs out of length."""
    results = []

    def extend(tokens: Prefix, log_prob: float) -> None:
        if len(tokens) == limit:
            results.append((list(tokens), log_prob / search.length_penalty(limit, alpha)))
            return
        scores = scorer(source, tokens)
        results.append((list(tokens), (log_prob + scores[EOS_ID]) / search.length_penalty(len(tokens) + 1, alpha)))
        for token in (A, B):
            extend(tokens + (token,), log_prob + scores[token])

    extend((), 0.0)
    return sorted(results, key=lambda r: -r[1])[:n]


# Two sequences the beam finds: a short one, A EOS (-0.4 - 0.6 = -1.0), and a long one,
# B B B B EOS (-0.2 - 3 * 0.3 - 0.2 = -1.3); every other continuation costs at least 6.
SHORT_OR_LONG = table_scorer({
    (): {A: -0.4, B: -0.2},
    (A,): {EOS_ID: -0.6},
    (B,): {B: -0.3}, (B, B): {B: -0.3}, (B, B, B): {B: -0.3}, (B, B, B, B): {EOS_ID: -0.2},
})


def test_length_penalty_is_gnmts_for_numbers_and_arrays():
    """((5 + |y|) / 6) ** alpha (Wu et al. 2016), the one rule both engines import (nmt.search_rules)."""
    assert search.length_penalty(1, 0.6) == pytest.approx(1.0)
    assert search.length_penalty(7, 1.0) == pytest.approx(2.0)
    assert search.length_penalty(25, 0.5) == pytest.approx(5 ** 0.5)
    assert search.length_penalty(30, 0.0) == 1.0
    assert search.length_penalty(torch.tensor([1.0, 7.0]), 1.0).tolist() == pytest.approx([1.0, 2.0])


def test_length_penalty_changes_which_hypothesis_wins():
    src, src_len = batch((A, B))
    # alpha 0: raw log-probabilities, the short one wins.
    best, second = search.beam_search(ToyTask(SHORT_OR_LONG), src, src_len, beam_size=2, alpha=0.0, nbest=2)[0]
    assert (best.tokens, second.tokens) == ([A], [B, B, B, B])
    assert (best.score, second.score) == (pytest.approx(-1.0), pytest.approx(-1.3))
    # alpha 1: divided by (5 + |y|) / 6 with |y| counting EOS: -1.0 / (7/6) = -0.857 < -1.3 / (10/6) = -0.78.
    best, second = search.beam_search(ToyTask(SHORT_OR_LONG), src, src_len, beam_size=2, alpha=1.0, nbest=2)[0]
    assert (best.tokens, second.tokens) == ([B, B, B, B], [A])
    assert best.score == pytest.approx(-1.3 / (10 / 6)) and second.score == pytest.approx(-1.0 / (7 / 6))
    assert (best.log_prob, second.log_prob) == (pytest.approx(-1.3), pytest.approx(-1.0))


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_nbest_equals_brute_force_in_order(alpha):
    sources = [(A,), (B, A, A), (A, B, B, A), (B, B)]
    src, src_len = batch(*sources)
    ratio = 0.5  # limits of 10 or 11 tokens, so brute force stays small
    found = search.beam_search(ToyTask(random_scorer), src, src_len, beam_size=4, alpha=alpha, nbest=4,
                               max_length_ratio=ratio)
    for source, limit, hyps in zip(sources, search.max_lengths(src_len, ratio).tolist(), found):
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 4
        expected = brute_force(random_scorer, source, limit, alpha, 4)
        assert [h.tokens for h in hyps] == [tokens for tokens, _ in expected]
        assert scores == pytest.approx([score for _, score in expected], abs=1e-5)
        assert [h.log_prob for h in hyps] == pytest.approx(
            [s * search.length_penalty(len(t) + 1, alpha) for t, s in expected], abs=1e-5)


def test_finished_hypothesis_is_kept_and_not_extended_while_the_beam_searches_on():
    # A EOS ends after one token; the other beam must go on four more steps to find B B B B EOS.
    task = ToyTask(SHORT_OR_LONG)
    src, src_len = batch((A,))
    hyps = search.beam_search(task, src, src_len, beam_size=2, alpha=0.0, nbest=2)[0]
    assert [h.tokens for h in hyps] == [[A], [B, B, B, B]]
    assert not any(EOS_ID in prefix for prefix in task.decoded), "a hypothesis was extended after EOS"
    assert (B, B, B, B) in task.decoded
    # nbest 1: once A EOS (-1.0) beats every live hypothesis (B B at -0.5 - 6 or worse), search stops.
    task = ToyTask(SHORT_OR_LONG)
    (best,) = search.beam_search(task, src, src_len, beam_size=2, alpha=0.0, nbest=1)[0]
    assert best.tokens == [A] and max(map(len, task.decoded)) < 4


def never_ends(source: Source, prefix: Prefix) -> dict[int, float]:
    return {EOS_ID: -5.0, A: -0.1, B: -2.5}


@pytest.mark.parametrize("ratio", [0.5, 1.0, 2.0])
def test_max_length_ratio_caps_the_output(ratio):
    src, src_len = batch((A, B), (A, B, A, B, A, B))
    limits = (src_len * ratio).long() + 10  # the documented cap: ratio x source length, plus 10
    beams = search.beam_search(ToyTask(never_ends), src, src_len, beam_size=2, alpha=0.6, nbest=2,
                               max_length_ratio=ratio)
    greedy = search.greedy_search(ToyTask(never_ends), src, src_len, max_length_ratio=ratio)
    for hyps, g, limit in zip(beams, greedy, limits.tolist()):
        assert hyps[0].tokens == [A] * limit  # ran into the cap, never chose EOS
        assert hyps[0].log_prob == pytest.approx(-0.1 * limit, abs=1e-4)
        assert all(len(h.tokens) <= limit for h in hyps)
        assert 0 < len(g.tokens) <= limit and set(g.tokens) == {A}


@pytest.mark.parametrize("beam_size,nbest", [(1, 1), (3, 2), (5, 5)])
def test_batch_of_mixed_lengths_matches_each_sentence_alone(beam_size, nbest):
    def scorer(source, prefix):  # sentences starting with B rarely end, so some run into their own cap
        return random_scorer(source, prefix, eos_bias=0.05 if source[0] == B else 0.8)

    sources = [(A, B), (B, A, A, B, B, A, B), (B,), (A, A, B, A), (B, B, A)]
    src, src_len = batch(*sources)
    task, greedy_task = ToyTask(scorer), ToyTask(scorer)
    together = search.beam_search(task, src, src_len, beam_size, 0.6, nbest, max_length_ratio=1.0)
    greedy_together = search.greedy_search(greedy_task, src, src_len, max_length_ratio=1.0)
    assert len({len(h[0].tokens) for h in together}) > 2  # the sentences really end at different steps
    assert len({len(g.tokens) for g in greedy_together}) > 2
    rows_alone = greedy_rows_alone = 0
    for source, hyps, greedy in zip(sources, together, greedy_together):
        task_alone, greedy_task_alone = ToyTask(scorer), ToyTask(scorer)
        (alone,) = search.beam_search(task_alone, *batch(source), beam_size, 0.6, nbest, max_length_ratio=1.0)
        rows_alone += len(task_alone.decoded)
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-5)
        (greedy_alone,) = search.greedy_search(greedy_task_alone, *batch(source), max_length_ratio=1.0)
        greedy_rows_alone += len(greedy_task_alone.decoded)
        assert greedy.tokens == greedy_alone.tokens
        assert greedy.log_prob == pytest.approx(greedy_alone.log_prob, abs=1e-5)
    # a finished sentence leaves the batch: no decoding beyond its end, in either search
    assert len(task.decoded) == rows_alone
    assert len(greedy_task.decoded) == greedy_rows_alone


def test_greedy_equals_beam_of_one():
    sources = [(A,), (B, A), (A, B, B), (B, B, A, A), (A, A, A, B, B)]
    src, src_len = batch(*sources)
    greedy = search.greedy_search(ToyTask(random_scorer), src, src_len, max_length_ratio=1.0)
    beam = search.beam_search(ToyTask(random_scorer), src, src_len, beam_size=1, alpha=0.0, nbest=1,
                              max_length_ratio=1.0)
    assert len({len(g.tokens) for g in greedy}) > 2
    for source, g, (b,) in zip(sources, greedy, beam):
        assert g.tokens == b.tokens
        assert g.log_prob == pytest.approx(b.log_prob, abs=1e-5) and g.score == pytest.approx(g.log_prob)
        # and greedy really is the most probable token at each step, EOS included
        prefix = ()
        for token in [*g.tokens, EOS_ID]:
            scores = random_scorer(source, prefix)
            assert token == max(scores, key=scores.get)
            prefix += (token,)


def test_greedy_equals_beam_of_one_at_the_length_cap():
    src, src_len = batch((A, B, A))
    (greedy,) = search.greedy_search(ToyTask(never_ends), src, src_len, max_length_ratio=1.0)
    ((beam,),) = search.beam_search(ToyTask(never_ends), src, src_len, beam_size=1, alpha=0.0, nbest=1,
                                    max_length_ratio=1.0)
    assert beam.tokens == [A] * 13
    assert greedy.tokens == beam.tokens


def test_beam_wider_than_the_vocabulary_returns_only_real_hypotheses():
    def scorer(source, prefix):  # 6 ids, 3 of them likely: EOS 0.1, A 0.54, B 0.36
        return {EOS_ID: math.log(0.1), A: math.log(0.54), B: math.log(0.36)}

    src, src_len = batch((A, B, A, A))
    hyps = search.beam_search(ToyTask(scorer), src, src_len, beam_size=8, alpha=0.0, nbest=4, max_length_ratio=0.5)[0]
    assert all(math.isfinite(h.score) for h in hyps)  # today the 4th is ([], -inf)
    assert len({tuple(h.tokens) for h in hyps}) == 4


SEARCHES = {"beam": lambda task, src, src_len: search.beam_search(task, src, src_len, beam_size=3, nbest=3),
            "greedy": search.greedy_search}


@pytest.mark.parametrize("way", SEARCHES)
def test_search_copies_from_the_device_once_a_step(monkeypatch, way):
    """On a GPU each copy to the host waits for the device: each search makes one a step (beam search two
    more at its set-up, greedy one), not one per finished hypothesis, and finds the same hypotheses
    (greedy dropping the sentences that ended)."""
    src, src_len = batch((A, B, A), (B,), (A, A, B, B), (B, B))
    expected = SEARCHES[way](ToyTask(random_scorer), src, src_len)
    copies = []
    for name in ("item", "tolist", "cpu", "numpy"):
        def counting(self, *args, _real=getattr(torch.Tensor, name), _name=name, **kwargs):
            if sys._getframe(1).f_code.co_filename == search.__file__:
                copies.append(_name)
            return _real(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counting)
    task, steps = ToyTask(random_scorer), []
    real_step = task.decode_step
    monkeypatch.setattr(task, "decode_step", lambda *args: steps.append(1) or real_step(*args))
    found = SEARCHES[way](task, src, src_len)
    assert found == expected and len(steps) >= 3
    if way == "beam":
        assert sum(map(len, found)) == 12 and copies.count("cpu") == len(steps)  # one .cpu() a step ...
        assert len(copies) - copies.count("cpu") - copies.count("numpy") == 2  # ... and the lengths' two .tolist()
    else:
        assert len({len(h.tokens) for h in found}) > 1
        assert copies.count("cpu") == len(steps) + 1  # one a step, and the length limits
