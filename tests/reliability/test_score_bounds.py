"""Bounded memory per line in ``nmt score`` (and so ``nmt rerank``, which reads through the same caps).

Forced decoding used to read each line whole and score it whatever its length: a 6 MB line was held
at once and asked for a [tokens x vocabulary] matrix of gigabytes. A line over the caps of ``nmt
translate`` is now refused, not cut (a score of part of a line would be wrong), naming its file and line.
"""
from __future__ import annotations

import tracemalloc

import pytest

from nmt.data.text import iter_bounded_lines
from nmt.errors import DataError
from reliability_support import record, reliability_data, run_cli, run_workdir, trained_run  # noqa: F401


def test_a_line_over_the_byte_cap_is_refused_by_file_and_line_without_being_held(workdir, capsys):
    """The default cap is 4 x data.max_length (400 tokens, 25,600 bytes here). A 6 MB target line is
    refused while reading, naming its line, and nothing is written over the output."""
    (workdir / "s.txt").write_text("a0 b1\nc2\nd3\n")
    (workdir / "t.txt").write_bytes(b"b1 a0\n" + b"c2 " * 2_000_000 + b"\nd3\n")
    (workdir / "scores.txt").write_text("kept\n")
    argv = ["score", "--run", "run", "--src", "s.txt", "--tgt", "t.txt", "--device", "cpu", "-o", "scores.txt"]
    code, _, err = run_cli(capsys, *argv)
    record("score: a 6 MB target line (over the byte cap of --max-input-tokens)", argv, code, err)
    assert code == 2 and (workdir / "scores.txt").read_text() == "kept\n"
    assert err.strip() == "nmt: t.txt:2: line is longer than 25600 bytes; raise --max-input-tokens to read it"
    tracemalloc.start()
    try:
        with pytest.raises(DataError):
            list(iter_bounded_lines(workdir / "t.txt", 25_600, "--max-input-tokens"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"reading held {peak} bytes at once"


@pytest.mark.parametrize("side", ["--src", "--tgt"])
def test_a_line_over_max_input_tokens_is_refused_not_scored_in_part(workdir, capsys, side):
    short, long = "a0 b1\nc2\nd3 e0\n", "a0 b1\nc2 c2 c2 c2\nd3 e0\n"
    (workdir / "s.txt").write_text(long if side == "--src" else short)
    (workdir / "t.txt").write_text(long if side == "--tgt" else short)
    argv = ["score", "--run", "run", "--src", "s.txt", "--tgt", "t.txt", "--device", "cpu", "--max-input-tokens", "3"]
    code, out, err = run_cli(capsys, *argv)
    record(f"score: a {'source' if side == '--src' else 'target'} line over --max-input-tokens", argv, code, err)
    assert code == 2 and out == ""
    assert err.strip() == (f"nmt: {'s.txt' if side == '--src' else 't.txt'}:2: line has 4 tokens, more than "
                           "--max-input-tokens (3); raise it to score the line")
    code, out, err = run_cli(capsys, *argv[:-1], "4")
    assert code == 0 and len(out.splitlines()) == 3, err  # at the limit, scored
