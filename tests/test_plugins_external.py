"""A separately installed distribution registers a plugin through the ``nmt.plugins`` entry point.

The fixture under ``tests/fixtures/nmt-extra-plugin`` is a real distribution (its own
``pyproject.toml``) installed with pip into a temporary target directory; the installed ``nmt``
console script finds it through ``PYTHONPATH`` alone, with no edit to ``nmt/`` and no mocking.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nmt.cli import main

from conftest import reverse_recipe, write_recipe, write_reverse_corpus

FIXTURE = Path(__file__).parent / "fixtures" / "nmt-extra-plugin"
NMT = Path(sys.executable).parent / "nmt"


@pytest.fixture(scope="session")
def extra_plugin_target(tmp_path_factory) -> Path:
    """pip-install the fixture distribution into a fresh directory; return that directory."""
    pytest.importorskip("setuptools", reason="building the plugin fixture needs setuptools (no build isolation)")
    root = tmp_path_factory.mktemp("extra-plugin")
    source = shutil.copytree(FIXTURE, root / "src")  # build outside the repository: no build/ left there
    target = root / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "nmt_extra_plugin-0.1.0.dist-info" / "entry_points.txt").is_file()
    return target


def run_nmt(*args: str, pythonpath: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(NMT), *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_installed_plugin_is_listed_with_its_distribution(extra_plugin_target):
    result = run_nmt("plugins", pythonpath=extra_plugin_target)
    assert result.returncode == 0, result.stderr
    rows = [line.split(None, 2) for line in result.stdout.splitlines()]
    row = next(r for r in rows if r[:2] == ["attention", "scaled_dot"])
    assert row[2].startswith("nmt-extra-plugin 0.1.0")
    assert "bahdanau" in result.stdout  # the built-ins are still there


def test_installed_plugin_trains_from_a_recipe(extra_plugin_target, tmp_path):
    data = write_reverse_corpus(tmp_path / "data", n_train=300, n_dev=20)
    recipe = write_recipe(tmp_path / "recipe.yaml", reverse_recipe(
        data, model={"attention": {"name": "scaled_dot"}, "encoder": {"name": "gru", "hidden_size": 16},
                     "decoder": {"name": "rnn", "hidden_size": 24}, "embedding": {"size": 16}},
        trainer={"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                 "enable_model_summary": False}))
    run_dir = tmp_path / "run"

    result = run_nmt("train", str(recipe), "--run-dir", str(run_dir), pythonpath=extra_plugin_target, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "Traceback" not in result.stderr



def test_without_the_distribution_the_recipe_is_rejected(tmp_path, capsys):
    # In-process (this interpreter never has the target directory on sys.path): saves a start-up.
    data = write_reverse_corpus(tmp_path / "data", n_train=20, n_dev=5)
    recipe = write_recipe(tmp_path / "recipe.yaml", reverse_recipe(data, model={"attention": {"name": "scaled_dot"}}))
    assert importlib.util.find_spec("nmt_extra_plugin") is None
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nmt: ") and err.count("\n") == 1 and "Traceback" not in err
    assert "unknown attention 'scaled_dot'" in err
    assert "model.attention.name" in err
    assert not (tmp_path / "run").exists()  # rejected before anything was written
