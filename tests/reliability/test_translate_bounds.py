"""Bounded memory and time in ``nmt translate``: long lines are cut, search options are bounded.

A 10 MB line used to ask for gigabytes at once and a 1 MB line held up a whole job for minutes; a
beam of 100000 died in ``std::bad_alloc``; a NaN or infinite length ratio gave empty output at exit 0.
"""
from __future__ import annotations

import io
import time
import tracemalloc

import pytest

from nmt import search, translate
from reliability_support import (check, error_lines, record, reliability_data, run_cli, run_workdir,  # noqa: F401
                                 trained_run)


def test_long_line_is_cut_to_max_input_tokens_with_one_warning(workdir, capsys):
    """The default cap is 4 x data.max_length (400 tokens here): a 3000-token line is cut, warned once."""
    (workdir / "in.txt").write_text("ab cd\n" + "ab " * 3000 + "\nef gh\n" + "cd " * 3000 + "\n")
    argv = ["translate", "--run", "run", "-i", "in.txt", "--beam", "1", "--device", "cpu"]
    code, out, err = run_cli(capsys, *argv)
    record("translation input line longer than --max-input-tokens (cut, warned)", argv, code, err)
    assert code == 0, err
    assert len(out.splitlines()) == 4 and out.splitlines()[0]
    warnings = error_lines(err)
    assert warnings[0].startswith("nmt: warning: in.txt:2: line longer than --max-input-tokens (400 tokens)")
    assert warnings[-1] == "nmt: warning: in.txt: 2 lines in all were cut to 400 tokens (the first at line 2)"
    assert len(warnings) == 2, err


def test_max_input_tokens_option_bounds_each_line(workdir, capsys):
    (workdir / "in.txt").write_text("ab cd ef gh ab cd\n")
    code, out, err = run_cli(capsys, "translate", "--run", "run", "-i", "in.txt", "--beam", "2",
                             "--max-input-tokens", "2", "--device", "cpu")
    assert code == 0 and len(out.splitlines()) == 1
    assert "in.txt:1: line longer than --max-input-tokens (2 tokens)" in err


def test_ten_megabyte_line_is_read_in_bounded_memory(tmp_path):
    """The reader keeps a capped prefix of a 10 MB line and skips the rest block by block."""
    path = tmp_path / "in.txt"
    path.write_bytes(b"ab cd\n" + b"ab " * 3_500_000 + b"\xc3\xa9\nlast\n")
    cut: set[int] = set()
    tracemalloc.start()
    try:
        lines = list(translate.read_source(path, "strict", 4000, cut)[0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(line) <= 4000 for line in lines] == [True, True, True] and lines[2] == "last"
    assert cut == {2}
    assert peak < 1_000_000, f"reading held {peak} bytes at once"


def test_cut_never_splits_a_utf8_character():
    cut: set[int] = set()
    stream = io.BytesIO("ééééé\n".encode())  # 2 bytes each: a cap of 5 bytes would split the third
    assert list(translate.capped_lines(stream, 5, cut)) == ["éé".encode() + b"\n"] and cut == {1}


def test_ten_megabyte_line_translates_quickly(workdir, capsys):
    (workdir / "in.txt").write_bytes(b"ab cd\n" + b"ab " * 3_500_000 + b"\nef gh\n")
    start = time.monotonic()
    code, out, err = run_cli(capsys, "translate", "--run", "run", "-i", "in.txt", "--device", "cpu")
    assert code == 0 and len(out.splitlines()) == 3, err
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("option, value, message", [
    ("--beam", "100000", "nmt: --beam: expected at most 100, got 100000"),
    ("--nbest", "1000", "nmt: --nbest: expected at most 100, got 1000"),
    ("--max-length-ratio", "nan", "nmt: --max-length-ratio: expected a finite number, got nan"),
    ("--max-length-ratio", "inf", "nmt: --max-length-ratio: expected a finite number, got inf"),
    ("--max-length-ratio", "1e30", "nmt: --max-length-ratio: expected at most 10, got 1e30"),
    ("--alpha", "nan", "nmt: --alpha: expected a finite number, got nan"),
    ("--alpha", "-1", "nmt: --alpha: expected at least 0, got -1"),
    ("--max-input-tokens", "0", "nmt: --max-input-tokens: expected at least 1, got 0"),
    ("--beam", "wide", "nmt: --beam: expected an integer, got 'wide'"),
])
def test_search_options_are_bounded_up_front(workdir, capsys, option, value, message):
    (workdir / "in.txt").write_text("ab cd\n")
    argv = ["translate", "--run", "run", "-i", "in.txt", option, value, "--beam", "2", "--device", "cpu"]
    if option == "--beam":
        argv = argv[:-4] + ["--device", "cpu"]  # the option under test is the only --beam
    cases = {("--beam", "100000"): "--beam far beyond its bound", ("--max-length-ratio", "nan"): "--max-length-ratio nan",
             ("--alpha", "nan"): "--alpha nan"}
    if (option, value) in cases:
        assert check(capsys, cases[option, value], *argv) == message
    else:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and error_lines(err) == [message], err


def test_wide_beam_takes_fewer_sentences_per_batch(trained_run, monkeypatch):
    """Beam search holds beam copies of each sentence: the batch must shrink as the beam grows."""
    task = translate.load_run(trained_run, device="cpu")
    seen = []

    def fake_beam_search(model, src, src_len, beam, alpha, nbest, ratio):
        seen.append((src.size(0), src.size(1)))
        return [[search.Hypothesis([4], 0.0, 0.0)] for _ in range(src.size(0))]

    monkeypatch.setattr(search, "beam_search", fake_beam_search)
    lines = ["ab cd ef gh"] * 400
    for beam in (5, 50):
        seen.clear()
        translate.translate_lines(task, lines, beam, 1, 0.6, 400, 2.0)
        assert max(rows * length * max(beam, 5) for rows, length in seen) <= 400 * 5, (beam, seen)
    assert max(rows for rows, _ in seen) == 400 * 5 // (4 * 50)  # 10 sentences of 4 tokens at beam 50
