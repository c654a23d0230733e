"""A run stopped in the middle of an epoch and resumed trains exactly what an uninterrupted run trains.

The data module's checkpointed state says how many of the epoch's batches were trained, so the
resumed run goes on with the rest of that epoch's order instead of starting the epoch over. With
dropout off, the two runs must end with the same weights.
"""
from __future__ import annotations

import signal
import textwrap

import torch

from conftest import write_recipe, write_reverse_corpus
from nmt.recipe import validate_recipe
from nmt.train import train_recipe
from reliability_support import nmt_subprocess, small_recipe, wait_until


def weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return state["state_dict"], state["global_step"]


def test_mid_epoch_resume_trains_the_rest_of_the_epoch(tmp_path):
    torch.set_num_threads(1)
    data = write_reverse_corpus(tmp_path / "data", n_train=300, n_dev=20)

    def recipe(max_steps: int):
        # 300 sentences in batches of 200 tokens: about 15 batches per epoch; validation (and so a
        # checkpoint) every 4 batches; no dropout, so both runs draw the same random numbers.
        return validate_recipe(small_recipe(data, data={"batch_tokens": 200},
                                            model={"embedding": {"size": 16, "dropout": 0.0},
                                                   "encoder": {"name": "gru", "hidden_size": 16, "dropout": 0.0}},
                                            trainer={"max_epochs": 1, "max_steps": max_steps, "val_check_interval": 4}),
                               tmp_path / "r.yaml")

    whole = train_recipe(recipe(-1), tmp_path / "whole")
    resumed = train_recipe(recipe(8), tmp_path / "resumed")  # stops mid-epoch after the checkpoint at step 8
    _, steps = weights(resumed)
    assert steps == 8
    train_recipe(recipe(-1), tmp_path / "resumed")

    expected, expected_steps = weights(whole)
    got, got_steps = weights(resumed)
    assert got_steps == expected_steps > 8
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


RECORD_STEPS = textwrap.dedent("""
    '''Test plugin: seq2seq that appends "pid step ids..." for every training step to steps.txt.'''
    import os
    import nmt
    from nmt.tasks.seq2seq import Seq2SeqTask

    @nmt.register("task", "seq2seq_record_steps")
    class RecordSteps(Seq2SeqTask):
        def training_step(self, batch, batch_idx):
            with open(self.run_dir / "steps.txt", "a") as f:
                f.write(f"{os.getpid()} {self.global_step} {' '.join(map(str, batch['ids'].tolist()))}\\n")
            return super().training_step(batch, batch_idx)
""")


def recorded_steps(run_dir) -> dict[int, list[tuple[int, str]]]:
    """pid -> [(step, the batch's ids)] in the order the process trained them."""
    steps: dict[int, list[tuple[int, str]]] = {}
    for line in (run_dir / "steps.txt").read_text().splitlines():
        pid, step, ids = line.split(" ", 2)
        steps.setdefault(int(pid), []).append((int(step), ids))
    return steps


def test_killed_mid_epoch_the_resumed_run_trains_the_remaining_batches(tmp_path):
    """SIGKILL a run over its prepared corpus in the middle of its one epoch; the resumed process trains
    exactly the batches an uninterrupted run trains from the checkpointed step on, in the same order."""
    data = write_reverse_corpus(tmp_path / "data", n_train=1200, n_dev=20)
    (tmp_path / "record_steps.py").write_text(RECORD_STEPS)
    recipe = write_recipe(tmp_path / "r.yaml", small_recipe(
        data, task="seq2seq_record_steps", plugins=["record_steps.py"], data={"batch_tokens": 150},
        model={"embedding": {"size": 8}, "encoder": {"name": "gru", "hidden_size": 8},
               "attention": {"name": "bahdanau"}, "decoder": {"name": "rnn", "hidden_size": 8}},
        trainer={"max_epochs": 1, "val_check_interval": 10, "limit_val_batches": 1}))
    whole = nmt_subprocess("train", recipe, "--run-dir", tmp_path / "whole", cwd=tmp_path)
    assert whole.wait(timeout=400) == 0, whole.stderr.read()[-2000:]
    (expected,) = recorded_steps(tmp_path / "whole").values()
    assert len(expected) > 40

    run_dir, last = tmp_path / "run", tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = nmt_subprocess("train", recipe, "--run-dir", run_dir, cwd=tmp_path)
    try:
        assert wait_until(lambda: last.exists(), 300, proc), "no checkpoint before the run ended"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    checkpointed = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 0 < checkpointed < len(expected) - 10, "the kill did not land mid-epoch"
    resumed = nmt_subprocess("train", recipe, "--run-dir", run_dir, cwd=tmp_path)
    assert resumed.wait(timeout=400) == 0, resumed.stderr.read()[-2000:]
    first, second = recorded_steps(run_dir).values()
    assert first[:checkpointed] == expected[:checkpointed]
    assert second == expected[checkpointed:]
