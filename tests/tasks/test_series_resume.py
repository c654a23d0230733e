"""Series tasks resume mid-epoch with the rest of that epoch's windows, each once, and TBPTT steps its schedule.

The window data module's checkpointed state says how many of the epoch's batches were trained, and an
epoch's order depends on the seed and the epoch alone, so a run stopped inside an epoch and resumed ends
with the weights of an uninterrupted one (no dropout). Under ``model.tbptt_steps`` (manual optimisation)
Lightning steps no scheduler; the task steps the per-step ones after every optimiser step.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
from lightning_fabric.utilities.data import _set_sampler_epoch

from nmt.cli import main
from nmt.data.series import WindowDataModule, WindowDataset, WindowShape

pytestmark = pytest.mark.usefixtures("one_thread")

LR = 0.01


def write_recipe(tmp_path: Path, **optim) -> Path:
    """Regression of every step of a sine: 280 training rows, 256 windows, 8 batches of 32 per epoch."""
    (tmp_path / "s.csv").write_text("t,x\n" + "".join(f"{i},{math.sin(i / 5):.6f}\n" for i in range(400)))
    raw = {"name": "reg", "task": "regress", "seed": 1,
           "data": {"root": str(tmp_path), "path": "s.csv", "time_column": "t", "columns": ["x"],
                    "split": {"train": 0.7, "valid": 0.15, "test": 0.15}, "lookback": 24, "offset": 1,
                    "output": "every_step", "batch_size": 32},
           "model": {"encoder": {"name": "gru", "hidden_size": 8, "bidirectional": False}},
           "optim": {"lr": LR, "scheduler": "none", **optim},
           "trainer": {"max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False,
                       "enable_model_summary": False}}
    path = tmp_path / "reg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(recipe: Path, run: Path, *overrides: str) -> dict:
    assert main(["train", str(recipe), "--run-dir", str(run), *overrides]) == 0
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    for name, tensor in a["state_dict"].items():
        assert torch.equal(b["state_dict"][name], tensor), name


def windows(n: int = 100) -> WindowDataset:
    values = torch.arange(n + 3, dtype=torch.float32)[:, None].numpy()
    return WindowDataset(values, [0], [0], WindowShape(3, 1, 1), torch.arange(2, n + 2).numpy())


def epoch_batches(module: WindowDataModule, epoch: int) -> list[list[float]]:
    """The training batches of ``epoch`` (each window named by its target) from a loader Lightning would drive."""
    loader = module.train_dataloader()
    _set_sampler_epoch(loader, epoch)  # what Lightning's fit loop calls before each epoch
    return [y[:, 0, 0].tolist() for _, y in loader]


def test_data_module_resumes_with_the_rest_of_the_epochs_order():
    """A fresh process (a new module) given the saved place goes on with the stopped one's order of that epoch."""
    first = WindowDataModule(windows(), windows(), batch_size=8, valid_batch_size=8, seed=3)
    loader = first.train_dataloader()
    for epoch in (0, 1):
        _set_sampler_epoch(loader, epoch)
        stopped = [y[:, 0, 0].tolist() for _, y in loader]
    assert sorted(sum(stopped, [])) == sorted(windows().tensors()[1][:, 0, 0].tolist())
    resumed = WindowDataModule(windows(), windows(), batch_size=8, valid_batch_size=8, seed=3)
    resumed.load_state_dict({"epoch": 1, "batches_done": 5})
    assert epoch_batches(resumed, 1) == stopped[5:]
    assert epoch_batches(resumed, 2) == epoch_batches(first, 2)  # the next epoch runs whole


def test_sampler_resumes_each_devices_share():
    """Under DDP every rank skips its own trained batches; together the ranks still cover every window."""
    from nmt.data.series import WindowSampler  # here, so the other tests run against a module without it

    data, seen = windows(101), []
    for rank in (0, 1):
        whole = WindowSampler(data, batch_size=4, seed=5, num_replicas=2, rank=rank)
        whole.set_epoch(3)
        order = list(whole)
        resumed = WindowSampler(data, batch_size=4, seed=5, num_replicas=2, rank=rank)
        resumed.resume_at(3, 2)
        resumed.set_epoch(3)
        assert list(resumed) == order[8:]
        assert list(resumed) == order  # one pass only
        seen += order
    assert set(seen) == set(range(len(data)))


def test_regress_stopped_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path):
    recipe = write_recipe(tmp_path)
    whole = train(recipe, tmp_path / "whole")
    assert train(recipe, tmp_path / "resumed", "trainer.max_steps=3")["global_step"] == 3  # inside epoch 0
    assert_same_weights(whole, train(recipe, tmp_path / "resumed", "trainer.max_steps=-1"))


def logged_lr(run: Path) -> dict[int, float]:
    with open(run / "logs" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r["lr-Adam"]) for r in csv.DictReader(f) if r.get("lr-Adam")}


def test_tbptt_steps_the_warmup_after_every_optimiser_step_and_resumes_it(tmp_path):
    """lookback 24 in pieces of 8: three optimiser steps a batch, each advancing the warm-up by one step."""
    recipe = write_recipe(tmp_path, scheduler="warmup", warmup_steps=20)
    tbptt = ("model.tbptt_steps=8", "trainer.log_every_n_steps=1")
    whole = train(recipe, tmp_path / "whole", *tbptt)
    assert whole["global_step"] == 2 * 8 * 3
    assert whole["lr_schedulers"][0]["last_epoch"] == whole["global_step"]
    lrs = logged_lr(tmp_path / "whole")  # the rate at the start of each batch; its step column counts batches
    assert len(lrs) >= 10
    for batch, lr in lrs.items():
        assert lr == pytest.approx(LR * min(1.0, (3 * batch + 1) / 20)), (batch, lr)
    assert train(recipe, tmp_path / "resumed", *tbptt, "trainer.max_steps=9")["global_step"] == 9
    assert_same_weights(whole, train(recipe, tmp_path / "resumed", *tbptt, "trainer.max_steps=-1"))


def test_tbptt_cosine_spans_the_runs_optimiser_steps(tmp_path):
    """The cosine's length counts each batch's pieces, so it ends at min_lr with the run, not a third of the way."""
    recipe = write_recipe(tmp_path, scheduler="cosine", warmup_steps=4, min_lr=1e-5)
    state = train(recipe, tmp_path / "run", "model.tbptt_steps=8")
    assert state["global_step"] == 2 * 8 * 3
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5)
