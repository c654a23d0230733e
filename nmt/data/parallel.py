"""Parallel text for translation: tokenised pairs, length-bucketed token batches, padding."""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
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


class PreparedPairDataset(Dataset):
    """The training pairs of a prepared corpus (:class:`nmt.data.prepared.PreparedCorpus`), read from
    its memory-mapped shards as they are drawn.

    With ``encode_src``/``encode_tgt`` (subword regularisation) each draw segments the pair's text
    afresh, so every epoch sees other segmentations of the same sentences. The stored encodings
    still bucket the batches, so an epoch's batches do not depend on what is sampled (a batch may
    hold a few more tokens than the budget), and they chose which pairs fit ``max_length``; a
    sampled side longer than ``max_length`` is replaced by its stored encoding."""

    def __init__(self, corpus, encode_src: Callable[[str], list[int]] | None = None,
                 encode_tgt: Callable[[str], list[int]] | None = None, max_length: int | None = None):
        self.corpus = corpus
        self.encode_src, self.encode_tgt = encode_src, encode_tgt
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.corpus)

    def __getitem__(self, i: int) -> Pair:
        pair = self.corpus.pair(i)
        if self.encode_src is None or self.encode_tgt is None:
            return pair
        src_text, tgt_text = self.corpus.texts(i)
        src, tgt = self.encode_src(src_text), self.encode_tgt(tgt_text)
        if self.max_length is not None:
            src = src if len(src) <= self.max_length else pair.src
            tgt = tgt if len(tgt) <= self.max_length else pair.tgt
        return Pair(pair.index, src, tgt)

    def length_index(self):
        return self.corpus.length_index()

    def lengths(self):
        records = self.corpus.records
        return np.maximum(records["src_len"], records["tgt_len"].astype(np.int64) + 1)


def pad(sequences: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> torch.Tensor:
    """[len(sequences), width] (default: the longest sequence, at least 1), ``pad_id`` after each sequence."""
    width = max(1, max(len(s) for s in sequences)) if width is None else width
    out = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def next_length(n: int, lengths: Sequence[int]) -> int:
    """The first of the increasing ``lengths`` that holds ``n``."""
    i = bisect.bisect_left(lengths, n)
    if i == len(lengths):
        raise ValueError(f"a sequence of {n} tokens is longer than the last of the padded lengths {list(lengths)}")
    return lengths[i]


class PairCollator:
    """Pads a list of pairs into tensors; target input starts with BOS, target output ends with EOS.

    With ``pad_lengths`` (increasing) every batch has one of a few shapes, for compiled steps that
    specialise on shapes (CUDA graphs): the source and the target are padded to the next of those
    lengths, and the batch to the next multiple of ``PAD_ROWS`` rows with filler rows (a one-token
    source, an all-padding target output, id -1) that add no target token, so nothing counts them
    (rows to a power of two instead would pad far more: ``nmt bench train-speed --static`` prints
    the shapes and the padding a recipe gets)."""

    PAD_ROWS = 8

    def __init__(self, pad_id: int, bos_id: int, eos_id: int, pad_lengths: Sequence[int] | None = None):
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.pad_lengths = list(pad_lengths) if pad_lengths else None

    def __call__(self, pairs: list[Pair]) -> dict[str, torch.Tensor]:
        ids = [p.index for p in pairs]
        src = [p.src or [self.eos_id] for p in pairs]
        tgt_in = [[self.bos_id] + p.tgt for p in pairs]
        tgt_out = [p.tgt + [self.eos_id] for p in pairs]
        ntokens = sum(len(t) for t in tgt_out)
        src_width = tgt_width = None
        if self.pad_lengths:
            filler = -len(pairs) % self.PAD_ROWS
            ids += [-1] * filler
            src += [[self.eos_id]] * filler
            tgt_in += [[self.bos_id]] * filler
            tgt_out += [[]] * filler
            src_width = next_length(max(len(s) for s in src), self.pad_lengths)
            tgt_width = next_length(max(len(t) for t in tgt_in), self.pad_lengths)
        return {
            "ids": torch.tensor(ids),
            "src": pad(src, self.pad_id, src_width),  # [B,S]
            "src_len": torch.tensor([len(s) for s in src]),  # [B]
            "tgt_in": pad(tgt_in, self.pad_id, tgt_width),  # [B,T]
            "tgt_out": pad(tgt_out, self.pad_id, tgt_width),  # [B,T]
            "ntokens": torch.tensor(ntokens),
        }


