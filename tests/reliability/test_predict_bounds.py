"""Bounded memory and time in ``nmt predict``, as in ``nmt translate``: long lines are cut, with a warning.

A 10 MB line used to be read whole and run through the encoder, 3.5 million steps of it; a line is
now read up to a byte cap and cut to ``--max-input-tokens`` (default 4 x ``data.max_length``), and
the answer is the one its first tokens get. Tagging keeps whole words: the words whose pieces lie
within the cap are tagged (``tests/tasks/test_tag.py``).
"""
from __future__ import annotations

import shutil

import pytest

from reliability_support import classify_run, error_lines, record, run_cli  # noqa: F401

LONG = " ".join(["a", "ab"] * 300)  # 600 tokens (whitespace tokenizer)


@pytest.fixture
def workdir(tmp_path, monkeypatch, classify_run):
    """cwd with ``run/`` (a copy of the classify run: whitespace tokens, data.max_length 200)."""
    shutil.copytree(classify_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def predict(capsys, *options) -> tuple[int, str, str]:
    return run_cli(capsys, "predict", "--run", "run", "-i", "in.txt", "--device", "cpu", "--probabilities", *options)


def test_long_line_is_answered_from_its_first_tokens_with_one_warning(workdir, capsys):
    (workdir / "in.txt").write_text(f"a ab\n{LONG}\n\nab\n{LONG} ab\n")
    argv = ["predict", "--run", "run", "-i", "in.txt", "--device", "cpu", "--max-input-tokens", "5"]
    code, out, err = predict(capsys, "--max-input-tokens", "5")
    record("prediction input line longer than --max-input-tokens (cut, warned)", argv, code, err)
    assert code == 0, err
    answers = out.split("\n")
    assert len(answers) == 6 and answers[2] == "" and answers[5] == ""  # one line per input line, empty stays empty
    assert error_lines(err) == [
        "nmt: warning: in.txt:2: line longer than --max-input-tokens (5 tokens); predicting from its first 5 tokens",
        "nmt: warning: in.txt: 2 lines in all were cut to 5 tokens (the first at line 2)"]
    # the answer (label and probabilities) of a cut line is that of its first 5 tokens
    (workdir / "in.txt").write_text(" ".join(LONG.split()[:5]) + "\n")
    code, prefix, err = predict(capsys)
    assert code == 0 and error_lines(err) == [], err
    assert answers[1] == answers[4] == prefix.strip()


def test_ten_megabyte_line_is_cut_at_the_default_cap(workdir, capsys):
    (workdir / "in.txt").write_bytes(b"a ab\n" + b"ab " * 3_500_000 + b"\nab\n")
    code, out, err = predict(capsys)
    assert code == 0 and len(out.splitlines()) == 3, err
    assert error_lines(err) == ["nmt: warning: in.txt:2: line longer than --max-input-tokens (800 tokens); "
                                "predicting from its first 800 tokens"]
    (workdir / "in.txt").write_text("ab " * 800 + "\n")
    assert predict(capsys)[1].strip() == out.splitlines()[1]


def test_a_line_over_the_token_cap_within_the_byte_cap_is_warned_of(workdir, capsys):
    """7 tokens in 14 bytes: cut by tokens after reading, not by the reader's byte cap (5 x 64)."""
    (workdir / "in.txt").write_text("a ab\na ab a ab a ab a\n")
    code, out, err = predict(capsys, "--max-input-tokens", "5")
    assert code == 0 and len(out.splitlines()) == 2, err
    assert error_lines(err) == [
        "nmt: warning: in.txt:2: line longer than --max-input-tokens (5 tokens); predicting from its first 5 tokens"]
