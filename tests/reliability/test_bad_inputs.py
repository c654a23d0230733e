"""Bad input: each gets one line naming the file and line (or row), exit code 2, and no damage.

Every case records (case, command, exit code, message) with ``reliability_support.record``;
``test_table.py`` renders them as the table in ``docs/bad-inputs.md``.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import reverse_recipe, write_recipe
from reliability_support import (NMT, ROWS, check, error_lines, record, reliability_data, run_cli,  # noqa: F401
                                 trained_run)

PREVIOUS = "an earlier translation, which must survive\n"


@pytest.fixture
def workdir(tmp_path, monkeypatch, trained_run, reliability_data):
    """cwd with ``run/`` (a trained run), ``data/`` (its corpus) and ``out.txt`` (an older output)."""
    shutil.copytree(trained_run, tmp_path / "run")
    shutil.copytree(reliability_data, tmp_path / "data")
    (tmp_path / "out.txt").write_text(PREVIOUS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def bad_training_recipe(workdir: Path, **data) -> Path:
    recipe = reverse_recipe(Path("data"), trainer={"max_epochs": 1})
    recipe["data"].update(data)
    return write_recipe(workdir / "bad.yaml", recipe)


def test_non_utf8_training_data(workdir, capsys):
    lines = (workdir / "data" / "train.src").read_bytes().splitlines(keepends=True)
    lines[6] = b"caf\xe9 ab\n"  # Latin-1, not UTF-8
    (workdir / "data" / "train.src").write_bytes(b"".join(lines))
    message = check(capsys, "non-UTF-8 bytes in training data", "train", bad_training_recipe(workdir).name,
                    "--run-dir", "runs/bad")
    assert "data/train.src:7:" in message and "0xe9" in message and "data.encoding_errors" in message


def test_non_utf8_translation_input_leaves_output_untouched(workdir, capsys):
    (workdir / "in.txt").write_bytes(b"ab cd\n" * 2500 + b"caf\xe9 ab\n")  # the bad line is in the 2nd chunk
    message = check(capsys, "non-UTF-8 bytes in translation input", "translate", "--run", "run", "-i", "in.txt",
                    "-o", "out.txt", "--beam", "1", "--device", "cpu")
    assert message.startswith("nmt: in.txt:2501: invalid UTF-8 (byte 0xe9)")
    assert (workdir / "out.txt").read_text() == PREVIOUS
    assert [p.name for p in workdir.iterdir() if p.name.endswith(".tmp")] == []


def test_encoding_errors_replace(workdir, capsys):
    (workdir / "in.txt").write_bytes(b"ab cd\ncaf\xe9 ab\n")
    check(capsys, "non-UTF-8 bytes with --encoding-errors replace (translated)", "translate", "--run", "run",
          "-i", "in.txt", "-o", "out.txt", "--beam", "1", "--encoding-errors", "replace", "--device", "cpu",
          expect=0)
    assert len((workdir / "out.txt").read_text().splitlines()) == 2


def test_empty_training_file(workdir, capsys):
    (workdir / "data" / "train.tgt").write_bytes(b"")
    message = check(capsys, "empty training file", "train", bad_training_recipe(workdir).name, "--run-dir", "runs/bad")
    assert message == "nmt: data/train.tgt: file is empty"


def test_mismatched_parallel_files(workdir, capsys):
    path = workdir / "data" / "train.tgt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    message = check(capsys, "parallel files of different lengths", "train", bad_training_recipe(workdir).name,
                    "--run-dir", "runs/bad")
    assert "data/train.tgt" in message and "line count differs from data/train.src" in message


def test_line_far_longer_than_training(workdir, capsys):
    (workdir / "in.txt").write_text("ab cd\n" + "ab " * 400 + "\nef gh\n")
    code, out, err = run_cli(capsys, "translate", "--run", "run", "-i", "in.txt", "--beam", "2", "--device", "cpu")
    record("line far longer than any training sentence (translated, warned)",
           ["translate", "--run", "run", "-i", "in.txt", "--beam", "2"], code, err)
    assert code == 0 and len(out.splitlines()) == 3
    assert error_lines(err) == [l for l in err.splitlines() if l.startswith("nmt:")] and "in.txt:2:" in err
    assert "warning" in err


def test_incompatible_run_directory(workdir, capsys):
    (workdir / "run" / "run.json").write_text('{"format": 99, "nmt_version": "9.0.0"}\n')
    message = check(capsys, "run directory from an incompatible version", "translate", "--run", "run",
                    "-i", "in.txt", "--device", "cpu")
    assert message.startswith("nmt: run/run.json: run format 99 (written by nmt 9.0.0) is not supported")


def test_not_a_run_directory(workdir, capsys):
    (workdir / "empty").mkdir()
    check(capsys, "not a run directory", "translate", "--run", "empty", "--device", "cpu")


def test_truncated_checkpoint(workdir, capsys):
    last = workdir / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    message = check(capsys, "truncated checkpoint", "translate", "--run", "run", "--checkpoint", "last",
                    "--device", "cpu")
    assert "run/checkpoints/last.ckpt: unreadable checkpoint" in message


def test_damaged_prepared_corpus(workdir, capsys):
    recipe = bad_training_recipe(workdir).name
    assert run_cli(capsys, "prepare", recipe, "--run-dir", "runs/p")[0] == 0
    shard = workdir / "runs" / "p" / "corpus" / "src-00000.bin"
    shard.write_bytes(shard.read_bytes()[:100])
    message = check(capsys, "truncated shard of a prepared corpus", "train", recipe, "--run-dir", "runs/p")
    assert message.startswith("nmt: runs/p/corpus/src-00000.bin: truncated or damaged: 100 bytes, expected ")
    manifest = workdir / "runs" / "p" / "corpus" / "manifest.json"
    manifest.write_text(manifest.read_text()[:50])
    message = check(capsys, "damaged manifest of a prepared corpus", "train", recipe, "--run-dir", "runs/p")
    assert message.startswith("nmt: runs/p/corpus/manifest.json: damaged corpus manifest")
    code, _, err = run_cli(capsys, "prepare", recipe, "--run-dir", "runs/p", "--force")  # the way out it names
    assert code == 0, err
    assert run_cli(capsys, "train", recipe, "--run-dir", "runs/p")[0] == 0


def test_checkpoint_that_would_run_code(workdir, capsys):
    import torch
    from test_safe_loading import RunsCode

    state = torch.load(workdir / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    state["payload"] = RunsCode(workdir / "marker")
    torch.save(state, workdir / "crafted.ckpt")
    message = check(capsys, "checkpoint whose pickle would run code", "translate", "--run", "run",
                    "--checkpoint", "crafted.ckpt", "--device", "cpu")
    assert "crafted.ckpt: refused to load" in message and not (workdir / "marker").exists()


def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_full_disk_while_writing_output(workdir):
    """A file-size limit stands in for a full disk: the write fails, the older output survives."""
    (workdir / "in.txt").write_text("ab cd ef gh\n" * 3000)
    argv = ["translate", "--run", "run", "-i", "in.txt", "-o", "out.txt", "--beam", "1", "--device", "cpu"]
    proc = subprocess.run([*NMT, *argv], capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300)
    message = record("disk full while writing the output (file-size limit)", argv, proc.returncode, proc.stderr)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(error_lines(proc.stderr)) == 1
    assert message == "nmt: out.txt: cannot write output (file too large); nothing was written"
    assert (workdir / "out.txt").read_text() == PREVIOUS
    assert [p.name for p in workdir.iterdir() if p.name.endswith(".tmp")] == []


def _series_reader():
    series = pytest.importorskip("nmt.data.series")
    if not hasattr(series, "read_series"):
        pytest.skip("no series reader")
    return series.read_series


def test_nan_in_numeric_series(workdir):
    read_series = _series_reader()
    (workdir / "series.csv").write_text("time,load\n1,0.5\n2,0.7\n3,nan\n4,0.9\n")
    from nmt.errors import DataError

    with pytest.raises(DataError) as info:
        read_series("series.csv", ["load"], time_column="time")
    ROWS["NaN in a numeric series"] = ("NaN in a numeric series", "nmt train (forecast recipe reading series.csv)",
                                       2, f"nmt: {info.value.message}")
    assert info.value.where == "series.csv:4" and "nan" in info.value.what


def test_missing_column(workdir):
    read_series = _series_reader()
    (workdir / "series.csv").write_text("time,load\n1,0.5\n2,0.7\n")
    from nmt.errors import DataError

    with pytest.raises(DataError) as info:
        read_series("series.csv", ["load", "temperature"], time_column="time")
    ROWS["missing column"] = ("missing column", "nmt train (forecast recipe naming column temperature)",
                              2, f"nmt: {info.value.message}")
    assert info.value.where == "series.csv:1" and "temperature" in info.value.what
