"""Every way a run ends keeps its progress in ``last.ckpt``, and training data with no usable example
is an error, not a run that trains nothing and exits 0 (issue 12)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import write_recipe
from nmt.runs import load_checkpoint
from reliability_support import (check, error_lines, nmt_subprocess, reliability_data, run_cli,  # noqa: F401
                                 small_recipe, stop_when)


def last_step(run_dir: Path) -> int:
    return load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]


# --- training data with no usable example ---------------------------------------------------

@pytest.fixture
def data_copy(tmp_path, reliability_data, monkeypatch) -> Path:
    shutil.copytree(reliability_data, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


def test_blank_training_data_is_an_error(data_copy, tmp_path, capsys):
    (data_copy / "train.src").write_text("\n" * 40)
    (data_copy / "train.tgt").write_text("x y\n" * 40)
    recipe = write_recipe(tmp_path / "r.yaml", small_recipe(Path("data")))
    message = check(capsys, "training data of blank lines only", "train", recipe.name, "--run-dir", "runs/x")
    assert message == ("nmt: data/train.src: no usable training example: 40 lines dropped "
                       "(40 empty, 0 longer than data.max_length=100)")
    assert not Path("runs/x").exists()


def test_cr_only_line_endings_are_an_error(data_copy, tmp_path, capsys):
    for side in ("src", "tgt"):
        text = (data_copy / f"train.{side}").read_text()
        (data_copy / f"train.{side}").write_text(text.replace("\n", "\r"))
    recipe = write_recipe(tmp_path / "r.yaml", small_recipe(Path("data")))
    message = check(capsys, "training data with CR-only line endings", "train", recipe.name, "--run-dir", "runs/x")
    assert message.startswith("nmt: data/train.src: no usable training example: 1 line dropped "
                              "(0 empty, 1 longer than data.max_length=100); the file has CR (\\r) line endings")


# --- stops before, between and after validations --------------------------------------------

def test_max_steps_before_the_first_validation_with_early_stopping(tmp_path, capsys, reliability_data):
    """Was: exit 1, "Early stopping conditioned on metric val/bleu which is not available", no checkpoint."""
    recipe = write_recipe(tmp_path / "r.yaml", small_recipe(
        reliability_data, early_stopping={"patience": 2}, trainer={"max_steps": 5, "val_check_interval": 1.0}))
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", run_dir)
    assert code == 0, err[-2000:]
    assert last_step(run_dir) == 5
    assert not (run_dir / "checkpoints" / "best.ckpt").exists()
    # No validation yet: --checkpoint best falls back to the latest weights.
    (tmp_path / "in.txt").write_text("a1 b2 c3\n")
    code, _, err = run_cli(capsys, "translate", "--run", run_dir, "--checkpoint", "best", "-i", tmp_path / "in.txt",
                           "-o", tmp_path / "out.txt", "--beam", "1", "--device", "cpu")
    assert code == 0, err[-2000:]
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 1
    # Resumed with a larger budget, it goes on from step 5 and stops at the new limit, between validations.
    recipe.write_text(recipe.read_text().replace("max_steps: 5", "max_steps: 12"))
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", run_dir)
    assert code == 0, err[-2000:]
    assert any("resuming" in line for line in error_lines(err))
    assert last_step(run_dir) == 12


def test_resumed_run_stopped_between_validations_keeps_the_step_it_reached(tmp_path, capsys, reliability_data):
    """Was: a run stopped by max_steps at step 27 kept the checkpoint of the validation at step 22."""
    recipe = small_recipe(reliability_data, trainer={"max_steps": 10, "val_check_interval": 8})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    run_dir = tmp_path / "run"
    assert run_cli(capsys, "train", path, "--run-dir", run_dir)[0] == 0
    assert last_step(run_dir) == 10
    recipe["trainer"]["max_steps"] = 19  # validations at 16 (and 24): the stop falls between them
    write_recipe(path, recipe)
    code, _, err = run_cli(capsys, "train", path, "--run-dir", run_dir)
    assert code == 0, err[-2000:]
    assert last_step(run_dir) == 19


def test_classify_stopped_before_validation_can_predict(tmp_path, capsys):
    """Was: exit 0 with no checkpoint, then nmt predict: "checkpoints/last.ckpt: checkpoint not found"."""
    data = tmp_path / "data"
    data.mkdir()
    rows = "".join(f"{'long' if n > 4 else 'short'}\t{' '.join(['w'] * n)}\n" for n in list(range(1, 9)) * 60)
    for split in ("train", "dev"):
        (data / f"{split}.tsv").write_text("label\tsentence\n" + rows)
    recipe = {"name": "lengths", "task": "classify", "seed": 1,
              "data": {"root": str(data), "train": "train.tsv", "valid": "dev.tsv", "batch_tokens": 200},
              "model": {"embedding": {"size": 16}, "encoder": {"name": "gru", "hidden_size": 16}},
              "trainer": {"max_steps": 7, "max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False,
                          "enable_model_summary": False}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", tmp_path / "c.yaml", "--run-dir", run_dir)
    assert code == 0, err[-2000:]
    assert last_step(run_dir) == 7
    (tmp_path / "in.txt").write_text("w w\nw w w w w w w\n")
    code, _, err = run_cli(capsys, "predict", "--run", run_dir, "-i", tmp_path / "in.txt", "-o", tmp_path / "out.txt",
                           "--device", "cpu")
    assert code == 0, err[-2000:]
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 2


def test_sigterm_keeps_the_current_step_and_says_so(tmp_path, capsys, reliability_data):
    """SIGTERM mid-epoch, before any validation: last.ckpt at the step reached, exit 143, one nmt: line."""
    recipe = write_recipe(tmp_path / "r.yaml", small_recipe(reliability_data,
                                                             trainer={"max_epochs": 50, "val_check_interval": 1.0}))
    run_dir = tmp_path / "run"
    proc = nmt_subprocess("train", recipe, "--run-dir", run_dir)
    # some steps into the first epoch, after fit has begun
    err = stop_when(proc, lambda: any((run_dir / "tb").glob("events.*")), settle=1.0, timeout=120)
    assert proc.returncode == 143, err[-2000:]
    lines = error_lines(err)
    assert len(lines) == 1 and "stopped by SIGTERM" in lines[0] and "run the same nmt train again" in lines[0], err[-2000:]
    step = last_step(run_dir)
    assert step > 0 and f"last.ckpt holds step {step}" in lines[0]
    # It resumes from there.
    short = write_recipe(tmp_path / "short.yaml", small_recipe(
        reliability_data, trainer={"max_epochs": 50, "val_check_interval": 1.0, "max_steps": step + 3}))
    code, _, err = run_cli(capsys, "train", short, "--run-dir", run_dir)
    assert code == 0, err[-2000:]
    assert last_step(run_dir) == step + 3
