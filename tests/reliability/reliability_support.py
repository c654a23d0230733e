"""Helpers for the reliability tests: one small trained run shared by every module, and CLI runners.

(Not a ``conftest.py``: a second conftest module would shadow ``tests/conftest.py`` under
pytest's default import mode. Test modules import the fixtures from here; the trained run is
cached per session so it is trained once however many modules use it.)

Training in-process (through ``nmt.cli.main``) avoids the seconds a fresh interpreter spends
importing torch and Lightning; tests that must kill, limit or distribute a process use
:func:`nmt_subprocess` instead.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.cli import main

NMT = [sys.executable, "-m", "nmt.cli"]
N_TRAIN, N_DEV = 1500, 100


def small_recipe(data_dir: Path, **sections) -> dict:
    """The reverse task, small enough to train two epochs in a few seconds on one core."""
    trainer = {"max_epochs": 2, "val_check_interval": 0.5, "log_every_n_steps": 5,
               **sections.pop("trainer", {})}
    return reverse_recipe(data_dir, trainer=trainer, **sections)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``nmt ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def nmt_subprocess(*argv, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """Start ``nmt ARGV`` as a child process (stdout and stderr captured as text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([*NMT, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=full_env, **kwargs)


def wait_until(condition, timeout: float, proc: subprocess.Popen, interval: float = 0.05) -> bool:
    """Whether ``condition()`` holds within ``timeout`` seconds, checked until ``proc`` ends and once after."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def stop_when(proc: subprocess.Popen, condition, settle: float, timeout: float = 300,
              sig: int = signal.SIGTERM, send=None) -> str:
    """Send ``sig`` to ``proc`` (or ``send(sig)``) ``settle`` seconds after ``condition()`` holds; its stderr once
    it ended (it is killed, with any process of its session, if it outlives ``timeout`` or the test fails)."""
    try:
        assert wait_until(condition, timeout, proc), "the process ended before it could be stopped"
        time.sleep(settle)
        (send or proc.send_signal)(sig)
        return proc.communicate(timeout=timeout)[1]
    finally:
        if proc.poll() is None:
            if os.getpgid(proc.pid) == proc.pid:  # started in a session of its own: its children too
                os.killpg(proc.pid, signal.SIGKILL)
            proc.kill()
            proc.communicate()


ROWS: dict[str, tuple[str, str, int, str]] = {}  # case -> (case, command, exit code, message), for docs/bad-inputs.md


def record(case: str, argv: list[str], code: int, err: str) -> str:
    """Keep one row of the bad-input table; returns the (last) ``nmt:`` line of ``err``."""
    lines = error_lines(err)
    message = lines[-1] if lines else "(none)"
    ROWS[case] = (case, "nmt " + " ".join(map(str, argv)), code, message)
    return message


def check(capsys, case: str, *argv, expect: int = 2) -> str:
    """Run ``nmt ARGV`` in-process; assert the exit code and a single ``nmt:`` line; record the row."""
    code, out, err = run_cli(capsys, *argv)
    message = record(case, list(argv), code, err)
    assert code == expect, err[-2000:]
    if expect == 2:
        assert len(error_lines(err)) == 1, err
    return message


def error_lines(stderr: str) -> list[str]:
    """The ``nmt: ...`` lines of stderr (Lightning's own chatter left out)."""
    return [line for line in stderr.splitlines() if line.startswith("nmt: ")]


_SESSION: dict[str, Path] = {}


@pytest.fixture(scope="session")
def reliability_data(tmp_path_factory) -> Path:
    if "data" not in _SESSION:
        _SESSION["data"] = write_reverse_corpus(tmp_path_factory.mktemp("reverse") / "data",
                                                n_train=N_TRAIN, n_dev=N_DEV)
    return _SESSION["data"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, reliability_data) -> Path:
    """A run trained without interruption (read-only: copy it before changing anything)."""
    if "run" not in _SESSION:
        root = tmp_path_factory.mktemp("trained")
        recipe = write_recipe(root / "reverse.yaml", small_recipe(reliability_data))
        run_dir = root / "run"
        assert main(["train", str(recipe), "--run-dir", str(run_dir)]) == 0
        _SESSION["run"] = run_dir
    return _SESSION["run"]


@pytest.fixture(scope="session")
def other_run(tmp_path_factory, reliability_data) -> Path:
    """A second run on the same data (so the same whitespace vocabulary, byte for byte), with another
    seed, encoder, attention and sizes, trained for one epoch: a different model of the same task."""
    if "other" not in _SESSION:
        root = tmp_path_factory.mktemp("other")
        recipe = small_recipe(reliability_data, seed=2, trainer={"max_epochs": 1},
                              model={"embedding": {"size": 32}, "encoder": {"name": "lstm", "hidden_size": 32},
                                     "attention": {"name": "luong"}, "decoder": {"name": "rnn", "hidden_size": 64}})
        run_dir = root / "run"
        assert main(["train", str(write_recipe(root / "other.yaml", recipe)), "--run-dir", str(run_dir)]) == 0
        _SESSION["other"] = run_dir
    return _SESSION["other"]


@pytest.fixture
def run_copy(tmp_path, trained_run) -> Path:
    """A private copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture(name="workdir")
def run_workdir(tmp_path, monkeypatch, trained_run) -> Path:
    """cwd with ``run/`` (a copy of the trained run), so that recorded commands and messages name
    relative paths, the same on every machine. Modules that need more in it define their own."""
    shutil.copytree(trained_run, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def classify_run(tmp_path_factory):
    """A classify run trained for one short epoch: enough for nmt predict to answer."""
    base = tmp_path_factory.mktemp("classify")
    rows = ["label\tsentence"] + [f"{'long' if n > 4 else 'short'}\t{' '.join('ab'[:1 + n % 2] for _ in range(n))}"
                                  for n in range(1, 9)] * 20
    (base / "train.tsv").write_text("\n".join(rows) + "\n")
    recipe = {"name": "lengths", "task": "classify", "seed": 1,
              "data": {"root": str(base), "train": "train.tsv", "valid": "train.tsv", "batch_tokens": 400},
              "model": {"embedding": {"size": 8}, "encoder": {"name": "gru", "hidden_size": 8}},
              "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                          "enable_model_summary": False}}
    (base / "lengths.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(base / "lengths.yaml"), "--run-dir", str(base / "run")]) == 0
    return base / "run"
