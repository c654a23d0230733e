"""A NaN or infinite loss stops training with a message naming the step; the last good checkpoint stays."""
from __future__ import annotations

import textwrap

import torch

from conftest import write_recipe
from nmt.runs import load_checkpoint
from reliability_support import error_lines, reliability_data, run_cli, small_recipe  # noqa: F401

NAN_STEP = 30

PLUGIN = textwrap.dedent(f"""
    '''Test plugin: seq2seq whose training loss turns NaN from global step {NAN_STEP} on.'''
    import nmt
    from nmt.tasks.seq2seq import Seq2SeqTask

    @nmt.register("task", "seq2seq_nan_after_{NAN_STEP}")
    class NanAfter(Seq2SeqTask):
        '''Like seq2seq, but the loss is NaN once global_step reaches {NAN_STEP}.'''

        def loss(self, batch, label_smoothing=0.0):
            total, ntokens = super().loss(batch, label_smoothing)
            if self.training and self.global_step >= {NAN_STEP}:
                total = total * float("nan")
            return total, ntokens
""")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, reliability_data):
    (tmp_path / "nan_plugin.py").write_text(PLUGIN)
    recipe = small_recipe(reliability_data, task=f"seq2seq_nan_after_{NAN_STEP}", plugins=["nan_plugin.py"],
                          trainer={"max_epochs": 3})
    path = write_recipe(tmp_path / "nan.yaml", recipe)
    run_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", path, "--run-dir", run_dir)
    assert code == 1, err[-2000:]
    message = error_lines(err)[-1]
    assert f"loss is nan at step {NAN_STEP} " in message and "last good checkpoint" in message, message
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert 0 < state["global_step"] < NAN_STEP
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point())


def test_nan_loss_before_any_checkpoint_claims_none(tmp_path, capsys, reliability_data):
    """A first start that diverges before its first checkpoint is undone with its run directory: the message
    pointed to a checkpoints folder that was not there."""
    plugin = PLUGIN.replace(f"self.global_step >= {NAN_STEP}", "True").replace(f"nan_after_{NAN_STEP}", "nan_at_once")
    (tmp_path / "nan_plugin.py").write_text(plugin)
    recipe = small_recipe(reliability_data, task="seq2seq_nan_at_once", plugins=["nan_plugin.py"])
    code, out, err = run_cli(capsys, "train", write_recipe(tmp_path / "nan.yaml", recipe), "--run-dir", tmp_path / "run")
    assert code == 1, err[-2000:]
    message = error_lines(err)[-1]
    assert "loss is nan at step 0 " in message and "no checkpoint was written yet" in message, message
    assert "last good checkpoint" not in message and not (tmp_path / "run").exists()
