"""Reading text files: plain or gzip-compressed, UTF-8, one example per line.

Every reader turns a problem the user can fix (a missing file, a bad byte, two files of a parallel
corpus that do not line up) into a :class:`~nmt.errors.DataError` that names the file and, where
it makes sense, the line: ``data/train.de:1043: invalid UTF-8 (byte 0xe4); ...``.
"""
from __future__ import annotations

import gzip
import io
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal, TextIO

from nmt.errors import DataError

EncodingErrors = Literal["strict", "replace"]
StrPath = str | os.PathLike

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
#: Bytes read of a line per allowed token: generous for any tokenizer (a piece is rarely more than a
#: few characters of up to 4 bytes), yet a 10 MB line is never held whole.
BYTES_PER_TOKEN = 64
#: Bytes :func:`iter_lines` reads of a line: more than any model takes (data.max_length is at most
#: 65,000 tokens, at BYTES_PER_TOKEN bytes each), far less than a stray line of a few hundred MB.
MAX_LINE_BYTES = 4 << 20
_SKIP_BLOCK = 1 << 16


def open_binary(path: StrPath) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing it when it is gzip.

    Compression is recognised by the magic bytes, not the suffix, so a ``.gz`` file renamed to
    ``.txt`` (or a plain file that happens to end in ``.gz``) still reads correctly.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    if path.is_dir():
        raise DataError(str(path), "is a directory, expected a text file")
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise DataError(str(path), f"cannot open ({exc.strerror or exc})") from exc
    if raw.peek(2)[:2] == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def open_text(path: StrPath, encoding_errors: EncodingErrors = "strict") -> TextIO:
    """Open a plain or gzip file as UTF-8 text with universal newlines.

    For whole lines with exact line numbers in decoding errors prefer :func:`iter_lines`; this is
    for readers (TSV, CSV, CoNLL-U) that want a text stream.
    """
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", errors=encoding_errors)


def iter_lines(path: StrPath, encoding_errors: EncodingErrors = "strict", max_bytes: int | None = MAX_LINE_BYTES,
               cut: set[int] | None = None) -> Iterator[str]:
    """Yield the lines of ``path`` one at a time, without their trailing ``\\n`` or ``\\r\\n``.

    Lines are decoded one by one from bytes so that an invalid byte is reported with its own line
    number (a text stream decodes in blocks and cannot say which line a bad byte came from). The
    file is streamed, so a huge input can be translated in chunks without reading it whole.

    A line longer than ``max_bytes`` is cut to its first ``max_bytes`` bytes and its number added to
    ``cut``; the rest is skipped unread into memory (see :func:`capped_lines`). Such a line is too long
    to train on (training drops it), and whole it would cost many times its size: a 100 MB line split
    into words is over a GB. ``max_bytes=None`` reads every line whole.
    """
    with open_binary(path) as stream:
        lines = stream if max_bytes is None else capped_lines(stream, max_bytes, set() if cut is None else cut)
        yield from iter_stream(lines, str(path), encoding_errors)


def iter_stream(stream: BinaryIO, name: str, encoding_errors: EncodingErrors = "strict") -> Iterator[str]:
    """Like :func:`iter_lines` over an open binary stream (stdin); ``name`` is used in errors."""
    try:
        for lineno, raw in enumerate(stream, start=1):
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if lineno == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]  # editors on Windows add it; it is not text
            yield _decode(raw, f"{name}:{lineno}", encoding_errors)
    except (gzip.BadGzipFile, EOFError, OSError) as exc:
        raise DataError(name, f"cannot read compressed file ({exc})") from exc


def _decode(raw: bytes, where: str, encoding_errors: EncodingErrors) -> str:
    try:
        return raw.decode("utf-8", errors=encoding_errors)
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        raise DataError(
            where,
            f"invalid UTF-8 (byte 0x{byte:02x}); pass --encoding-errors replace "
            "(in a recipe: data.encoding_errors=replace) to substitute",
        ) from None


def capped_lines(stream: BinaryIO, max_bytes: int, cut: set[int], skip_rest: bool = True) -> Iterator[bytes]:
    """The raw lines of ``stream``, each cut to its first ``max_bytes`` bytes (at a character
    boundary); the rest of a longer line is skipped block by block, never held. The numbers of the
    lines cut are added to ``cut``. ``skip_rest=False``, for a caller that refuses such a line: the cut
    line is the last one read (skipping its rest would never end on ``/dev/zero``)."""
    for line_no in itertools.count(1):
        raw = stream.readline(max_bytes + 1)
        if not raw:
            return
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            cut.add(line_no)
            if not skip_rest:
                yield _whole_characters(raw[:max_bytes]) + b"\n"
                return
            while (rest := stream.readline(_SKIP_BLOCK)) and not rest.endswith(b"\n"):
                pass
            raw = _whole_characters(raw[:max_bytes]) + b"\n"
        yield raw


def _whole_characters(raw: bytes) -> bytes:
    """``raw`` without a UTF-8 character that the cut split (which would read as invalid UTF-8)."""
    for back in range(1, min(4, len(raw)) + 1):
        byte = raw[-back]
        if byte & 0xC0 != 0x80:  # the start of the last character
            needed = 1 if byte < 0x80 else 2 if byte >= 0xC0 and byte < 0xE0 else 3 if byte < 0xF0 else 4
            return raw if needed <= back else raw[:-back]
    return raw


def iter_bounded_lines(path: StrPath, max_bytes: int, option: str,
                       encoding_errors: EncodingErrors = "strict") -> Iterator[str]:
    """Like :func:`iter_lines`, for readers that need every line whole (scoring a line in part would
    give a wrong score): a line longer than ``max_bytes`` is a :class:`DataError` naming the file and
    line, and ``option`` (the one that raises the limit); it is never held whole."""
    cut: set[int] = set()
    with open_binary(path) as stream:
        lines = capped_lines(stream, max_bytes, cut, skip_rest=False)
        for number, line in enumerate(iter_stream(lines, str(path), encoding_errors), start=1):
            if cut:
                raise DataError(f"{path}:{number}", f"line is longer than {max_bytes} bytes; raise {option} to read it")
            yield line


def read_lines(path: StrPath, encoding_errors: EncodingErrors = "strict") -> list[str]:
    """Read every line of a plain or gzip UTF-8 file whole (see :func:`iter_lines`): validation sets and
    references, which a cut line would score wrongly."""
    return list(iter_lines(path, encoding_errors, max_bytes=None))


def read_parallel(
    src_path: StrPath, tgt_path: StrPath, encoding_errors: EncodingErrors = "strict"
) -> tuple[list[str], list[str]]:
    """Read the two sides of a parallel corpus; line ``i`` of one translates line ``i`` of the other.

    Both files must be non-empty and have the same number of lines: a missing or extra line would
    silently shift every later pair, so it is an error rather than something to truncate.
    """
    sources = read_lines(src_path, encoding_errors)
    targets = read_lines(tgt_path, encoding_errors)
    for path, lines in ((src_path, sources), (tgt_path, targets)):
        if not lines:
            raise DataError(str(path), "file is empty")
    if len(sources) != len(targets):
        raise DataError(
            str(tgt_path),
            f"line count differs from {src_path} ({len(targets)} vs {len(sources)})",
        )
    return sources, targets


def no_usable_example(paths: list[StrPath], max_length: int | None,
                      encoding_errors: EncodingErrors = "strict") -> DataError:
    """The error for training files of which every line was dropped, counting why.

    Training skips a line (a pair of lines) that is blank on one side or longer than
    ``data.max_length``; with nothing left Lightning would train on no batch and exit 0, so the user
    learns nothing. A file with CR-only (old Mac) line endings reads as one long line: said outright.
    """
    total = empty = 0
    blank = [0] * len(paths)
    with_cr = [False] * len(paths)
    for lines in zip(*(iter_lines(path, encoding_errors) for path in paths)):
        total += 1
        empty += any(not line.strip() for line in lines)
        for k, line in enumerate(lines):
            blank[k] += not line.strip()
            with_cr[k] = with_cr[k] or "\r" in line
    # Name the file at fault: the one with CR line endings, else the one with the most blank lines.
    at = with_cr.index(True) if any(with_cr) else max(range(len(paths)), key=lambda k: (blank[k], -k))
    limit = f"data.max_length={max_length}" if max_length is not None else "the length limit"
    what = (f"no usable training example: {total} line{'s' if total != 1 else ''} dropped "
            f"({empty} empty, {total - empty} longer than {limit})")
    if with_cr[at]:
        what += "; the file has CR (\\r) line endings, not \\n: convert them (tr '\\r' '\\n')"
    return DataError(str(paths[at]), what)
