"""optim.ema_decay: validation, checkpoints and prediction use the moving average of the weights, the
raw weights keep training, and a resumed run continues the same average."""
from __future__ import annotations

from pathlib import Path

import torch

from nmt.recipe import validate_recipe
from nmt.runs import load_checkpoint, load_run
from nmt.train import train_recipe
from tests.tasks.test_classify import classify_recipe, dev_accuracy, write_counting_task


def train(base: Path, data: Path, epochs: int, decay: float = 0.9) -> Path:
    raw = classify_recipe(data, optim={"lr": 0.005, "ema_decay": decay}, trainer={"max_epochs": epochs})
    return train_recipe(validate_recipe(raw, base / "counting.yaml"), base / "run")


def test_checkpoints_and_predictions_use_the_average(tmp_path: Path):
    torch.set_num_threads(1)
    data = write_counting_task(tmp_path / "data")
    run = train(tmp_path, data, epochs=4)
    ckpt = load_checkpoint(run / "checkpoints" / "best.ckpt")
    average, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert average.keys() == current.keys()
    assert any(not torch.equal(average[k], current[k]) for k in average)  # the two sets of weights differ
    loaded = load_run(run, device="cpu").state_dict()
    assert all(torch.equal(loaded[k], average[k]) for k in average)  # nmt predict serves the average
    accuracy, majority = dev_accuracy(run, data)
    assert accuracy > majority + 0.25, (accuracy, majority)  # and the average has learned the task


def test_a_resumed_run_continues_the_average(tmp_path: Path):
    torch.set_num_threads(1)
    data = write_counting_task(tmp_path / "data", n_train=600)
    run = train(tmp_path, data, epochs=1)
    first = load_checkpoint(run / "checkpoints" / "last.ckpt")
    steps = first["global_step"]
    assert int(first["averaging_state"]["n_averaged"]) == steps  # one update per optimiser step
    train(tmp_path, data, epochs=2)
    resumed = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 2 * steps
    # restarted from nothing, the average would count only the second epoch's steps
    assert int(resumed["averaging_state"]["n_averaged"]) == 2 * steps
