"""Parallel text for translation: tokenised pairs, length-bucketed token batches, padding."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset


@dataclass
class Pair:
    index: int  # line number in the corpus, 0-based (kept for restoring order and counting)
    src: list[int]
    tgt: list[int]


class PairDataset(Dataset):
    """Tokenised sentence pairs, indexable; lengths drive the batch sampler."""

    def __init__(self, pairs: list[Pair]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Pair:
        return self.pairs[i]

    def lengths(self) -> list[int]:
        return [max(len(p.src), len(p.tgt) + 1) for p in self.pairs]


class SampledPairDataset(PairDataset):
    """Training pairs segmented afresh each time one is drawn (subword regularisation), so every
    epoch sees other segmentations of the same sentences.

    ``pairs`` hold the deterministic encodings: their lengths bucket the batches, so an epoch's
    batches do not depend on what is sampled (a batch may hold a few more tokens than the budget), and
    they chose which pairs fit ``max_length``. A sampled side longer than ``max_length`` is replaced by
    its deterministic encoding. ``sources[pair.index]``, ``targets[pair.index]`` are the texts."""

    def __init__(self, pairs: list[Pair], sources: Sequence[str], targets: Sequence[str],
                 encode_src: Callable[[str], list[int]], encode_tgt: Callable[[str], list[int]],
                 max_length: int | None = None):
        super().__init__(pairs)
        self.sources, self.targets = sources, targets
        self.encode_src, self.encode_tgt = encode_src, encode_tgt
        self.max_length = max_length

    def __getitem__(self, i: int) -> Pair:
        pair = self.pairs[i]
        src, tgt = self.encode_src(self.sources[pair.index]), self.encode_tgt(self.targets[pair.index])
        if self.max_length is not None:
            src = src if len(src) <= self.max_length else pair.src
            tgt = tgt if len(tgt) <= self.max_length else pair.tgt
        return Pair(pair.index, src, tgt)


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> torch.Tensor:
    out = torch.full((len(sequences), max(1, max(len(s) for s in sequences))), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


class PairCollator:
    """Pads a list of pairs into tensors; target input starts with BOS, target output ends with EOS."""

    def __init__(self, pad_id: int, bos_id: int, eos_id: int):
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id

    def __call__(self, pairs: list[Pair]) -> dict[str, torch.Tensor]:
        tgt_in = [[self.bos_id] + p.tgt for p in pairs]
        tgt_out = [p.tgt + [self.eos_id] for p in pairs]
        return {
            "ids": torch.tensor([p.index for p in pairs]),
            "src": pad([p.src or [self.eos_id] for p in pairs], self.pad_id),  # [B,S]
            "src_len": torch.tensor([max(1, len(p.src)) for p in pairs]),  # [B]
            "tgt_in": pad(tgt_in, self.pad_id),  # [B,T]
            "tgt_out": pad(tgt_out, self.pad_id),  # [B,T]
            "ntokens": torch.tensor(sum(len(t) for t in tgt_out)),
        }


