"""A resume never throws away what a run kept: no silent restart from step 0 over its checkpoints, no
forgotten best score when the run directory moved, no silent change of the batch order, and Ctrl-C
stops as SIGTERM does (last.ckpt at the step reached); with max_steps set, a resume trains every epoch
once."""
from __future__ import annotations

import csv
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from conftest import write_recipe, write_reverse_corpus
from nmt.recipe import validate_recipe
from nmt.runs import load_checkpoint
from nmt.train import train_recipe
from reliability_support import (error_lines, reliability_data, run_cli, run_copy, small_recipe,  # noqa: F401
                                 trained_run)


def tiny_recipe(data: Path, **trainer) -> dict:
    """A handful of steps of a small model, validated every 2 steps on a few sentences: quick to train."""
    return small_recipe(data, model={"embedding": {"size": 8}, "encoder": {"name": "gru", "hidden_size": 8},
                                     "decoder": {"name": "rnn", "hidden_size": 16}},
                        trainer={"max_epochs": 1, "val_check_interval": 2, "limit_val_batches": 1,
                                 "log_every_n_steps": 2, **trainer})


def train(capsys, recipe: dict, path: Path, run_dir: Path, *overrides: str) -> tuple[int, str]:
    code, _, err = run_cli(capsys, "train", write_recipe(path, recipe), "--run-dir", run_dir, *overrides)
    return code, err


def step_of(ckpt: Path) -> int:
    return load_checkpoint(ckpt)["global_step"]


def test_a_run_that_lost_last_ckpt_is_not_trained_over(tmp_path, capsys, reliability_data):
    run_dir = tmp_path / "run"
    code, err = train(capsys, tiny_recipe(reliability_data, max_steps=4), tmp_path / "r.yaml", run_dir,
                      "checkpoint.keep=2")
    assert code == 0, err[-2000:]
    checkpoints = run_dir / "checkpoints"
    kept = {p.name: p.read_bytes() for p in checkpoints.glob("*.ckpt")}
    assert {"best.ckpt", "step-4.ckpt"} <= set(kept)
    (checkpoints / "last.ckpt").unlink()
    del kept["last.ckpt"]

    code, err = train(capsys, tiny_recipe(reliability_data, max_steps=4), tmp_path / "r.yaml", run_dir,
                      "checkpoint.keep=2")
    assert code == 2, err[-2000:]
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"nmt: {checkpoints / 'last.ckpt'}: missing"), err[-2000:]
    assert "best.ckpt" in lines[0] and "restore last.ckpt" in lines[0] and "--run-dir" in lines[0]
    assert {p.name: p.read_bytes() for p in checkpoints.glob("*.ckpt")} == kept  # nothing overwritten


def test_a_moved_run_keeps_its_best_score(tmp_path, capsys, reliability_data):
    first = tmp_path / "first"
    code, err = train(capsys, tiny_recipe(reliability_data, max_steps=4), tmp_path / "r.yaml", first)
    assert code == 0, err[-2000:]
    # A best score no validation can beat (BLEU is at most 100), so that the resumed validation
    # is worse whatever it measures: best.ckpt must stay as it is.
    last = first / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    states = [s for key, s in state["callbacks"].items() if key.startswith("ModelCheckpoint")]
    assert len(states) == 1 and states[0]["monitor"] == "val/bleu"
    best_score = torch.tensor(1000.0)
    states[0].update(best_model_score=best_score, kth_value=best_score,
                     best_k_models={path: best_score for path in states[0]["best_k_models"]})
    torch.save(state, last)
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    best = (moved / "checkpoints" / "best.ckpt").read_bytes()

    code, err = train(capsys, tiny_recipe(reliability_data, max_steps=6), tmp_path / "r.yaml", moved)
    assert code == 0, err[-2000:]
    assert step_of(moved / "checkpoints" / "last.ckpt") == 6  # it validated at step 6, after the move
    assert (moved / "checkpoints" / "best.ckpt").read_bytes() == best
    assert "best val/bleu 1000" in err  # the stored score, not the worse one measured after the move


def test_resume_with_another_seed_is_refused(run_copy, capsys):
    recipe = run_copy / "recipe.yaml"
    before = recipe.read_text()
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", run_copy, "seed=2")
    assert code == 2, err[-2000:]
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"nmt: {run_copy}: seed: 2 differs from the run being resumed (1)")
    assert recipe.read_text() == before  # still the seed its checkpoints were trained with


STOP_AT = 5


@pytest.fixture
def ctrl_c_at_step(monkeypatch):
    """Ctrl-C (SIGINT to this process) at the end of training step STOP_AT, once."""
    from nmt import train as train_module

    original = train_module.Throughput.on_train_batch_end
    sent = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        original(self, trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == STOP_AT and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(train_module.Throughput, "on_train_batch_end", on_train_batch_end)
    # A process started in the background by a non-interactive shell (a CI job, `cmd &`) inherits SIGINT
    # ignored, which nmt leaves alone (no terminal can send it one): give this one Python's own handler,
    # as a terminal's process has.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield sent
    signal.signal(signal.SIGINT, previous)


def logged_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get("train/loss")]


def test_ctrl_c_saves_the_step_reached_and_exits_130(tmp_path, capsys, reliability_data, ctrl_c_at_step):
    run_dir = tmp_path / "run"
    recipe = tiny_recipe(reliability_data, max_steps=9, val_check_interval=20, log_every_n_steps=1)
    code, err = train(capsys, recipe, tmp_path / "r.yaml", run_dir)
    assert ctrl_c_at_step, err[-2000:]
    assert code == 130, err[-2000:]
    lines = error_lines(err)
    assert lines == [f"nmt: {run_dir}: training stopped by Ctrl-C (SIGINT) (last.ckpt holds step {STOP_AT}); "
                     "run the same nmt train again to resume"], err[-2000:]
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == STOP_AT
    assert max(logged_steps(run_dir)) < STOP_AT  # metrics.csv ends where last.ckpt does
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back

    code, err = train(capsys, recipe, tmp_path / "r.yaml", run_dir)
    assert code == 0, err[-2000:]
    steps = logged_steps(run_dir)
    assert step_of(run_dir / "checkpoints" / "last.ckpt") == 9
    assert steps == sorted(set(steps)) and max(steps) == 8, steps  # each step logged once


def test_resumes_with_max_steps_set_train_every_epoch_once(tmp_path):
    """max_steps and max_epochs both set: a resume from an epoch's end starts the next epoch, one from a
    max_steps stop inside an epoch trains the rest of it, and the run ends as an uninterrupted one."""
    torch.set_num_threads(1)
    data = write_reverse_corpus(tmp_path / "data", n_train=300, n_dev=20)  # 6 batches an epoch

    def recipe(max_epochs: int, max_steps: int):
        return validate_recipe(small_recipe(data, model={"embedding": {"size": 8, "dropout": 0.0},
                                                         "encoder": {"name": "gru", "hidden_size": 8, "dropout": 0.0},
                                                         "decoder": {"name": "rnn", "hidden_size": 16}},
                                            trainer={"max_epochs": max_epochs, "max_steps": max_steps,
                                                     "val_check_interval": 1.0, "limit_val_batches": 1}),
                               tmp_path / "r.yaml")

    whole = train_recipe(recipe(3, 1000), tmp_path / "whole")
    resumed = tmp_path / "resumed"
    for max_epochs, max_steps, expected_step in ((1, 3, 3), (1, 1000, 6), (3, 1000, 18)):
        train_recipe(recipe(max_epochs, max_steps), resumed)
        assert step_of(resumed / "checkpoints" / "last.ckpt") == expected_step, (max_epochs, max_steps)
    expected, got = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (whole, resumed))
    assert got["global_step"] == expected["global_step"] == 18
    assert got["loops"]["fit_loop"]["epoch_progress"] == expected["loops"]["fit_loop"]["epoch_progress"]
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name
