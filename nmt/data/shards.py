"""Reading a prepared corpus (see :mod:`nmt.data.prepared` for how one is built): the on-disk format,
and :class:`PreparedCorpus`, which memory-maps the shards and index and checks them against the manifest.

A training process keeps in memory only the length index (``buckets.npz``: example ids sorted by
length, 4 bytes a pair) and maps the rest; pages it has read are unmapped every few pairs, so its
resident memory does not grow with the corpus (see :meth:`PreparedCorpus._count_read`).
"""
from __future__ import annotations

import json
import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from nmt.data.buckets import LengthIndex
from nmt.data.parallel import Pair
from nmt.errors import DataError
from nmt.io import read_small_file

FORMAT = 1
MANIFEST = "manifest.json"
MAX_LENGTH = 65_000  # lengths are stored as uint16; data.max_length is bounded by this
RECORD = np.dtype([("line", "<i8"), ("src", "<i8"), ("tgt", "<i8"), ("src_len", "<u2"), ("tgt_len", "<u2")])
TEXT_RECORD = np.dtype([("src_text", "<i8"), ("tgt_text", "<i8"), ("src_bytes", "<u4"), ("tgt_bytes", "<u4")])
SIDES = ("src", "tgt")
RELEASE_EVERY = 8  # pairs read between two releases of the mapped pages (see PreparedCorpus._count_read)
RELEASE_ABOVE = 256 << 20  # bytes: a corpus smaller than this is left mapped (all of it is a bounded cost)
TOKEN_DTYPES = ("uint16", "uint32")
CHECK_RECORDS = 1 << 20  # index records checked at a time: a bounded few tens of MB of temporaries


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(read_small_file(path, 16 << 20, DataError, "corpus manifest"))
    except json.JSONDecodeError as exc:
        raise DataError(str(path), f"damaged corpus manifest ({exc.msg}); {remedy(directory)}") from None


def remedy(directory: Path) -> str:
    return f"run nmt prepare --force (or delete {directory}) to prepare it again"


def _within(index: LengthIndex, n: int) -> bool:
    """Whether ``index`` orders examples ``0 .. n - 1`` only, in runs that cover its order (batching
    indexes the corpus with these ids, in runs cut at ``starts``)."""
    order, starts = index.order, np.asarray(index.starts)
    ids_fit = len(order) == 0 or (0 <= int(order.min()) and int(order.max()) < n)
    return ids_fit and len(starts) == len(index.values) + 1 and int(starts[0]) == 0 \
        and int(starts[-1]) == len(order) and bool(np.all(np.diff(starts) >= 0))


class PreparedCorpus:
    """A prepared corpus opened for reading: its shards and index memory-mapped, their sizes and content
    checked (``check``; a data loader worker opens again what its parent checked)."""

    def __init__(self, directory: Path, check: bool = True):
        self.directory = Path(directory)
        self.remedy = remedy(self.directory)
        manifest = read_manifest(self.directory)
        if manifest is None:
            raise DataError(str(self.directory / MANIFEST), "not found: prepare the corpus with nmt prepare")
        if manifest.get("format") != FORMAT:
            raise DataError(str(self.directory / MANIFEST), f"corpus format {manifest.get('format')}, expected "
                                                            f"{FORMAT}; {self.remedy}")
        self.manifest = manifest
        self._reads = 0
        if manifest.get("token_dtype") not in TOKEN_DTYPES:
            raise DataError(str(self.directory / MANIFEST), f"damaged: token_dtype {manifest.get('token_dtype')!r}, "
                                                            f"expected one of {', '.join(TOKEN_DTYPES)}; {self.remedy}")
        dtype = np.dtype(manifest["token_dtype"])
        self.tokens = {side: self._shards(manifest["shards"][side], dtype) for side in SIDES}
        self.records = self._array("index.npy", RECORD.itemsize * manifest["pairs_kept"])
        self.text = None
        if manifest.get("text_shards"):
            self.text = {side: self._shards(manifest["text_shards"][side], np.dtype(np.uint8)) for side in SIDES}
            self.text_records = self._array("text-index.npy", TEXT_RECORD.itemsize * manifest["pairs_kept"])
        self._large = sum(len(m) for m in self._maps()) > RELEASE_ABOVE
        if check:
            self._check_content()

    def _check_size(self, path: Path, expected: int, exact: bool = True) -> None:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DataError(str(path), f"missing from the prepared corpus; {self.remedy}") from None
        if size < expected or (exact and size != expected):
            raise DataError(str(path), f"truncated or damaged: {size:,} bytes, expected {expected:,}; {self.remedy}")

    def _shards(self, shards: list[dict], dtype: np.dtype) -> tuple[list[np.ndarray], np.ndarray]:
        arrays = []
        for shard in shards:
            path = self.directory / shard["file"]
            self._check_size(path, shard["bytes"])
            arrays.append(np.memmap(path, dtype=dtype, mode="r") if shard["bytes"] else np.zeros(0, dtype))
        starts = np.cumsum([0] + [s["tokens"] for s in shards])
        return arrays, starts

    def _array(self, name: str, data_bytes: int) -> np.ndarray:
        path = self.directory / name
        self._check_size(path, data_bytes, exact=False)  # .npy: a header, then the data
        try:
            array = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as exc:
            raise DataError(str(path), f"damaged ({exc}); {self.remedy}") from None
        if len(array) != self.manifest["pairs_kept"]:
            raise DataError(str(path), f"{len(array)} records, expected {self.manifest['pairs_kept']}; {self.remedy}")
        return array

    def __len__(self) -> int:
        return int(self.manifest["pairs_kept"])

    def __getstate__(self) -> dict:  # a data loader worker started by spawn maps the files anew, not a copy
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"], check=False)

    def _check_content(self) -> None:
        """Files of the right size with bad content (a disk error, a stray write) fail here, in one line,
        not as an IndexError (on a GPU, a device-side assert) deep in training: token ids below the
        vocabulary size, every record within its shard and data.max_length. One vectorised pass over
        the mapped files, whose pages are released after (see _count_read)."""
        vocab = self.manifest.get("vocab_size") or {}  # absent from corpora prepared before it was recorded
        settings = (self.manifest.get("fingerprint") or {}).get("settings") or {}
        max_length = min(int(settings.get("max_length") or MAX_LENGTH), MAX_LENGTH)
        for side in SIDES:
            if side in vocab:
                self._check_ids(self.manifest["shards"][side], self.tokens[side][0], int(vocab[side]))
            self._check_spans("index.npy", self.records[side], self.records[f"{side}_len"], self.tokens[side][1],
                              max_length)
            if self.text is not None:
                self._check_spans("text-index.npy", self.text_records[f"{side}_text"],
                                  self.text_records[f"{side}_bytes"], self.text[side][1])
        self._release()

    def _check_ids(self, shards: list[dict], arrays: list[np.ndarray], vocab_size: int) -> None:
        for shard, array in zip(shards, arrays):
            largest = int(array.max()) if len(array) else 0  # unsigned: none is negative
            if largest >= vocab_size:
                raise DataError(str(self.directory / shard["file"]),
                                f"damaged: token id {largest:,} is not below the vocabulary size {vocab_size:,}; "
                                f"{self.remedy}")

    def _check_spans(self, name: str, offsets: np.ndarray, lengths: np.ndarray, starts: np.ndarray,
                     max_length: int | None = None) -> None:
        """Each record's ``offsets[i]:offsets[i] + lengths[i]`` lies within one shard (``starts``: where
        each shard begins, then the total); a shard never splits a line (see nmt.data.prepared)."""
        for lo in range(0, len(offsets), CHECK_RECORDS):
            offset = np.asarray(offsets[lo:lo + CHECK_RECORDS])
            length = np.asarray(lengths[lo:lo + CHECK_RECORDS]).astype(np.int64)
            shard = np.searchsorted(starts, offset, side="right") - 1
            end_of_shard = starts[np.minimum(shard + 1, len(starts) - 1)]
            bad = (offset < 0) | (shard >= len(starts) - 1) | (offset + length > end_of_shard)
            if max_length is not None:
                bad |= length > max_length
            if bad.any():
                i = int(np.argmax(bad))
                what = (f"length {int(length[i]):,} is over the corpus's max_length {max_length}"
                        if max_length is not None and length[i] > max_length else
                        f"offset {int(offset[i]):,} and length {int(length[i]):,} are outside its shard")
                raise DataError(str(self.directory / name), f"damaged: record {lo + i:,}: {what}; {self.remedy}")

    def length_index(self) -> LengthIndex:
        path = self.directory / "buckets.npz"
        try:
            with np.load(path) as saved:
                index = LengthIndex(saved["order"], saved["values"], saved["starts"])
        except (ValueError, OSError, KeyError, EOFError) as exc:
            raise DataError(str(path), f"damaged ({exc}); {self.remedy}") from None
        if len(index) != len(self):
            raise DataError(str(path), f"{len(index)} examples, expected {len(self)}; {self.remedy}")
        if not _within(index, len(self)):
            raise DataError(str(path), f"damaged: example ids or length runs outside the {len(self):,} examples; "
                                       f"{self.remedy}")
        return index

    @staticmethod
    def _slice(shards: tuple[list[np.ndarray], np.ndarray], offset: int, length: int) -> np.ndarray:
        arrays, starts = shards
        k = int(np.searchsorted(starts, offset, side="right")) - 1
        start = offset - int(starts[k])
        return arrays[k][start:start + length]

    def _maps(self) -> Iterator[mmap.mmap]:
        arrays = [self.records, *self.tokens["src"][0], *self.tokens["tgt"][0]]
        if self.text is not None:
            arrays += [self.text_records, *self.text["src"][0], *self.text["tgt"][0]]
        for array in arrays:
            mapped = getattr(array, "_mmap", None)  # numpy's memmap keeps its mmap there
            if mapped is not None:
                yield mapped

    def _count_read(self) -> None:
        """Every RELEASE_EVERY pairs, unmap the corpus pages this process touched. A random read maps a
        whole block around the example (fault-around, or the page cache's large folios: about 0.5 MB
        a read measured on Linux 6.18, MADV_RANDOM or not), so without this a training process would map
        most of a large corpus within an epoch: page cache, which the kernel can drop, but resident
        memory all the same. The pages stay cached; reading one again is a minor fault. A release
        costs about a millisecond, and interrupts the process's other threads (TLB shootdown), so a
        corpus under RELEASE_ABOVE bytes, whose whole mapping is a small bounded cost, is left mapped."""
        self._reads += 1
        if self._reads % RELEASE_EVERY == 0:
            self._release()

    def _release(self) -> None:
        if self._large and hasattr(mmap.mmap, "madvise"):
            for mapped in self._maps():
                mapped.madvise(mmap.MADV_DONTNEED)

    def pair(self, i: int) -> Pair:
        self._count_read()
        record = self.records[i]
        src = self._slice(self.tokens["src"], int(record["src"]), int(record["src_len"]))
        tgt = self._slice(self.tokens["tgt"], int(record["tgt"]), int(record["tgt_len"]))
        return Pair(int(record["line"]), src.tolist(), tgt.tolist())

    def texts(self, i: int) -> tuple[str, str]:
        """The source and target line of pair ``i`` (a corpus prepared with ``keep_text``)."""
        record = self.text_records[i]
        return tuple(bytes(self._slice(self.text[side], int(record[f"{side}_text"]), int(record[f"{side}_bytes"])))
                     .decode("utf-8") for side in SIDES)
