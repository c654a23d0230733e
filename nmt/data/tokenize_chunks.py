"""Tokenising a corpus side in chunks, for :mod:`nmt.data.prepared`: whole lines read in blocks of about
CHUNK_BYTES (a line too long to train on is skipped as it is read, never held whole), tokenised by a
pool of worker processes that die with their parent, and handed back in input order."""
from __future__ import annotations

import concurrent.futures
import ctypes
import itertools
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nmt.data.shards import MAX_LENGTH
from nmt.data.text import BYTES_PER_TOKEN, MAX_LINE_BYTES, _decode, open_binary
from nmt.errors import DataError, PluginError, shorten
from nmt.plugin_checks import check_flat_ids, plugin_label

if TYPE_CHECKING:
    from nmt.data.prepared import CorpusSpec, SideWriter

CHUNK_BYTES = 4 << 20  # text handed to a worker at a time
PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


@dataclass
class Chunk:
    """One worker's result: the token ids of consecutive lines of one file."""

    tokens: np.ndarray  # ids of the lines within max_length, back to back
    lengths: np.ndarray  # [lines] uint16 token counts, MAX_LENGTH + 1 for longer lines (stored empty)
    text: bytes | None = None
    text_lengths: np.ndarray | None = None
    unknown: int = 0  # of ``tokens``, how many the vocabulary did not know


_worker_tokenizers: dict = {}


def _load_worker_tokenizers(spec: CorpusSpec, parent: int | None = None) -> None:
    if parent is not None:
        _die_with(parent)
    for prefix in set(spec.prefixes):
        _worker_tokenizers[prefix] = spec.tokenizer_cls.load(spec.tokenizer_dir, prefix)


def encode_chunk(spec: CorpusSpec, prefix: str, data: bytes, name: str, first_line: int, token_dtype: type,
                 too_long: np.ndarray | None = None) -> Chunk:
    """Tokenise whole lines of ``data`` (from line ``first_line``, 0-based, of file ``name``) as
    :func:`nmt.data.text.iter_lines` reads them: a trailing ``\\r\\n`` or ``\\n`` removed, a BOM dropped.
    The lines numbered ``too_long`` (emptied by :func:`read_chunks`) count as longer than any max_length."""
    try:
        text = data.decode("utf-8", errors=spec.encoding_errors)
    except UnicodeDecodeError as exc:
        lineno = first_line + data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        end = data.find(b"\n", exc.start)
        _decode(data[start:end if end >= 0 else len(data)], f"{name}:{lineno}", spec.encoding_errors)
        raise  # _decode raises the DataError; this is unreachable
    lines = text.split("\n")
    if data.endswith(b"\n"):
        lines.pop()
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    else:  # the file's last line, without a newline: only an "\r\n" pair is removed
        lines = [line[:-1] if line.endswith("\r") else line for line in lines[:-1]] + lines[-1:]
    if first_line == 0 and lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    tokenizer = _worker_tokenizers[prefix]
    try:
        tokens, lengths = tokenizer.encode_flat(lines)
    except (TypeError, ValueError) as exc:  # ids numpy cannot read as integers (a list within the list)
        raise PluginError(plugin_label("tokenizer", tokenizer), f"{name}:{first_line + 1}: encode must return a "
                          f"list of int ids for each line (lines {first_line + 1} to {first_line + len(lines)}: "
                          f"{shorten(str(exc), 200)})") from None
    # before the cast to the corpus's dtype, which would make -1 a valid-looking 65,535 and blame the corpus
    check_flat_ids(tokenizer, tokens, lengths, lines, name, first_line)
    stored = lengths <= spec.max_length
    if not stored.all():  # a line too long for training: its length is kept, its ids are not
        tokens = tokens[np.repeat(stored, lengths)]
    tokens = tokens.astype(token_dtype)
    chunk = Chunk(tokens, np.minimum(lengths, MAX_LENGTH + 1).astype(np.uint16),
                  unknown=int(np.count_nonzero(tokens == tokenizer.unk_id)))
    if too_long is not None and len(too_long):
        chunk.lengths[too_long] = MAX_LENGTH + 1
    if spec.keep_text:
        encoded = [line.encode("utf-8") for line in lines]
        chunk.text = b"".join(encoded)
        chunk.text_lengths = np.fromiter(map(len, encoded), dtype=np.uint32, count=len(encoded))
    return chunk


def _die_with(parent: int) -> None:
    """Make this worker die with the process that started it. A forked worker holds copies of the pool's
    pipes (and of the parent's stdout), so when the parent is killed (SIGKILL, OOM) it would wait on them
    forever, and so would whoever waits for the parent's output. Linux: the kernel signals it
    (PR_SET_PDEATHSIG); elsewhere workers are spawned, not forked, and see the pipes close."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the signal was set up
        os._exit(1)


def _encode_job(args) -> Chunk:
    return encode_chunk(*args)


def read_chunks(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[bytes, np.ndarray]]:
    """Whole lines of ``path`` (plain or gzip) in blocks of about CHUNK_BYTES, each with the numbers
    (0-based, in the block) of its lines longer than ``max_line_bytes``, which the block holds empty:
    they are too long to train on (see :func:`encode_chunk`). A line longer than a block is skipped
    as it is read, never held whole (nor split into tokens: many times its size)."""
    with open_binary(path) as stream:
        rest, skipping = b"", False  # skipping: the bytes read are of a line too long to keep
        while block := _read_block(stream, path):
            long_first = False
            if skipping:
                newline = block.find(b"\n")
                if newline < 0:
                    continue
                block, long_first, skipping = b"\n" + block[newline + 1:], True, False  # stands for the line
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            if len(rest) > max_line_bytes:
                rest, skipping = b"", True
            if cut:
                yield _empty_long_lines(block[:cut], max_line_bytes, long_first)
        if skipping or rest:
            yield (b"\n", np.zeros(1, np.int64)) if skipping else _empty_long_lines(rest, max_line_bytes, False)


def _read_block(stream, path: Path) -> bytes:
    try:
        return stream.read(CHUNK_BYTES)
    except (EOFError, OSError) as exc:
        raise DataError(str(path), f"cannot read compressed file ({exc})") from None


def _empty_long_lines(data: bytes, max_line_bytes: int, long_first: bool) -> tuple[bytes, np.ndarray]:
    """``data`` with its lines longer than ``max_line_bytes`` emptied, and their numbers (the first line
    among them with ``long_first``: it stands for a line skipped as it was read)."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == ord("\n"))
    if not data.endswith(b"\n"):  # the file's last line, without a newline
        ends = np.append(ends, len(data))
    long = np.flatnonzero(np.diff(ends, prepend=-1) - 1 > max_line_bytes)
    if len(long):  # rare: kept lines are copied once more
        pieces, kept_from = [], 0
        for k in long.tolist():
            pieces.append(data[kept_from:ends[k - 1] + 1 if k else 0])
            kept_from = int(ends[k])
        data = b"".join(pieces) + data[kept_from:]
    return data, (np.concatenate([[0], long]) if long_first else long)  # line 0 is empty: not in long



def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def tokenize_side(spec: CorpusSpec, side: int, writer: SideWriter, workers: int,
                  progress: Callable[[int], None]) -> list[int]:
    """Tokenise every file of one side into ``writer``; returns each file's line count."""
    prefix, paths = spec.prefixes[side], [part[side] for part in spec.parts]
    counts = [0] * len(paths)

    def jobs():  # numbered as they are read: a chunk's first line follows the lines before it
        for k, path in enumerate(paths):
            # a line of more bytes than the tokens data.max_length allows (as nmt translate bounds its input)
            for data, too_long in read_chunks(path, spec.max_length * BYTES_PER_TOKEN):
                yield spec, prefix, data, str(path), counts[k], writer.token_dtype, too_long
                counts[k] += data.count(b"\n") + (0 if data.endswith(b"\n") else 1)

    if workers <= 1:
        _load_worker_tokenizers(spec)
        results = map(_encode_job, jobs())
    else:
        results = _parallel(jobs(), spec, workers)
    for chunk in results:
        writer.write(chunk)
        progress(len(chunk.lengths))
    return counts


def _parallel(jobs, spec: CorpusSpec, workers: int) -> Iterator[Chunk]:
    """Results in input order from a pool of worker processes, at most ``2 * workers`` chunks in flight.

    A forked pool starts all its processes at once, so the first ``workers`` chunks are read before
    it starts: a corpus of fewer chunks gets one worker each (one chunk: none, it is tokenised here)."""
    jobs = iter(jobs)
    first = list(itertools.islice(jobs, workers))
    if len(first) <= 1:
        _load_worker_tokenizers(spec)
        yield from map(_encode_job, first)
        return
    workers = len(first)  # fewer only where the corpus ended: then every chunk is in first
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                                initializer=_load_worker_tokenizers,
                                                initargs=(spec, os.getpid())) as pool:
        pending: deque = deque()
        for job in itertools.chain(first, jobs):
            pending.append(pool.submit(_encode_job, job))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
