"""The installed ``nmt`` console script: help for every command, the version, the plugin listing."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import nmt
from nmt.cli import cli

NMT = Path(sys.executable).parent / "nmt"
BUILTINS = [("encoder", "gru"), ("encoder", "lstm"), ("decoder", "rnn"), ("attention", "bahdanau"),
            ("attention", "luong"), ("tokenizer", "sentencepiece"), ("tokenizer", "whitespace"),
            ("tokenizer", "characters"), ("task", "seq2seq")]


def run_nmt(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(NMT), *args], capture_output=True, text=True, env=env, timeout=300)


def test_the_console_script_is_installed():
    assert NMT.is_file(), f"no console script at {NMT}; install the package (pip install -e .)"


def test_help_lists_every_command():
    result = run_nmt("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: nmt [OPTIONS] COMMAND")
    for command in cli.commands:
        assert f"  {command} " in result.stdout
    assert "--plugin" in result.stdout and "--version" in result.stdout


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_help_of_each_command(command):
    result = run_nmt(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Usage: nmt {command} [OPTIONS]")
    assert cli.commands[command].help.split()[0] in result.stdout  # the docstring, not just usage
    assert result.stderr == ""


def test_short_help_option():
    assert run_nmt("train", "-h").stdout.startswith("Usage: nmt train")


def test_version():
    result = run_nmt("--version")
    assert result.returncode == 0
    assert result.stdout == f"nmt, version {nmt.__version__}\n"


def test_plugins_lists_every_builtin_with_its_origin():
    result = run_nmt("plugins")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["KIND", "NAME", "ORIGIN", "DESCRIPTION"]
    origin_column = header.index("ORIGIN")
    rows = {tuple(line.split()[:2]): line for line in lines}
    for kind, name in BUILTINS:
        assert (kind, name) in rows, f"{kind} {name} missing from:\n{result.stdout}"
        line = rows[kind, name]
        assert line[origin_column:].startswith(f"nmt {nmt.__version__} "), line
        assert len(line[origin_column:].split(None, 2)) == 3, f"no description: {line}"  # origin is two words
    assert [line.split()[:2] for line in lines] == sorted(line.split()[:2] for line in lines)


def test_no_command_shows_usage():
    result = run_nmt()
    assert "Usage: nmt" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_plugin_descriptions_are_plain_text():
    result = run_nmt("plugins")
    assert result.returncode == 0, result.stderr
    assert ":meth:" not in result.stdout and "``" not in result.stdout
    assert "projected once per batch by prepare" in result.stdout


def test_training_prints_no_lightning_noise(tmp_path):
    """No advertisement, no deprecation inside Lightning, no TPU line; nmt's own summary stays."""
    from conftest import reverse_recipe, write_recipe, write_reverse_corpus

    data = write_reverse_corpus(tmp_path / "data", n_train=200, n_dev=20)
    recipe = write_recipe(tmp_path / "r.yaml", reverse_recipe(data, trainer={"max_epochs": 1, "val_check_interval": 1.0}))
    result = run_nmt("train", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-2000:]
    for noise in ("litlogger", "TPU available", "LeafSpec", "smaller than the logging interval", "was configured so"):
        assert noise not in result.stderr, result.stderr
    assert "nmt: finished reverse" in result.stderr
