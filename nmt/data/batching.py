"""Training batches of similar length under a token budget, sharded evenly across devices.

How examples are grouped is :mod:`nmt.data.buckets`; this module turns it into a sampler that
Lightning drives (an order per epoch, a share per device, a resumable position) and a data module.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Sampler

from nmt.data.buckets import Batches, LengthIndex, bucket_by_length, epoch_batches, equalize
from nmt.data.epoch_resume import ResumableEpochs
from nmt.errors import DataError

__all__ = ["BucketedDataModule", "TokenBatchSampler", "bucket_by_length", "length_index"]


def length_index(dataset) -> LengthIndex:
    """The dataset's examples grouped by length: its own ``length_index()`` (a prepared corpus stores
    one), else built from its ``lengths()``."""
    if hasattr(dataset, "length_index"):
        return dataset.length_index()
    return LengthIndex.from_lengths(np.asarray(dataset.lengths(), dtype=np.int64))


class TokenBatchSampler(Sampler[list[int]]):
    """Yields this device's batches of indices: length-bucketed, token-budgeted, reshuffled per epoch.

    Every device builds the same global list of batches from ``seed + epoch`` and takes every
    ``num_replicas``-th one, so each example is used exactly once per epoch across devices and all
    devices run the same number of steps. Use it as a DataLoader's ``batch_sampler`` with Lightning's
    ``use_distributed_sampler=False``: Lightning cannot inject its own sampler into this one.

    ``lengths`` is a sequence of lengths or a :class:`~nmt.data.buckets.LengthIndex`. A training
    sampler shuffles the index's id array in place each epoch: one array, however many epochs."""

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray | LengthIndex,
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
        index = lengths if isinstance(lengths, LengthIndex) else LengthIndex.from_lengths(lengths)
        if 0 < len(index) < num_replicas:
            raise DataError(None, f"{len(index)} examples cannot be shared among {num_replicas} devices")
        self.index = index
        self.max_tokens = max_tokens
        self.max_sentences = max_sentences
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._cache: tuple[int, Batches] | None = None
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

    def global_batches(self) -> Batches:
        """All devices' batches for the current epoch; device ``r`` runs every ``num_replicas``-th from ``r``."""
        if self._cache is None or self._cache[0] != self.epoch:
            batches = epoch_batches(self.index, self.max_tokens, self.max_sentences, shuffle=self.shuffle,
                                    seed=self.seed + self.epoch, in_place=True)
            if self.num_replicas > 1 and len(batches):
                batches = equalize(batches, self.index, self.num_replicas)
            self._cache = (self.epoch, batches)
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, batches = self.epoch, self.global_batches()
        skip = self._resume[1] if self._resume is not None and self._resume[0] == epoch else 0
        self._resume = None  # one pass only: the epochs after it run whole
        for k in range(self.rank + skip * self.num_replicas, len(batches), self.num_replicas):
            if self._cache[0] != epoch:  # the shared id array was reshuffled under this pass
                raise RuntimeError(f"batch sampler moved to epoch {self._cache[0]} during a pass over epoch {epoch}")
            yield batches[k]

    def __len__(self) -> int:
        return len(self.global_batches()) // self.num_replicas


class BucketedDataModule(ResumableEpochs, pl.LightningDataModule):
    """Training and validation batches under a token budget, bucketed by length.

    Works for any dataset with ``lengths()`` and a collate function (``valid_collator``, if given,
    for the validation batches). The batch sampler shards
    batches across DDP ranks itself (every example once per epoch, equal batch counts), so the
    Trainer runs with ``use_distributed_sampler=False``.

    Its ``state_dict`` (saved in every checkpoint) records how far training got in the current
    epoch's batch order, so a run resumed from a mid-epoch checkpoint trains the rest of that
    epoch's batches, each once, instead of starting the epoch over."""

    def __init__(self, train, valid, collator, batch_tokens: int, max_sentences: int | None,
                 valid_batch_tokens: int, seed: int, num_workers: int = 0, valid_collator=None):
        super().__init__()
        self.train_set, self.valid_set = train, valid
        self.collator = collator
        self.valid_collator = collator if valid_collator is None else valid_collator
        self.batch_tokens, self.max_sentences = batch_tokens, max_sentences
        self.valid_batch_tokens, self.seed, self.num_workers = valid_batch_tokens, seed, num_workers

    def _loader(self, dataset, max_tokens: int, shuffle: bool, collator) -> DataLoader:
        sampler = TokenBatchSampler(length_index(dataset), max_tokens=max_tokens, max_sentences=self.max_sentences,
                                    shuffle=shuffle, seed=self.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, self.batch_tokens, shuffle=True, collator=self.collator)
        self.follow(loader.batch_sampler)
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.valid_set, self.valid_batch_tokens, shuffle=False, collator=self.valid_collator)
