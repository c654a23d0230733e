"""Length buckets: example indices grouped into batches of similar length under a token budget.

Sorting by length before batching keeps padding small, and a budget in tokens (not sentences)
keeps memory roughly constant: many short sentences or a few long ones per batch. Shuffling the
examples within each length, and the order of the batches, keeps training stochastic.

The work is done on runs of equal length (a few hundred, whatever the corpus size), not example
by example, and an epoch's batches are one array of example ids plus the offsets where each batch
starts. So ten million examples cost about 40 MB per epoch (int32 ids), not the gigabytes of a
list of Python lists. numpy only: ``nmt translate --engine onnx`` batches with it without torch.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class LengthIndex:
    """Example ids sorted by length (ties in id order), with the runs of equal length.

    ``order[starts[g]:starts[g + 1]]`` are the examples of length ``values[g]``."""

    order: np.ndarray  # [N] int32 (int64 past 2**31 examples)
    values: np.ndarray  # [G] int64, ascending
    starts: np.ndarray  # [G + 1] int64

    @classmethod
    def from_lengths(cls, lengths: Sequence[int] | np.ndarray) -> LengthIndex:
        lengths = np.asarray(lengths).reshape(-1)
        if lengths.size and lengths.min() < 0:
            raise ValueError("lengths must not be negative")
        order = np.argsort(lengths, kind="stable")
        values, counts = np.unique(lengths[order], return_counts=True)
        return cls(order.astype(id_dtype(len(lengths))), values.astype(np.int64),
                   np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.order)

    def length_at(self, position: int) -> int:
        """The length of the example at ``position`` of ``order``."""
        return int(self.values[np.searchsorted(self.starts, position, side="right") - 1])


def id_dtype(n: int) -> type:
    return np.int32 if n < 2**31 else np.int64


@dataclass
class Batches:
    """An epoch's batches: batch ``b`` is ``order[bounds[b]:bounds[b + 1]]``, run in the order ``sequence``.

    Batches are numbered shortest first; ``longest[b]`` is the length that sets batch b's padding."""

    order: np.ndarray  # [N] example ids
    bounds: np.ndarray  # [B + 1] int64
    longest: np.ndarray  # [B] int64
    sequence: np.ndarray  # [B] batch numbers in the order they are run

    def __len__(self) -> int:
        return len(self.sequence)

    def __getitem__(self, k: int) -> list[int]:
        b = int(self.sequence[k])
        return self.order[self.bounds[b]:self.bounds[b + 1]].tolist()

    def sizes(self) -> np.ndarray:
        return np.diff(self.bounds)

    def as_lists(self) -> list[list[int]]:
        return [self[k] for k in range(len(self))]


def cut_batches(index: LengthIndex, max_tokens: int, max_sentences: int | None = None,
                width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Batch boundaries over ``index.order``: greedy, shortest first, so that ``longest * count * width``
    stays within ``max_tokens``; returns (bounds [B + 1], longest [B]).

    Adding examples in ascending length makes the newest one the longest of its batch; a batch is
    closed when one more example of the current length would not fit. An example longer than the
    budget gets a batch of its own rather than being dropped; an empty one still costs one token, or a
    run of them would form an unbounded batch."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be positive, got {max_sentences}")
    bounds, longest = [0], []
    open_size, open_longest = 0, 0  # the batch being filled
    for g in range(len(index.values)):
        length = max(int(index.values[g]), 1)
        position, end = int(index.starts[g]), int(index.starts[g + 1])
        capacity = max_tokens // (length * width)  # examples of this length one batch can take
        if max_sentences is not None:
            capacity = min(capacity, max_sentences)
        while position < end:
            if open_size and open_size >= capacity:
                bounds.append(position)
                longest.append(open_longest)
                open_size = 0
            take = min(end - position, max(capacity, 1) - open_size)
            open_size, open_longest, position = open_size + take, length, position + take
    if open_size:
        bounds.append(len(index))
        longest.append(open_longest)
    return np.asarray(bounds, dtype=np.int64), np.asarray(longest, dtype=np.int64)


def epoch_batches(index: LengthIndex, max_tokens: int, max_sentences: int | None = None, *, shuffle: bool = False,
                  seed: int = 0, width: int = 1, in_place: bool = False) -> Batches:
    """The batches of one epoch; with ``shuffle`` the examples of each length and the batches are drawn
    in an order that depends on ``seed`` only.

    ``in_place`` shuffles ``index.order`` itself instead of a copy (after putting each run of equal
    length back in id order, so the result does not depend on earlier epochs): a training sampler
    keeps one array of ids, whatever the number of epochs."""
    order = index.order if in_place or not shuffle else index.order.copy()
    rng = np.random.default_rng(seed)
    if shuffle:
        for g in range(len(index.values)):
            run = order[index.starts[g]:index.starts[g + 1]]
            if in_place:
                run.sort()
            rng.shuffle(run)
    bounds, longest = cut_batches(LengthIndex(order, index.values, index.starts), max_tokens, max_sentences, width)
    count = len(longest)
    sequence = rng.permutation(count) if shuffle else np.arange(count)
    return Batches(order, bounds, longest, sequence)


def bucket_by_length(lengths: Sequence[int] | np.ndarray, max_tokens: int, max_sentences: int | None = None, *,
                     shuffle: bool = False, seed: int = 0, width: int = 1) -> list[list[int]]:
    """Group example indices into batches whose padded size ``longest * count * width`` fits ``max_tokens``.

    The caller chooses what a length is (source tokens, or the longer of source and target), and
    ``width``, the rows each example takes in the model (beam search keeps one per hypothesis).
    Without ``shuffle`` the batches come out shortest first and in a fixed order: validation and
    inference (``nmt translate``, ``nmt predict``) batch this way."""
    return epoch_batches(LengthIndex.from_lengths(lengths), max_tokens, max_sentences, shuffle=shuffle, seed=seed,
                         width=width).as_lists()


#: a search's batch size counts source tokens at beam sizes up to this; a wider beam keeps ``beam`` copies
#: of every sentence in the batch, so proportionally fewer sentences fit (the memory stays the same)
BUDGET_BEAM = 5


def search_batches(encoded: Sequence[Sequence[int]], beam: int, batch_tokens: int) -> list[list[int]]:
    """The batches of a search (``nmt translate``, its ONNX engine, ``nmt serve``): indices of the
    non-empty ``encoded`` lines, at most ``batch_tokens * BUDGET_BEAM`` hypothesis tokens each (sentences
    x longest source x beam, at least BUDGET_BEAM wide), shortest first."""
    todo = [i for i, ids in enumerate(encoded) if ids]
    return [[todo[k] for k in batch] for batch in bucket_by_length([len(encoded[i]) for i in todo],
                                                                    batch_tokens * BUDGET_BEAM,
                                                                    width=max(beam, BUDGET_BEAM))]


def equalize(batches: Batches, index: LengthIndex, num_replicas: int) -> Batches:
    """Change the number of batches to a multiple of ``num_replicas`` without losing an example.

    Every device must run the same number of steps, or the others wait forever in the gradient
    all-reduce. Splitting the batches with the largest padded size keeps the token budget; only
    when there are too few examples to split that far (a tiny validation set) are the two smallest
    batches merged instead."""
    target = -(-len(batches) // num_replicas) * num_replicas
    if target > len(index):
        return _merge_smallest(batches, num_replicas)
    order, bounds, longest, sequence = batches.order, batches.bounds, batches.longest, batches.sequence
    while len(sequence) < target:
        sizes = np.diff(bounds)
        padded = np.where(sizes > 1, sizes * longest, -1)
        b = int(np.argmax(padded))  # ties: the first, shortest first
        middle = int(bounds[b] + sizes[b] // 2)
        first_longest = max(index.length_at(middle - 1), 1)
        bounds = np.insert(bounds, b + 1, middle)
        longest = np.insert(longest, b, first_longest)
        at = int(np.flatnonzero(sequence == b)[0])  # the halves run one after the other
        sequence = np.where(sequence > b, sequence + 1, sequence)
        sequence = np.insert(sequence, at + 1, b + 1)
    return Batches(order, bounds, longest, sequence)


def _merge_smallest(batches: Batches, num_replicas: int) -> Batches:
    """Few examples (fewer than a split would need): merge the two batches of least padded size."""
    lists = batches.as_lists()
    longest = [int(batches.longest[b]) for b in batches.sequence]
    while len(lists) % num_replicas:
        padded = [longest[i] * len(b) for i, b in enumerate(lists)]
        first, second = sorted(range(len(lists)), key=lambda i: padded[i])[:2]
        lists[first] = lists[first] + lists[second]
        longest[first] = max(longest[first], longest[second])
        del lists[second], longest[second]
    order = np.asarray([i for b in lists for i in b], dtype=batches.order.dtype)
    bounds = np.concatenate([[0], np.cumsum([len(b) for b in lists])]).astype(np.int64)
    return Batches(order, bounds, np.asarray(longest, dtype=np.int64), np.arange(len(lists)))
