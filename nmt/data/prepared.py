"""A prepared corpus: a parallel corpus tokenised once into binary shards that training memory-maps.

``nmt prepare`` (and ``nmt train``, when the prepared corpus is missing or stale) streams the
training files in chunks through worker processes that tokenise them (:mod:`nmt.data.tokenize_chunks`),
and writes into
``RUN/corpus/``::

    manifest.json       what it was built from (a SHA-256 of every input file and of the tokenizer's
                        files, the filters), the shard sizes, the counts, the time taken
    src-00000.bin ...   token ids of the source lines, back to back (uint16, or uint32 for vocabularies
                        over 65,536); a new shard every SHARD_TOKENS tokens, never inside a line
    tgt-00000.bin ...   the same for the target lines
    index.npy           one record per kept pair: line number, token offsets, lengths (memory-mapped)
    buckets.npz         the kept pairs sorted by length, for batching (see nmt.data.buckets)
    src-text-00000.bin  with subword sampling only: the UTF-8 text of the lines, to segment afresh

Filtering (empty lines, ``data.max_length``, ``data.max_ratio``) happens here, once, with counts in
the manifest. A training process keeps the length index (ids as int32: 4 bytes a pair) and reads
the rest through memory maps, so its memory hardly grows with the corpus.

The manifest's fingerprint is compared with the inputs before every use: a changed training file,
a refitted tokenizer or other filters rebuild the corpus; it is never reused by mistake. A damaged
file (a size other than the manifest's, a token id outside the vocabulary, a record outside the shards)
is an error naming it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from nmt.data.buckets import LengthIndex
from nmt.data.shards import FORMAT, MANIFEST, MAX_LENGTH, RECORD, SIDES, TEXT_RECORD, PreparedCorpus, read_manifest
from nmt.data.text import EncodingErrors, no_usable_example
from nmt.data.tokenize_chunks import Chunk, default_workers, tokenize_side
from nmt.errors import DataError
from nmt.io import atomic_write_text

__all__ = ["MAX_LENGTH", "CorpusSpec", "PreparedCorpus", "ensure_prepared", "prepare_corpus", "wait_for_prepared"]

SHARD_TOKENS = 1 << 28  # tokens per shard file (512 MiB as uint16)
ANNOUNCE_AFTER = 15.0  # seconds: progress and counts are printed for preparations this long


@dataclass
class CorpusSpec:
    """What a prepared corpus is made of: the parallel files, the tokenizer, the filters."""

    parts: list[tuple[Path, Path]]  # (source file, target file), concatenated in this order
    tokenizer_cls: type  # a Tokenizer plugin class
    tokenizer_dir: Path  # its fitted files
    prefixes: tuple[str, str]  # the tokenizer of each side (the same name twice for a joint vocabulary)
    max_length: int
    max_ratio: float | None = None
    encoding_errors: EncodingErrors = "strict"
    keep_text: bool = False  # store the lines' text too (subword sampling segments it afresh)

    def settings(self) -> dict:
        return {"format": FORMAT, "tokenizer": f"{self.tokenizer_cls.__module__}.{self.tokenizer_cls.__qualname__}",
                "prefixes": list(self.prefixes), "max_length": self.max_length, "max_ratio": self.max_ratio,
                "encoding_errors": self.encoding_errors, "keep_text": self.keep_text}

    def tokenizer_files(self) -> list[Path]:
        return sorted(p for p in Path(self.tokenizer_dir).iterdir() if p.is_file() and p.name != "READY")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
        return digest.hexdigest()
    except OSError as exc:
        raise DataError(str(path), f"cannot read ({exc.strerror or exc})") from None


def fingerprint(spec: CorpusSpec) -> dict:
    """What the corpus depends on, each input by its SHA-256: equal fingerprints, equal corpora."""
    inputs = {str(path): file_digest(path) for part in spec.parts for path in part}
    tokenizer = {p.name: file_digest(p) for p in spec.tokenizer_files()}
    return {"settings": spec.settings(), "inputs": inputs, "tokenizer": tokenizer}


def what_changed(old: dict, new: dict) -> str:
    """Why a corpus built for ``old`` does not fit ``new``, in a few words."""
    if old.get("settings") != new["settings"]:
        keys = [k for k in new["settings"] if (old.get("settings") or {}).get(k) != new["settings"][k]]
        return f"settings changed ({', '.join(keys)})"
    if old.get("tokenizer") != new["tokenizer"]:
        return "the tokenizer changed"
    changed = [Path(p).name for p in new["inputs"] if (old.get("inputs") or {}).get(p) != new["inputs"][p]]
    return f"{', '.join(changed) or 'the list of training files'} changed"


# --- preparing ------------------------------------------------------------------------------------


@dataclass
class SideWriter:
    """Appends one side's tokens (and text) to its shards, a new shard every SHARD_TOKENS tokens."""

    directory: Path
    side: str
    token_dtype: type
    shards: list[dict] = field(default_factory=list)
    text_shards: list[dict] = field(default_factory=list)
    lengths: list[np.ndarray] = field(default_factory=list)
    text_lengths: list[np.ndarray] = field(default_factory=list)
    unknown: int = 0
    _file = None
    _text_file = None

    def write(self, chunk: Chunk) -> None:
        if self._file is None or self.shards[-1]["tokens"] >= SHARD_TOKENS:
            self._file = self._open(self.shards, f"{self.side}-{len(self.shards):05d}.bin", self._file)
        chunk.tokens.tofile(self._file)
        self.shards[-1]["tokens"] += len(chunk.tokens)
        self.lengths.append(chunk.lengths)
        self.unknown += chunk.unknown
        if chunk.text is not None:
            if self._text_file is None or self.text_shards[-1]["tokens"] >= SHARD_TOKENS:
                name = f"{self.side}-text-{len(self.text_shards):05d}.bin"
                self._text_file = self._open(self.text_shards, name, self._text_file)
            self._text_file.write(chunk.text)
            self.text_shards[-1]["tokens"] += len(chunk.text)
            self.text_lengths.append(chunk.text_lengths)

    def _open(self, shards: list[dict], name: str, previous):
        if previous is not None:
            previous.close()
        shards.append({"file": name, "tokens": 0})
        return open(self.directory / name, "wb")

    def close(self) -> None:
        for file in (self._file, self._text_file):
            if file is not None:
                file.close()
        itemsize = np.dtype(self.token_dtype).itemsize
        for shard in self.shards:
            shard["bytes"] = shard["tokens"] * itemsize
        for shard in self.text_shards:
            shard["bytes"] = shard["tokens"]


def prepare_corpus(spec: CorpusSpec, directory: Path, workers: int | None = None, *, announce: bool = False,
                   seconds: dict | None = None, fingerprinted: dict | None = None) -> dict:
    """Build the prepared corpus of ``spec`` into ``directory``, replacing what is there; returns the manifest.

    The counts are printed with ``announce`` (``nmt prepare``), or when it took long enough for a user
    to wonder (``nmt train`` on a large corpus); progress every 15 s. ``fingerprinted``: the
    :func:`fingerprint` of ``spec`` when the caller has it already (it reads every input file).

    Built in a temporary folder beside it and renamed into place, so a killed preparation leaves
    the old corpus (or none), never a half one."""
    directory = Path(directory)
    workers = workers or default_workers()
    started = time.perf_counter()
    for stale in directory.parent.glob(f"{directory.name}.tmp-*"):  # left by a killed preparation
        shutil.rmtree(stale, ignore_errors=True)
    building = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    building.mkdir(parents=True)
    try:
        manifest = _build(spec, building, workers)
        manifest["fingerprint"] = fingerprinted or fingerprint(spec)
        manifest["seconds"].update(seconds or {})  # e.g. fitting the tokenizer, before this
        manifest["seconds"]["total"] = round(time.perf_counter() - started + sum((seconds or {}).values()), 3)
        atomic_write_text(building / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        old = directory.with_name(f"{directory.name}.old-{os.getpid()}")
        if directory.exists():
            directory.rename(old)
        building.rename(directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if announce or manifest["seconds"]["tokenize"] > ANNOUNCE_AFTER:
        dropped = ", ".join(f"{n:,} {why.replace('_', ' ')}" for why, n in manifest["dropped"].items() if n)
        click.echo(f"nmt: prepared {directory}: {manifest['pairs_kept']:,} of {manifest['pairs_read']:,} pairs"
                   f"{f' (dropped: {dropped})' if dropped else ''} in {manifest['seconds']['tokenize']:.1f} s "
                   f"({manifest['pairs_per_second']:,.0f} pairs/s, {workers} worker{'s' if workers > 1 else ''})",
                   err=True)
    return manifest


def _build(spec: CorpusSpec, building: Path, workers: int) -> dict:
    sizes = {prefix: len(spec.tokenizer_cls.load(spec.tokenizer_dir, prefix)) for prefix in set(spec.prefixes)}
    token_dtype = np.uint16 if max(sizes.values()) <= 1 << 16 else np.uint32
    tokenize_started = time.perf_counter()
    writers, counts = [], []
    shown = [time.perf_counter()]
    for side in range(2):
        writer = SideWriter(building, SIDES[side], token_dtype)
        done = [0]

        def progress(lines: int, side=side, done=done) -> None:
            done[0] += lines
            if time.perf_counter() - shown[0] > ANNOUNCE_AFTER:
                shown[0] = time.perf_counter()
                click.echo(f"nmt: preparing: {done[0]:,} {SIDES[side]} lines tokenised", err=True)

        try:
            counts.append(tokenize_side(spec, side, writer, workers, progress))
        finally:
            writer.close()
        writers.append(writer)
    for k, (src, tgt) in enumerate(spec.parts):
        if counts[0][k] == 0 or counts[1][k] == 0:
            raise DataError(str(src if counts[0][k] == 0 else tgt), "file is empty")
        if counts[0][k] != counts[1][k]:
            raise DataError(str(tgt), f"line count differs from {src} ({counts[1][k]} vs {counts[0][k]})")
    tokenize_seconds = time.perf_counter() - tokenize_started
    manifest = _write_index(spec, building, writers)
    if manifest["pairs_kept"] == 0:
        raise no_usable_example(list(spec.parts[0]), spec.max_length, spec.encoding_errors)
    read = manifest["pairs_read"]
    manifest.update({"token_dtype": np.dtype(token_dtype).name, "workers": workers,
                     "vocab_size": {side: sizes[prefix] for side, prefix in zip(SIDES, spec.prefixes)},
                     "shards": {side: w.shards for side, w in zip(SIDES, writers)},
                     # the share of the stored tokens that are <unk>: words the tokenizer cannot spell
                     "unknown_share": {side: round(w.unknown / max(sum(s["tokens"] for s in w.shards), 1), 6)
                                       for side, w in zip(SIDES, writers)},
                     "text_shards": ({side: w.text_shards for side, w in zip(SIDES, writers)}
                                     if spec.keep_text else None),
                     "seconds": {"tokenize": round(tokenize_seconds, 3)},
                     "pairs_per_second": round(read / max(tokenize_seconds, 1e-9), 1)})
    return manifest


def _write_index(spec: CorpusSpec, building: Path, writers: list[SideWriter]) -> dict:
    """Filter the pairs on their lengths and write the index of the kept ones and their length buckets."""
    src_len, tgt_len = (np.concatenate(w.lengths) if w.lengths else np.zeros(0, np.uint16) for w in writers)
    empty = (src_len == 0) | (tgt_len == 0)
    too_long = ~empty & ((src_len > spec.max_length) | (tgt_len > spec.max_length))
    kept = ~empty & ~too_long
    ratio = np.zeros_like(kept)
    if spec.max_ratio is not None:
        longer, shorter = np.maximum(src_len, tgt_len), np.maximum(np.minimum(src_len, tgt_len), 1)
        ratio = kept & (longer > spec.max_ratio * shorter)
        kept &= ~ratio
    lines = np.flatnonzero(kept)
    records = np.zeros(len(lines), dtype=RECORD)
    records["line"] = lines
    for name, lengths in (("src", src_len), ("tgt", tgt_len)):
        stored = np.where(lengths <= spec.max_length, lengths, 0).astype(np.int64)
        offsets = np.cumsum(stored) - stored
        records[name], records[f"{name}_len"] = offsets[lines], lengths[lines]
    np.save(building / "index.npy", records)
    if spec.keep_text:
        text = np.zeros(len(lines), dtype=TEXT_RECORD)
        for side, writer in zip(SIDES, writers):
            sizes = np.concatenate(writer.text_lengths).astype(np.int64)
            text[f"{side}_text"] = (np.cumsum(sizes) - sizes)[lines]
            text[f"{side}_bytes"] = sizes[lines]
        np.save(building / "text-index.npy", text)
    index = LengthIndex.from_lengths(np.maximum(records["src_len"], records["tgt_len"].astype(np.int64) + 1))
    np.savez(building / "buckets.npz", order=index.order, values=index.values, starts=index.starts)
    return {"format": FORMAT, "pairs_read": int(len(src_len)), "pairs_kept": int(len(lines)),
            "dropped": {"empty": int(empty.sum()), "too_long": int(too_long.sum()), "ratio": int(ratio.sum())}}


# --- checking before use ------------------------------------------------------------------------

# corpus folder -> (input file stats and settings, fingerprint) this process checked
_verified: dict[str, tuple] = {}


def _input_stats(spec: CorpusSpec) -> tuple:
    files = [path for part in spec.parts for path in part] + spec.tokenizer_files()
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def ensure_prepared(spec: CorpusSpec, directory: Path, workers: int | None = None, force: bool = False,
                    seconds: dict | None = None, announce: bool = False) -> PreparedCorpus:
    """The prepared corpus of ``spec`` in ``directory``, built first when missing, stale or ``force``d;
    ``seconds`` (what went before, such as fitting the tokenizer) is recorded in its manifest."""
    directory = Path(directory)
    stats = (_input_stats(spec), json.dumps(spec.settings(), sort_keys=True))
    cached = _verified.get(str(directory))
    fresh = not force and cached is not None and cached[0] == stats and directory.exists()
    manifest = None if force or (fresh and not announce) else read_manifest(directory)
    if not fresh:
        wanted = fingerprint(spec)
        if manifest is None or manifest.get("fingerprint") != wanted:
            if manifest is not None:
                click.echo(f"nmt: {directory}: {what_changed(manifest.get('fingerprint') or {}, wanted)} since it "
                           "was prepared; preparing it again", err=True)
            prepare_corpus(spec, directory, workers, seconds=seconds, announce=announce, fingerprinted=wanted)
            manifest = None
        _verified[str(directory)] = (stats, wanted)
    if manifest is not None and announce:
        click.echo(f"nmt: {directory} is up to date ({manifest['pairs_kept']:,} pairs); --force prepares it again",
                   err=True)
    return PreparedCorpus(directory)


def wait_for_prepared(spec: CorpusSpec, directory: Path, timeout: float = 7200.0) -> PreparedCorpus:
    """For the other ranks of a distributed run: the corpus rank 0 prepares, once it matches the inputs."""
    wanted, deadline = fingerprint(spec), time.monotonic() + timeout
    while True:
        try:
            manifest = read_manifest(directory)
        except DataError:  # being replaced
            manifest = None
        if manifest is not None and manifest.get("fingerprint") == wanted:
            return PreparedCorpus(directory)
        if time.monotonic() > deadline:
            raise DataError(str(directory), f"waited {timeout:.0f} s for rank 0 to prepare the corpus")
        time.sleep(0.5)
