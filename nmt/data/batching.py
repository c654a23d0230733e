"""Batches of similar length under a token budget, sharded evenly across devices.

Sorting by length before batching keeps padding small, and a budget in tokens (not sentences)
keeps memory roughly constant: many short sentences or a few long ones per batch. Shuffling the
order of the batches, and breaking length ties at random, keeps training stochastic.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from nmt.errors import DataError


def bucket_by_length(
    lengths: Sequence[int],
    max_tokens: int,
    max_sentences: int | None = None,
    *,
    shuffle: bool = False,
    seed: int = 0,
    width: int = 1,
) -> list[list[int]]:
    """Group example indices into batches whose padded size ``longest * count * width`` fits ``max_tokens``.

    The caller chooses what a length is (source tokens, or the longer of source and target), and
    ``width``, the rows each example takes in the model (beam search keeps one per hypothesis).
    An example longer than ``max_tokens`` gets a batch of its own rather than being dropped.
    Without ``shuffle`` the batches come out shortest first and in a fixed order: training,
    validation and inference (``nmt translate``, ``nmt predict``) all batch this way.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be positive, got {max_sentences}")
    rng = np.random.default_rng(seed)
    lengths_array = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if shuffle:  # lexsort sorts by the last key first: length, then a random tie-breaker
        order = np.lexsort((rng.random(len(lengths_array)), lengths_array))
    else:
        order = np.argsort(lengths_array, kind="stable")

    batches: list[list[int]] = []
    batch: list[int] = []
    for index in order.tolist():
        # Ascending order makes this example the longest in the batch. An empty example still
        # costs one token, or a run of them would form an unbounded batch.
        longest = max(int(lengths_array[index]), 1)
        full = max_sentences is not None and len(batch) >= max_sentences
        if batch and (full or (len(batch) + 1) * longest * width > max_tokens):
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _equalize(batches: list[list[int]], lengths: Sequence[int], num_replicas: int) -> list[list[int]]:
    """Change the number of batches to a multiple of ``num_replicas`` without losing an example.

    Every device must run the same number of steps, or the others wait forever in the gradient
    all-reduce. Splitting the batches with the largest padded size keeps the token budget; only
    when there are too few examples to split that far (a tiny validation set) are the two smallest
    batches merged instead.
    """
    batches = [list(b) for b in batches]
    n_examples = sum(len(b) for b in batches)

    def padded(batch: list[int]) -> int:
        return max(lengths[i] for i in batch) * len(batch)

    target = -(-len(batches) // num_replicas) * num_replicas
    if target <= n_examples:
        while len(batches) < target:
            at = max((i for i, b in enumerate(batches) if len(b) > 1), key=lambda i: padded(batches[i]))
            half = len(batches[at]) // 2
            batches[at : at + 1] = [batches[at][:half], batches[at][half:]]
    else:
        while len(batches) % num_replicas:
            first, second = sorted(range(len(batches)), key=lambda i: padded(batches[i]))[:2]
            batches[first] = batches[first] + batches[second]
            del batches[second]
    return batches


class TokenBatchSampler(Sampler[list[int]]):
    """Yields this device's batches of indices: length-bucketed, token-budgeted, reshuffled per epoch.

    Every device builds the same global list of batches from ``seed + epoch`` and takes every
    ``num_replicas``-th one, so each example is used exactly once per epoch across devices and all
    devices run the same number of steps. Use it as a DataLoader's ``batch_sampler`` with Lightning's
    ``use_distributed_sampler=False``: Lightning cannot inject its own sampler into this one.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        max_tokens: int,
        max_sentences: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        if 0 < len(lengths) < num_replicas:
            raise DataError(None, f"{len(lengths)} examples cannot be shared among {num_replicas} devices")
        self.lengths = [int(n) for n in lengths]
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """Make the next pass over ``epoch`` skip the batches a resumed run has already trained on."""
        self._resume = (epoch, batches_done)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order to produce (the same on every device)."""
        self.epoch = epoch

    @property
    def sampler(self) -> TokenBatchSampler:
        # Lightning calls set_epoch on dataloader.sampler and dataloader.batch_sampler.sampler, never
        # on the batch sampler itself (lightning_fabric.utilities.data._set_sampler_epoch); pointing
        # `sampler` at ourselves makes it reshuffle us every epoch.
        return self

    def global_batches(self) -> list[list[int]]:
        """All devices' batches for the current epoch; device ``r`` runs ``[r::num_replicas]``."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = bucket_by_length(
                self.lengths, self.max_tokens, self.max_sentences, shuffle=self.shuffle, seed=self.seed + self.epoch
            )
            if self.num_replicas > 1 and batches:
                batches = _equalize(batches, self.lengths, self.num_replicas)
            self._cache = (self.epoch, batches)
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        skip = self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0
        self._resume = None  # one pass only: the epochs after it run whole
        yield from self.global_batches()[self.rank :: self.num_replicas][skip:]

    def __len__(self) -> int:
        return len(self.global_batches()) // self.num_replicas


class BucketedDataModule(pl.LightningDataModule):
    """Training and validation batches under a token budget, bucketed by length.

    Works for any dataset with ``lengths()`` and a collate function. The batch sampler shards
    batches across DDP ranks itself (every example once per epoch, equal batch counts), so the
    Trainer runs with ``use_distributed_sampler=False``.

    Its ``state_dict`` (saved in every checkpoint) records how far training got in the current
    epoch's batch order, so a run resumed from a mid-epoch checkpoint trains the rest of that
    epoch's batches, each once, instead of starting the epoch over."""

    def __init__(self, train, valid, collator, batch_tokens: int, max_sentences: int | None,
                 valid_batch_tokens: int, seed: int, num_workers: int = 0):
        super().__init__()
        self.train_set, self.valid_set = train, valid
        self.collator = collator
        self.batch_tokens, self.max_sentences = batch_tokens, max_sentences
        self.valid_batch_tokens, self.seed, self.num_workers = valid_batch_tokens, seed, num_workers
        self._train_sampler: TokenBatchSampler | None = None
        self._resume: dict = {}

    def _loader(self, dataset, max_tokens: int, shuffle: bool) -> DataLoader:
        sampler = TokenBatchSampler(dataset.lengths(), max_tokens=max_tokens, max_sentences=self.max_sentences,
                                    shuffle=shuffle, seed=self.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self.collator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, self.batch_tokens, shuffle=True)
        self._train_sampler = loader.batch_sampler
        if self._resume:
            self._train_sampler.resume_at(self._resume["epoch"], self._resume["batches_done"])
            self._resume = {}
        return loader

    def state_dict(self) -> dict:
        if self._train_sampler is None or self.trainer is None:
            return {}
        # Batches whose training step ran in this epoch (the loader itself has already fetched
        # ahead, so counting what it yielded would skip a batch on resume).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {"epoch": self._train_sampler.epoch, "batches_done": int(done)}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = dict(state_dict)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_set, self.valid_batch_tokens, shuffle=False)
