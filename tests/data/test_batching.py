"""Length-bucketed batching: the token budget, and even sharding across devices."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from nmt.data.batching import TokenBatchSampler, bucket_by_length
from nmt.errors import DataError


def random_lengths(rng: random.Random, n: int) -> list[int]:
    return [rng.randint(1, 60) for _ in range(n)]


def padded(batch: list[int], lengths: list[int]) -> int:
    return max(lengths[i] for i in batch) * len(batch)


@pytest.mark.parametrize("shuffle", [False, True])
def test_token_budget_respected(shuffle):
    rng = random.Random(0)
    lengths = random_lengths(rng, 500) + [250, 300]  # two longer than the budget
    batches = bucket_by_length(lengths, max_tokens=200, max_sentences=16, shuffle=shuffle, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 16
        assert padded(batch, lengths) <= 200 or len(batch) == 1
    assert [500] in batches and [501] in batches


def test_batches_group_similar_lengths():
    lengths = [5, 50, 5, 50, 5, 50]
    batches = bucket_by_length(lengths, max_tokens=100, shuffle=False)
    assert batches == [[0, 2, 4], [1, 3], [5]]  # 3 * 50 would exceed 100


def test_width_counts_each_example_that_many_times():
    """A beam of 5 keeps 5 rows per sentence: ``nmt translate`` passes its beam as ``width``."""
    lengths = [5, 50, 5, 50, 5, 0]
    assert bucket_by_length(lengths, max_tokens=400, width=4) == bucket_by_length(lengths, max_tokens=100)
    assert bucket_by_length(lengths, max_tokens=400, width=5) == [[5, 0, 2, 4], [1], [3]]  # 2 * 50 * 5 > 400
    assert sorted(i for b in bucket_by_length([5, 1, 3, 9], 10) for i in b) == [0, 1, 2, 3]


@pytest.mark.parametrize("num_replicas", [2, 3, 4])
def test_sharding_uses_every_example_once_with_equal_batch_counts(num_replicas):
    rng = random.Random(num_replicas)
    for trial in range(60):
        n = rng.randint(num_replicas, 120)
        lengths = random_lengths(rng, n)
        max_tokens = rng.choice([1, 30, 64, 200, 10_000])
        samplers = [
            TokenBatchSampler(lengths, max_tokens, shuffle=trial % 2 == 0, seed=trial, num_replicas=num_replicas, rank=r)
            for r in range(num_replicas)
        ]
        per_rank = [list(s) for s in samplers]
        assert len({len(batches) for batches in per_rank}) == 1, (n, max_tokens)
        assert all(len(s) == len(b) for s, b in zip(samplers, per_rank))
        seen = [i for batches in per_rank for batch in batches for i in batch]
        assert sorted(seen) == list(range(n))


def test_odd_batch_count_is_split_not_padded():
    lengths = [10] * 30
    batches = bucket_by_length(lengths, max_tokens=100)  # 3 batches of 10
    assert len(batches) == 3
    ranks = [list(TokenBatchSampler(lengths, 100, shuffle=False, num_replicas=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 2
    assert all(padded(b, lengths) <= 100 for batches in ranks for b in batches)


def test_tiny_data_merges_and_too_tiny_fails():
    lengths = [500] * 5  # 5 single-example batches cannot become 6 on 3 devices
    ranks = [list(TokenBatchSampler(lengths, 100, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(batches) for batches in ranks] == [1, 1, 1]
    assert sorted(i for batches in ranks for b in batches for i in b) == list(range(5))
    with pytest.raises(DataError, match="2 examples"):
        TokenBatchSampler([3, 4], 100, num_replicas=3, rank=0)


def test_set_epoch_reshuffles_deterministically():
    lengths = random_lengths(random.Random(1), 300)
    sampler = TokenBatchSampler(lengths, 120, seed=7)
    epoch0 = list(sampler)
    assert list(sampler) == epoch0
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0
    twin = TokenBatchSampler(lengths, 120, seed=7)
    twin.set_epoch(1)
    assert list(twin) == epoch1
    sampler.set_epoch(0)
    assert list(sampler) == epoch0


def test_lightning_sets_the_epoch():
    # Lightning's fit loop calls this helper on every train dataloader at the start of an epoch.
    from lightning_fabric.utilities.data import _set_sampler_epoch

    sampler = TokenBatchSampler([3] * 20, 12, seed=0)
    loader = DataLoader(torch.arange(20), batch_sampler=sampler)
    _set_sampler_epoch(loader, 5)
    assert sampler.epoch == 5
    assert sorted(torch.cat(list(loader)).tolist()) == list(range(20))


def test_resume_skips_the_trained_batches_of_that_epoch_once():
    lengths = [random.Random(i).randint(1, 30) for i in range(200)]
    sampler = TokenBatchSampler(lengths, max_tokens=120, seed=3)
    sampler.set_epoch(2)
    whole = list(sampler)
    sampler.resume_at(2, 5)
    assert list(sampler) == whole[5:]  # the rest of epoch 2's order
    assert list(sampler) == whole  # the next pass over it is whole again
    sampler.resume_at(1, 5)  # a state saved in another epoch skips nothing
    assert list(sampler) == whole
    assert len(sampler) == len(whole)  # Lightning counts the epoch's batches from len()


def greedy_reference(lengths, max_tokens, max_sentences=None, width=1):
    """The batching rule example by example: ascending length, close a batch when the next one does not fit."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # sorted() is stable
    batches, batch = [], []
    for index in order:
        longest = max(lengths[index], 1)
        full = max_sentences is not None and len(batch) >= max_sentences
        if batch and (full or (len(batch) + 1) * longest * width > max_tokens):
            batches.append(batch)
            batch = []
        batch.append(index)
    return batches + [batch] if batch else batches


def test_run_level_batching_equals_the_example_by_example_rule():
    rng = random.Random(11)
    for _ in range(300):
        n = rng.randint(1, 120)
        lengths = [rng.choice([0, rng.randint(1, 8), rng.randint(1, 200)]) for _ in range(n)]
        max_tokens, width = rng.randint(1, 400), rng.randint(1, 6)
        max_sentences = rng.choice([None, rng.randint(1, 12)])
        expected = greedy_reference(lengths, max_tokens, max_sentences, width)
        assert bucket_by_length(lengths, max_tokens, max_sentences, width=width) == expected
        # Shuffling draws other ids of each length and another batch order, never other batch shapes.
        shuffled = bucket_by_length(lengths, max_tokens, max_sentences, width=width, shuffle=True, seed=n)
        shapes = sorted(sorted(lengths[i] for i in b) for b in shuffled)
        assert shapes == sorted(sorted(lengths[i] for i in b) for b in expected)


def test_an_epoch_of_many_examples_is_arrays_not_lists():
    from nmt.data.buckets import LengthIndex, epoch_batches

    lengths = np.random.default_rng(0).integers(1, 60, size=200_000, dtype=np.uint16)
    index = LengthIndex.from_lengths(lengths)
    assert index.order.dtype == np.int32
    batches = epoch_batches(index, 2000, shuffle=True, seed=1, in_place=True)
    assert batches.order is index.order  # shuffled in place: one id array whatever the epoch
    again = epoch_batches(LengthIndex.from_lengths(lengths), 2000, shuffle=True, seed=1)
    assert np.array_equal(again.order, batches.order)  # in place or on a copy: the same epoch
    assert np.array_equal(np.sort(batches.order), np.arange(len(lengths)))
    padded_sizes = batches.sizes() * batches.longest
    assert padded_sizes.max() <= 2000
