"""Learning-rate schedules beside plateau: linear warm-up, inverse square root and cosine, stepped by
Lightning after every optimiser step, logged per step (``lr-Adam``) and kept across a resume."""
from __future__ import annotations

import csv
import math

import pytest

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.cli import main

LR, WARMUP = 0.004, 8


def logged_lr(run_dir) -> dict[int, float]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["lr-Adam"]) for r in csv.DictReader(f) if r.get("lr-Adam")}


def expected(scheduler: str, step: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based), by the textbook formulas."""
    if scheduler == "cosine":
        if step < WARMUP:
            return LR * (1 / WARMUP + (1 - 1 / WARMUP) * step / WARMUP)
        return 1e-6 + (LR - 1e-6) * (1 + math.cos(math.pi * (step - WARMUP) / (total - WARMUP))) / 2
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    return LR * (math.sqrt(WARMUP / (step + 1)) if scheduler == "inverse_sqrt" else 1.0)


@pytest.mark.parametrize("scheduler", ["warmup", "inverse_sqrt", "cosine"])
def test_schedule_follows_its_formula_step_by_step(tmp_path, scheduler):
    data = write_reverse_corpus(tmp_path / "data", n_train=400, n_dev=20)
    recipe = reverse_recipe(data, optim={"lr": LR, "scheduler": scheduler, "warmup_steps": WARMUP},
                            trainer={"max_steps": 30, "max_epochs": -1, "log_every_n_steps": 1,
                                     "val_check_interval": 1.0})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 0
    lrs = logged_lr(tmp_path / "run")
    assert len(lrs) >= 25
    for step, lr in lrs.items():  # LearningRateMonitor logs the rate of the step about to run
        assert lr == pytest.approx(expected(scheduler, step, 30), rel=1e-4), (step, lr)


def test_cosine_without_a_length_names_the_key(tmp_path, capsys):
    data = write_reverse_corpus(tmp_path / "data", n_train=100, n_dev=10)
    recipe = reverse_recipe(data, optim={"scheduler": "cosine"},
                            trainer={"max_epochs": -1, "max_time": "00:00:00:10"})
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    assert "optim.total_steps: required by the cosine schedule" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # the failed start left nothing behind
