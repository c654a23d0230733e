"""A resume goes on with the state the run saved, or refuses: a stop inside gradient accumulation waits for
the step, an --init-from run killed before its first checkpoint starts from those weights again, an
early-stopped run stays stopped, and weight averaging or a cosine schedule's length cannot change under
the state ``last.ckpt`` holds."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_recipe, write_reverse_corpus
from nmt.runs import load_checkpoint
from reliability_support import (error_lines, reliability_data, run_cli, run_copy, small_recipe,  # noqa: F401
                                 trained_run)

NO_DROPOUT = {"embedding": {"size": 8, "dropout": 0.0}, "encoder": {"name": "gru", "hidden_size": 8, "dropout": 0.0},
              "decoder": {"name": "rnn", "hidden_size": 16}}


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_recipe(data_dir: Path, trainer: dict | None = None, **sections) -> dict:
    """A few steps of a small model without dropout, validated on one batch."""
    return small_recipe(data_dir, model=NO_DROPOUT, **sections,
                        trainer={"max_epochs": 1, "val_check_interval": 1.0, "limit_val_batches": 1, **(trainer or {})})


def train(capsys, recipe: dict, run_dir: Path, *argv: str) -> tuple[int, str]:
    path = write_recipe(run_dir.parent / f"{run_dir.name}.yaml", recipe)
    code, _, err = run_cli(capsys, "train", path, "--run-dir", run_dir, *argv)
    return code, err


def files(run_dir: Path, but: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.relative_to(run_dir).parts[0] not in but}


@pytest.fixture
def sigterm_after_batch(monkeypatch) -> dict:
    """Set ``["batches"]`` N: SIGTERM to this process at the end of the N-th training batch from then, once."""
    from nmt import train as train_module

    original, armed = train_module.Throughput.on_train_batch_end, {"batches": None}

    def on_train_batch_end(self, trainer, *args):
        original(self, trainer, *args)
        if armed["batches"] is not None:
            armed["batches"] -= 1
            if armed["batches"] == 0:
                armed["batches"] = None
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(train_module.Throughput, "on_train_batch_end", on_train_batch_end)
    return armed


def test_a_stop_inside_gradient_accumulation_waits_for_the_step(tmp_path, capsys, sigterm_after_batch):
    """accumulate_grad_batches=3, SIGTERM after batch 5: last.ckpt was saved at step 1 with 5 batches
    done, the resume lost the gradients of batches 3 and 4. Now it stops after batch 6, at step 2."""
    data = write_reverse_corpus(tmp_path / "data", n_train=300, n_dev=20)
    recipe = tiny_recipe(data, data={"batch_tokens": 200}, trainer={"accumulate_grad_batches": 3},
                         optim={"lr": 0.003, "scheduler": "none"})
    code, err = train(capsys, recipe, tmp_path / "whole")
    assert code == 0, err[-2000:]
    sigterm_after_batch["batches"] = 5
    code, err = train(capsys, recipe, tmp_path / "stopped")
    assert code == 143 and "last.ckpt holds step 2" in error_lines(err)[-1], err[-2000:]
    stopped = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == 2
    assert stopped["BucketedDataModule"]["batches_done"] == 6
    code, err = train(capsys, recipe, tmp_path / "stopped")
    assert code == 0, err[-2000:]
    expected, got = (load_checkpoint(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("whole", "stopped"))
    assert got["global_step"] == expected["global_step"] > 2
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][name], tensor), name


def test_an_init_from_run_killed_before_its_first_checkpoint_starts_from_the_weights_again(
        tmp_path, capsys, trained_run):
    """A SIGKILL after the run was written (run.json, recipe, fitted tokenizer), before any checkpoint: the
    same command trained from random weights. With a learning rate too small to move them, the one step
    trained now ends where the initial run's best weights are."""
    from nmt.recipe import validate_recipe
    from nmt.train import InitialRun, prepare_run_dir

    data = write_reverse_corpus(tmp_path / "data", n_train=100, n_dev=10, seed=7)
    recipe = small_recipe(data, optim={"lr": 1e-9}, trainer={"max_steps": 1, "max_epochs": -1})
    run_dir = tmp_path / "tuned"
    validated = validate_recipe(recipe, tmp_path / "tuned.yaml")
    prepare_run_dir(validated, run_dir, InitialRun.check(trained_run, validated))  # what the killed process left
    assert (run_dir / "run.json").exists() and not list((run_dir / "checkpoints").glob("*"))

    code, err = train(capsys, recipe, run_dir, "--init-from", trained_run)
    assert code == 0, err[-2000:]
    initial = load_checkpoint(trained_run / "checkpoints" / "best.ckpt")["state_dict"]
    tuned = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]
    for name, tensor in initial.items():
        assert torch.allclose(tuned[name], tensor, atol=1e-5), name


def test_a_rerun_of_an_early_stopped_run_changes_nothing(tmp_path, capsys, reliability_data):
    """patience 1 and a min_delta no validation reaches: stopped at the second validation. Rerunning the
    command trained on to the next validation, replacing last.ckpt, every time."""
    recipe = tiny_recipe(reliability_data, early_stopping={"patience": 1, "min_delta": 100.0},
                         trainer={"val_check_interval": 2, "log_every_n_steps": 1})
    run_dir = tmp_path / "run"
    code, err = train(capsys, recipe, run_dir)
    assert code == 0, err[-2000:]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    before = files(run_dir)

    code, err = train(capsys, recipe, run_dir)
    assert code == 0, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("nmt: finished reverse at step 4 (early stopping had stopped it: 1 validations without "
                           "a better val/bleu, early_stopping.patience 1; raise it to train on): best val/bleu "), line
    assert files(run_dir) == before


@pytest.mark.parametrize("saved_decay, decay", [(None, 0.99), (0.99, None)])
def test_a_resume_that_turns_weight_averaging_on_or_off_is_refused(tmp_path, capsys, run_copy, saved_decay, decay):
    """An EMA run's last.ckpt holds the average as its weights: resumed without it, the raw weights' Adam
    moments went on from the average; a run without one resumed with it was accepted as well."""
    def with_decay(value) -> dict:
        recipe = yaml.safe_load((run_copy / "recipe.yaml").read_text())
        recipe["optim"].pop("ema_decay", None)
        return recipe if value is None else {**recipe, "optim": {**recipe["optim"], "ema_decay": value}}

    resumed = with_decay(decay)
    write_recipe(run_copy / "recipe.yaml", with_decay(saved_decay))
    before = files(run_copy)
    code, _, err = run_cli(capsys, "train", write_recipe(tmp_path / "r.yaml", resumed), "--run-dir", run_copy)
    assert code == 2, err[-2000:]
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(f"nmt: {run_copy}: optim.ema_decay: {decay!r} differs from the "
                                                   f"run being resumed ({saved_decay!r})"), err[-2000:]
    assert files(run_copy) == before


def test_a_resume_that_changes_the_cosine_schedule_length_is_refused(tmp_path, capsys, reliability_data):
    """The schedule's state brings back its first span: resumed with a higher max_steps, the learning rate
    went past its minimum and rose again. The same span set by optim.total_steps resumes."""
    def recipe(max_steps: int, **optim) -> dict:
        return tiny_recipe(reliability_data, optim={"lr": 0.003, "scheduler": "cosine", "warmup_steps": 1, **optim},
                           trainer={"max_steps": max_steps, "max_epochs": -1, "val_check_interval": 2})

    run_dir = tmp_path / "run"
    code, err = train(capsys, recipe(2), run_dir)
    assert code == 0, err[-2000:]
    # refused inside fit, after Lightning has opened a TensorBoard events file, which goes with the refusal
    before = files(run_dir)
    code, err = train(capsys, recipe(4), run_dir)
    assert code == 2, err[-2000:]
    lines = error_lines(err)  # after "nmt: resuming ..."
    assert lines[-1].startswith(
        f"nmt: {run_dir}: trainer.max_steps: changes the length of the cosine schedule, whose state in last.ckpt "
        "keeps the old one (1 steps after the warm-up, 3 now)"), err[-2000:]
    assert files(run_dir) == before

    fixed = tmp_path / "fixed"
    for max_steps in (2, 4):  # optim.total_steps: one span whatever trainer.max_steps says
        code, err = train(capsys, recipe(max_steps, total_steps=4), fixed)
        assert code == 0, err[-2000:]
    assert load_checkpoint(fixed / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_init_from_a_run_of_another_joint_vocab_is_refused(tmp_path, capsys, trained_run):
    """It failed later, as a missing fitted/tgt.vocab.json, after the run directory was written."""
    from nmt.recipe import validate_recipe
    from nmt.train import InitialRun

    data = write_reverse_corpus(tmp_path / "data", n_train=50, n_dev=10, seed=7)
    recipe = write_recipe(tmp_path / "new.yaml", small_recipe(data, data={"joint_vocab": False}))
    code, _, err = run_cli(capsys, "train", recipe, "--run-dir", tmp_path / "tuned", "--init-from", trained_run)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert lines[0].startswith(f"nmt: {recipe}: data.joint_vocab: differs from the run it starts from"), lines
    assert not (tmp_path / "tuned").exists()
    same = validate_recipe(small_recipe(data, data={"joint_vocab": True}), tmp_path / "same.yaml")  # the default
    assert InitialRun.check(trained_run, same).run_dir == trained_run


def test_another_node_may_start_before_rank_0_has_created_the_run_directory(tmp_path, monkeypatch, reliability_data):
    """Each node of a multi-node run starts nmt train itself: node 1 looked for files that are not a run's
    in a folder node 0 had not created yet (FileNotFoundError, and node 0 waited for it forever)."""
    from nmt.recipe import validate_recipe
    from nmt.train import check_resumable

    monkeypatch.setenv("NODE_RANK", "1")
    check_resumable(validate_recipe(small_recipe(reliability_data), tmp_path / "r.yaml"), tmp_path / "run", fresh=False)
    assert not (tmp_path / "run").exists()


def test_a_resume_that_fails_before_its_first_step_leaves_the_run_as_it_was(tmp_path, capsys, reliability_data):
    """Lightning checks some trainer values only inside fit (an integer val_check_interval above the batches of an
    epoch), after it has opened a TensorBoard events file in the run: a failed resume left that file behind."""
    run_dir = tmp_path / "run"
    code, err = train(capsys, tiny_recipe(reliability_data), run_dir)
    assert code == 0, err[-2000:]
    before = files(run_dir)
    code, err = train(capsys, tiny_recipe(reliability_data, trainer={"max_epochs": 2, "val_check_interval": 100000}),
                      run_dir)
    # and the value is named as any other recipe error (it was 'nmt: error: ValueError: ...', exit 1)
    assert code == 2 and error_lines(err)[-1].startswith(
        f"nmt: {run_dir.parent / 'run.yaml'}: trainer.val_check_interval: `val_check_interval` (100000) must be "), err
    assert files(run_dir) == before
