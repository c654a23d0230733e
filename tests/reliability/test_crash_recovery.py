"""Crash recovery: SIGKILL a real ``nmt train`` at random moments, rerun the same command, finish.

Checkpoints are written to a temporary file and renamed (``nmt.lightning_fixes.AtomicCheckpointIO``), so a
kill can never leave ``best.ckpt`` or ``last.ckpt`` torn; the rerun resumes from ``last.ckpt``.
"""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from conftest import write_recipe
from nmt.cli import main
from nmt.runs import load_checkpoint
from reliability_support import error_lines, nmt_subprocess, reliability_data, small_recipe, wait_until  # noqa: F401


NOISE_BLEU = 6.0  # dev BLEU of this tiny model moves this much between validations of one run
# A kill lands at most this long after a fresh checkpoint. Checkpoints come every quarter epoch
# (sixteen in the run); on an idle 2-core machine a half epoch took 0.2 s, so each of the three kills
# advances the run by a few checkpoints at most and training cannot finish before the third.
KILL_DELAY = 0.15


def dev_bleu(run_dir: Path, data_dir: Path) -> float:
    """Dev BLEU of the final weights (last.ckpt), greedy: independent of what the logs kept."""
    from nmt import metrics
    from nmt.translate import translate_file

    output = run_dir.parent / f"{run_dir.name}.dev.out"
    translate_file(run_dir, checkpoint="last", beam=1, input_path=data_dir / "dev.src", output_path=output,
                   device="cpu")
    hypotheses = output.read_text().splitlines()
    return metrics.score(hypotheses, [(data_dir / "dev.tgt").read_text().splitlines()], ("bleu",))["bleu"].score


def assert_checkpoints_whole(run_dir: Path) -> None:
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        state = load_checkpoint(ckpt)  # raises on a truncated file
        assert "state_dict" in state and "loops" in state, ckpt


def test_killed_training_resumes_to_the_same_result(tmp_path, reliability_data):
    """Kill three times at random points (each after fresh progress), rerun, compare with no kill."""
    recipe = write_recipe(tmp_path / "reverse.yaml",
                          small_recipe(reliability_data, trainer={"max_epochs": 4, "val_check_interval": 0.25}))
    uninterrupted_run = tmp_path / "uninterrupted"
    assert main(["train", str(recipe), "--run-dir", str(uninterrupted_run)]) == 0
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    rng = random.Random(5)
    kills = 0
    for attempt in range(3):
        seen = last.stat().st_mtime_ns if last.exists() else None
        proc = nmt_subprocess("train", recipe, "--run-dir", run_dir)
        try:
            # Wait for a new checkpoint (progress since the last kill), then kill at a random moment
            # after it: mid-epoch, mid-validation or mid-write, wherever it lands.
            progressed = wait_until(lambda: last.exists() and last.stat().st_mtime_ns != seen, 240, proc)
            if progressed:
                time.sleep(rng.uniform(0.0, KILL_DELAY))
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.communicate()
        assert_checkpoints_whole(run_dir)
    assert kills >= 2, "training finished before it could be killed; make the task bigger"

    proc = nmt_subprocess("train", recipe, "--run-dir", run_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert any("resuming" in line for line in error_lines(err))
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    assert_checkpoints_whole(run_dir)
    state, reference = load_checkpoint(last), load_checkpoint(uninterrupted_run / "checkpoints" / "last.ckpt")
    # The same number of optimiser steps. The saved epoch counter can differ by one: whether the last
    # write came before or after Lightning advanced it at the final epoch's end depends on the kill.
    assert state["global_step"] == reference["global_step"]
    assert abs(state["epoch"] - reference["epoch"]) <= 1
    resumed, uninterrupted = dev_bleu(run_dir, reliability_data), dev_bleu(uninterrupted_run, reliability_data)
    print(f"dev BLEU: resumed after {kills} kills {resumed:.2f}, uninterrupted {uninterrupted:.2f}")
    assert uninterrupted > 10, f"the uninterrupted run did not learn (BLEU {uninterrupted:.2f})"
    # Not bit-exact: the resumed run keeps the batch order (test_mid_epoch_resume.py: identical weights
    # with dropout off) but draws different dropout masks, since random states are not checkpointed.
    assert abs(resumed - uninterrupted) <= NOISE_BLEU, (resumed, uninterrupted)


WRITER = textwrap.dedent("""
    import sys, torch
    from nmt.lightning_fixes import AtomicCheckpointIO
    io, target, size = AtomicCheckpointIO(), sys.argv[1], int(sys.argv[2])
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "generation": 0}, target)
    print("first", flush=True)
    generation = 1
    while True:  # big checkpoints, rewritten until killed
        io.save_checkpoint({"state_dict": {"w": torch.randn(size)}, "generation": generation}, target)
        generation += 1
""")


def test_kill_while_writing_a_checkpoint_leaves_the_old_one(tmp_path):
    """SIGKILL a process inside ``torch.save`` of a big checkpoint: the target is the old, whole file."""
    target = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(10_000_000)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first", proc.stderr.read()

        def writing() -> bool:
            temps = list(tmp_path.glob(".last.ckpt.*.tmp"))
            return bool(temps) and temps[0].stat().st_size > 4_000_000

        assert wait_until(writing, 120, proc), proc.stderr.read() if proc.poll() is not None else "no temp file"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    state = load_checkpoint(target)
    if state["generation"] == 0:
        assert torch.equal(state["state_dict"]["w"], torch.zeros(4))
    else:  # a later generation was renamed into place before the kill: still whole
        assert state["state_dict"]["w"].numel() == 10_000_000
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "killed mid-write, a temp file remains"


def test_lightning_writes_best_and_last_through_atomic_io(tmp_path, monkeypatch, reliability_data):
    """Both checkpoint files go through AtomicCheckpointIO (not a direct torch.save)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from nmt.lightning_fixes import AtomicCheckpointIO, LastCheckpoint
    from nmt.train import build_trainer
    from nmt.recipe import validate_recipe

    recipe = validate_recipe(small_recipe(reliability_data), tmp_path / "r.yaml")
    trainer = build_trainer(recipe, tmp_path / "run", recipe.task_cls)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.checkpoint_callback.save_top_k == 1
    assert [type(c) for c in trainer.checkpoint_callbacks] == [ModelCheckpoint, LastCheckpoint]  # best first
