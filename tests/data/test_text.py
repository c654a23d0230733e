"""Readers: plain and gzip text, line counts of parallel files, encoding errors with line numbers."""
from __future__ import annotations

import gzip

import pytest

from nmt.data.text import iter_lines, open_text, read_lines, read_parallel
from nmt.errors import DataError

LINES = ["Ein Mann fährt Fahrrad.", "", "Zwei Hunde spielen im Schnee.", "  spaces kept  "]


def write_plain(path, lines, newline="\n"):
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return path


def test_gzip_reads_like_plain_text(tmp_path):
    plain = write_plain(tmp_path / "a.txt", LINES)
    compressed = tmp_path / "a.txt.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    # Recognised by magic bytes, not by the suffix.
    disguised = tmp_path / "a.data"
    disguised.write_bytes(compressed.read_bytes())
    assert read_lines(plain) == LINES
    assert read_lines(compressed) == LINES
    assert read_lines(disguised) == LINES
    with open_text(disguised) as stream:
        assert stream.read().splitlines() == LINES


def test_crlf_and_missing_final_newline(tmp_path):
    crlf = write_plain(tmp_path / "crlf.txt", LINES, newline="\r\n")
    assert read_lines(crlf) == LINES
    no_final = tmp_path / "no_final.txt"
    no_final.write_bytes(b"a\nb")
    assert read_lines(no_final) == ["a", "b"]


def test_iter_lines_streams(tmp_path):
    path = write_plain(tmp_path / "a.txt", LINES)
    lines = iter_lines(path)
    assert next(lines) == LINES[0]
    assert list(lines) == LINES[1:]


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_lines(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="directory"):
        read_lines(tmp_path)


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.txt"
    # Enough valid lines before the bad one that a block decoder would lose track of the line.
    good = "".join(f"line {i}\n" for i in range(5000)).encode()
    path.write_bytes(good + "Müller\n".encode("latin-1") + b"after\n")
    with pytest.raises(DataError) as info:
        read_lines(path)
    assert info.value.where == f"{path}:5001"
    assert "0xfc" in info.value.what and "--encoding-errors replace" in info.value.what
    gz = tmp_path / "latin1.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(DataError, match=":5001: invalid UTF-8"):
        read_lines(gz)


def test_replace_substitutes(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("Müller\nok\n".encode("latin-1"))
    assert read_lines(path, encoding_errors="replace") == ["M\ufffdller", "ok"]


def test_parallel_line_counts_must_match(tmp_path):
    src = write_plain(tmp_path / "train.de", ["a", "b", "c"])
    tgt = write_plain(tmp_path / "train.en", ["x", "y"])
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    message = str(info.value)
    assert str(src) in message and str(tgt) in message
    assert "(2 vs 3)" in message
    good = write_plain(tmp_path / "ok.en", ["x", "y", "z"])
    assert read_parallel(src, good) == (["a", "b", "c"], ["x", "y", "z"])


def test_parallel_empty_file(tmp_path):
    src = write_plain(tmp_path / "train.de", ["a"])
    empty = tmp_path / "train.en"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="file is empty") as info:
        read_parallel(src, empty)
    assert info.value.where == str(empty)
