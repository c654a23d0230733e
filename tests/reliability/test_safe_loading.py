"""Safe loading: a checkpoint or run directory from someone else can hold data, never code.

Checkpoints load with ``torch.load(weights_only=True)`` (``nmt.runs.load_checkpoint``), and so does
Lightning when it resumes (``nmt.lightning_fixes.AtomicCheckpointIO.load_checkpoint``). A run directory's
recipe does not import the plugins it names: the user installs them or passes ``--plugin``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import yaml

from conftest import write_recipe
from reliability_support import error_lines, reliability_data, run_cli, run_copy, small_recipe, trained_run  # noqa: F401


class RunsCode:
    """Unpickling this calls ``os.system``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def crafted_checkpoint(path: Path, marker: Path, like: Path) -> Path:
    """A checkpoint that looks like ``like`` but carries a code-running object."""
    state = torch.load(like, map_location="cpu", weights_only=True)
    state["state_dict"]["payload"] = RunsCode(marker)
    torch.save(state, path)
    return path


def test_translate_refuses_a_checkpoint_that_would_run_code(tmp_path, capsys, trained_run):
    marker = tmp_path / "marker"
    ckpt = crafted_checkpoint(tmp_path / "crafted.ckpt", marker, trained_run / "checkpoints" / "last.ckpt")
    (tmp_path / "in.txt").write_text("ab cd\n")
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "--checkpoint", ckpt,
                             "-i", tmp_path / "in.txt", "--device", "cpu")
    assert code == 2
    assert error_lines(err) == [line for line in err.splitlines() if line], err
    assert len(error_lines(err)) == 1 and "refused to load" in err and str(ckpt) in err
    assert not marker.exists(), "the checkpoint's code ran"


def test_resume_refuses_a_last_checkpoint_that_would_run_code(tmp_path, capsys, run_copy, reliability_data):
    marker = tmp_path / "marker"
    last = run_copy / "checkpoints" / "last.ckpt"
    crafted_checkpoint(last, marker, last)
    recipe = write_recipe(tmp_path / "reverse.yaml", small_recipe(reliability_data, trainer={"max_epochs": 3}))
    code, out, err = run_cli(capsys, "train", recipe, "--run-dir", run_copy)
    assert code == 2, err[-2000:]
    assert "refused to load" in error_lines(err)[-1] and str(last) in error_lines(err)[-1]
    assert not marker.exists(), "the checkpoint's code ran"


def test_truncated_checkpoint_is_a_clear_error(tmp_path, capsys, trained_run):
    ckpt = tmp_path / "truncated.ckpt"
    data = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "--checkpoint", ckpt, "--device", "cpu")
    assert code == 2 and "unreadable checkpoint" in err and len(error_lines(err)) == 1


def test_run_directory_does_not_import_the_plugins_its_recipe_names(tmp_path, capsys, run_copy):
    """A downloaded run whose recipe lists a plugin file shipped beside it: the file never runs."""
    marker = tmp_path / "marker"
    (run_copy / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    recipe = yaml.safe_load((run_copy / "recipe.yaml").read_text())
    recipe["plugins"] = ["evil.py"]
    (run_copy / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "in.txt").write_text("ab cd\n")
    code, out, err = run_cli(capsys, "translate", "--run", run_copy, "-i", tmp_path / "in.txt",
                             "--beam", "1", "--device", "cpu")
    assert code == 0, err
    assert out == "cd ab\n" or out.count("\n") == 1
    assert not marker.exists(), "a plugin named only by the run directory was imported"
