"""No command that reads a run writes its output over the run's own files: ``nmt predict -o
RUN/checkpoints/best.ckpt`` replaced the run's model with a line of predictions and exited 0."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reliability_support import error_lines, reliability_data, run_cli, run_copy, trained_run  # noqa: F401


@pytest.mark.parametrize("command, inside", [
    ("translate", "checkpoints/best.ckpt"),
    ("translate", "recipe.yaml"),
    ("predict", "checkpoints/best.ckpt"),
    ("score", "logs/metrics.csv"),
    ("rerank", "fitted"),  # the run's first fitted file, whatever the tokenizer
], ids=["translate-checkpoint", "translate-recipe", "predict-checkpoint", "score-metrics", "rerank-tokenizer"])
def test_an_output_that_is_a_file_of_the_run_is_refused_and_the_file_kept(tmp_path, capsys, run_copy, command, inside):
    run = run_copy
    target = run / inside
    if target.is_dir():
        target = next(p for p in sorted(target.iterdir()) if p.is_file())
    before = target.read_bytes()
    source = tmp_path / "in.txt"
    source.write_text("a0 b1\n")
    nbest = tmp_path / "nbest.txt"
    nbest.write_text("0 ||| b1 a0 ||| -1.0\n")
    argv = {"translate": ["translate", "--run", run, "-i", source, "--beam", "1"],
            "predict": ["predict", "--run", run, "-i", source],
            "score": ["score", "--run", run, "--src", source, "--tgt", source],
            "rerank": ["rerank", "--run", run, "--nbest", nbest, "-i", source]}[command]
    code, _, err = run_cli(capsys, *argv, "--device", "cpu", "-o", target)
    rel = target.relative_to(run).as_posix()
    assert code == 2 and error_lines(err) == [f"nmt: {target}: is a file of the run {run} ({rel}); "
                                              "write the output elsewhere"], err
    assert target.read_bytes() == before


def test_an_output_over_the_checkpoint_path_being_loaded_is_refused(tmp_path, capsys, trained_run):
    checkpoint = tmp_path / "model.ckpt"
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", checkpoint)
    source = tmp_path / "in.txt"
    source.write_text("a0 b1\n")
    code, _, err = run_cli(capsys, "translate", "--run", trained_run, "--checkpoint", checkpoint, "-i", source,
                           "-o", checkpoint, "--device", "cpu")
    assert code == 2 and error_lines(err) == [f"nmt: {checkpoint}: is the checkpoint being loaded ({checkpoint}); "
                                              "write the output elsewhere"], err
    assert checkpoint.read_bytes() == (trained_run / "checkpoints" / "best.ckpt").read_bytes()


def test_a_new_file_beside_the_run_files_is_written(tmp_path, capsys, run_copy):
    run = run_copy
    source = tmp_path / "in.txt"
    source.write_text("a0 b1\n")
    code, _, err = run_cli(capsys, "translate", "--run", run, "-i", source, "-o", run / "test.hyp", "--beam", "1",
                           "--device", "cpu")
    assert code == 0, err
    assert len((run / "test.hyp").read_text().splitlines()) == 1
