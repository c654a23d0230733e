"""Malformed recipes and command lines: each gives one line, ``nmt: <where>: <what>``, and exit code 2.

The table runs ``nmt.cli.main`` in-process (it returns the exit code) to stay fast; one case runs the
installed console script to prove that nothing prints a traceback there either.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml

from nmt import registry
from nmt.cli import main

from conftest import reverse_recipe, write_reverse_corpus

NMT = Path(sys.executable).parent / "nmt"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_reverse_corpus(tmp_path_factory.mktemp("reverse"), n_train=30, n_dev=5)


def with_values(recipe: dict, **dotted) -> dict:
    """A copy of ``recipe`` with ``model__encoder__hidden_size=...`` style keys set (None deletes)."""
    recipe = copy.deepcopy(recipe)
    for key, value in dotted.items():
        *parents, last = key.split("__")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return recipe


class Case(NamedTuple):
    recipe: dict | str | bytes | None  # a mapping to dump, raw YAML, or None for no recipe file
    args: tuple[str, ...]  # "{recipe}" and "{tmp}" are filled in
    fragments: tuple[str, ...]  # each must appear in the error line; "{recipe}" and "{tmp}" are filled in
    files: dict[str, str] = {}  # extra files to write under tmp (plugins)


TRAIN = ("train", "{recipe}", "--run-dir", "{tmp}/run")
DUPLICATE_PLUGIN = '''
import torch
from nmt import register

@register("attention", "bahdanau")
class MyBahdanau(torch.nn.Module):
    """A second attention under a name that is already taken."""
'''


def cases(base: dict) -> dict[str, Case]:
    return {
        "yaml syntax error, with its line": Case(
            "name: reverse\ntask: seq2seq\nmodel:\n  encoder: name: gru\n", TRAIN,
            ("{recipe}:4", "invalid YAML", "mapping values are not allowed")),
        "yaml tab indentation": Case(
            "name: reverse\n\ttask: seq2seq\n", TRAIN, ("{recipe}:2", "invalid YAML")),
        "recipe file not found": Case(None, TRAIN, ("{recipe}", "recipe file not found")),
        "top level is not a mapping": Case(
            "- name: reverse\n- task: seq2seq\n", TRAIN, ("{recipe}", "expected a mapping", "got list")),
        "not UTF-8": Case(
            b"name: r\xe9verse\n", TRAIN, ("{recipe}", "not UTF-8")),
        "unknown top-level key": Case(
            with_values(base, optimizer={"lr": 0.1}), TRAIN,
            ("{recipe}: optimizer", "unknown key; did you mean 'optim'?")),
        "unknown nested key": Case(
            with_values(base, early_stopping__patiense=3), TRAIN,
            ("early_stopping.patiense", "unknown key; did you mean 'patience'?")),
        "unknown plugin option": Case(
            with_values(base, model__encoder__hiden_size=32), TRAIN,
            ("{recipe}: model.encoder.hiden_size", "did you mean 'hidden_size'?")),
        "unknown tokenizer option": Case(
            with_values(base, data__tokenizer={"name": "whitespace", "lowercase": True}), TRAIN,
            ("data.tokenizer.lowercase", "unknown key")),
        "missing required key": Case(
            with_values(base, task=None), TRAIN, ("{recipe}: task", "required key is missing")),
        "missing required data key": Case(
            with_values(base, data__train={"src": "train.src"}), TRAIN,
            ("data.train.tgt", "required key is missing")),
        "wrong type": Case(
            with_values(base, model__encoder__hidden_size="big"), TRAIN,
            ("{recipe}: model.encoder.hidden_size", "integer", "'big'")),
        "negative size": Case(
            with_values(base, model__embedding__size=-4), TRAIN,
            ("{recipe}: model.embedding.size", "greater than 0", "-4")),
        "shared embedding without a joint vocabulary": Case(
            with_values(base, data__joint_vocab=False, model__embedding__share_source=True), TRAIN,
            ("{recipe}: model.embedding.share_source", "data.joint_vocab: true")),
        "out-of-range dropout": Case(
            with_values(base, model__decoder__dropout=1.5), TRAIN, ("model.decoder.dropout", "less than 1")),
        "bad enum value": Case(
            with_values(base, model__decoder__cell="rnnn"), TRAIN,
            ("model.decoder.cell", "'gru' or 'lstm'", "'rnnn'")),
        "bad optimizer name": Case(
            with_values(base, optim__name="adamm"), TRAIN, ("optim.name", "'adamm'")),
        "EMA decay of 1 (the weights would never move)": Case(
            with_values(base, optim__ema_decay=1.0), TRAIN, ("{recipe}: optim.ema_decay", "less than 1")),
        "bad recipe name": Case(
            with_values(base, name="my recipe"), TRAIN, ("{recipe}: name", "'my recipe'")),
        "unknown task": Case(
            with_values(base, task="seq2sek"), TRAIN, ("unknown task 'seq2sek'; did you mean 'seq2seq'?",)),
        "unknown attention, with a suggestion": Case(
            with_values(base, model__attention={"name": "bahdanu"}), TRAIN,
            ("{recipe}: model.attention.name", "unknown attention 'bahdanu'; did you mean 'bahdanau'?")),
        "unknown encoder, far from any name": Case(
            with_values(base, model__encoder={"name": "wavenet"}), TRAIN,
            ("unknown encoder 'wavenet'; known: ", "gru, lstm")),
        "plugin section without a name": Case(
            with_values(base, model__decoder={"name": None, "hidden_size": 8}), TRAIN,
            ("model.decoder.name", "required")),
        "missing data file": Case(
            with_values(base, data__train={"src": "nowhere.src", "tgt": "train.tgt"}), TRAIN,
            ("nowhere.src", "file not found")),
        "unknown Trainer argument": Case(
            with_values(base, trainer__max_epoch=3), TRAIN,
            ("{recipe}: trainer.max_epoch", "unknown Trainer argument; did you mean 'max_epochs'?")),
        "Trainer argument owned by nmt": Case(
            with_values(base, trainer__callbacks=[]), TRAIN, ("trainer.callbacks", "set by nmt")),
        "bad Trainer value": Case(
            with_values(base, trainer__accelerator="tpuu"), TRAIN, ("trainer", "accelerator", "tpuu")),
        "dot attention size mismatch": Case(
            with_values(base, model__attention={"name": "luong", "score": "dot"},
                        model__decoder={"name": "rnn", "hidden_size": 96}), TRAIN,
            ("model.attention.score", "dot attention needs key size", "128 vs 96")),
        "duplicate key, with both lines": Case(
            "name: reverse\ntask: seq2seq\noptim:\n  lr: 0.1\n  lr: 0.2\n", TRAIN,
            ("{recipe}:5: duplicate key 'lr' in optim (first on line 4)",)),
        "too many YAML aliases": Case(
            "name: reverse\ntask: seq2seq\nx: &x 1\nplugins: [" + ", ".join(["*x"] * 101) + "]\n", TRAIN,
            ("{recipe}: too many YAML aliases (more than 100)",)),
        "YAML nested too deeply": Case(
            "name: reverse\ntask: seq2seq\nx: " + "[" * 500 + "]" * 500 + "\n", TRAIN,
            ("{recipe}:3: YAML nested more than 100 levels deep",)),
        "a key 'on' is a string, not True": Case(
            yaml.safe_dump(base) + "on: 1\n", TRAIN, ("{recipe}: on: unknown key",)),
        "negative gradient clipping": Case(
            with_values(base, trainer__gradient_clip_val=-1), TRAIN,
            ("{recipe}: trainer.gradient_clip_val: expected a number >= 0, got -1",)),
        "gradient clipping not a number": Case(
            with_values(base, trainer__gradient_clip_val=float("nan")), TRAIN,
            ("{recipe}: trainer.gradient_clip_val: expected a finite number, got nan",)),
        "no training time": Case(
            with_values(base, trainer__max_time="00:00:00:00"), TRAIN,
            ("{recipe}: trainer.max_time: expected a positive duration, got '00:00:00:00'",)),
        "negative duration mapping": Case(
            with_values(base, trainer__max_time={"days": -1}), TRAIN,
            ("{recipe}: trainer.max_time: expected a positive duration, got {'days': -1}",)),
        "duration mapping with another key": Case(
            with_values(base, trainer__max_time={"foo": 1}), TRAIN,
            ("{recipe}: trainer.max_time: expected a duration: DD:HH:MM:SS or a mapping of days, hours, minutes, "
             "seconds",)),
        "duration too long": Case(
            with_values(base, trainer__max_time={"days": 99999999999}), TRAIN,
            ("{recipe}: trainer.max_time: expected a duration of at most",)),
        "gradients accumulated for ever": Case(
            with_values(base, trainer__accumulate_grad_batches=2**63), TRAIN,
            ("{recipe}: trainer.accumulate_grad_batches: expected at most 1000000, got 9223372036854775808",)),
        "negative minimum of steps": Case(
            with_values(base, trainer__min_steps=-3), TRAIN,
            ("{recipe}: trainer.min_steps: expected a number >= 0, got -3",)),
        "a plugin name that is a list": Case(
            with_values(base, model__encoder={"name": ["gru"]}), TRAIN,
            ("{recipe}: model.encoder.name: expected the name of a registered encoder (a string), got ['gru']",)),
        "a character device as training data": Case(
            with_values(base, data__train={"src": "/dev/zero", "tgt": "train.tgt"}), TRAIN,
            ("/dev/zero: a character device, not a data file",)),
        "a learning rate past any use": Case(
            with_values(base, optim__lr=1e300), TRAIN,
            ("{recipe}: optim.lr: input should be less than or equal to 1000, got 1e+300",)),
        "a misspelt section set by an override": Case(
            base, (*TRAIN, "model.embeding.size=8"), ("override model.embeding: unknown key; did you mean 'embedding'?",)),
        "a cosine schedule that anneals upwards": Case(
            with_values(base, optim__scheduler="cosine", optim__lr=0.001, optim__min_lr=0.5), TRAIN,
            ("{recipe}: optim.min_lr: 0.5 is above optim.lr (0.001)",)),
        "a warm-up as long as the schedule": Case(
            with_values(base, optim__warmup_steps=100, optim__total_steps=10), TRAIN,
            ("{recipe}: optim.warmup_steps: 100 is not below optim.total_steps (10)",)),
        "a trainer key in capitals": Case(
            with_values(base, trainer__MAX_STEPS=3), TRAIN,
            ("{recipe}: trainer.MAX_STEPS: unknown Trainer argument; did you mean 'max_steps'?",)),
        "a misspelt name of a plugin section": Case(
            with_values(base, model__encoder={"nmae": "gru"}), TRAIN,
            ("{recipe}: model.encoder.nmae: unknown key; did you mean 'name'?",)),
        "a boolean seed": Case(
            with_values(base, seed=True), TRAIN, ("{recipe}: seed: input should be a valid integer, got True",)),
        "Trainer setting whose package is not installed": Case(
            with_values(base, trainer__precision="transformer-engine"), TRAIN,
            ("{recipe}: trainer: needs a package that is not installed",)),
        "Trainer argument of the wrong type": Case(
            with_values(base, trainer__max_epochs="three"), TRAIN,
            ("{recipe}: trainer.max_epochs: expected an integer or null, got 'three'",)),
        "seed beyond 2**32 - 1": Case(
            with_values(base, seed=2**32), TRAIN, ("{recipe}: seed: input should be less than or equal to 4294967295",)),
        "infinite learning rate": Case(
            with_values(base, optim__lr=float("inf")), TRAIN, ("{recipe}: optim.lr: input should be a finite number",)),
        "bad override syntax": Case(
            base, TRAIN + ("trainer.max_epochs",), ("override 'trainer.max_epochs'", "expected key.path=value")),
        "bad override key": Case(
            base, TRAIN + ("trainer..max_epochs=3",), ("override 'trainer..max_epochs=3'",)),
        "override of a key that does not exist": Case(
            base, TRAIN + ("optim.lrr=0.1",), ("nmt: override optim.lrr: unknown key; did you mean 'lr'?",)),
        "override of a Trainer argument that does not exist": Case(
            base, TRAIN + ("trainer.max_epoch=3",),
            ("nmt: override trainer.max_epoch: unknown Trainer argument; did you mean 'max_epochs'?",)),
        "override of a plugin option that does not exist": Case(
            base, TRAIN + ("model.encoder.hiden_size=3",),
            ("nmt: override model.encoder.hiden_size: unknown key; did you mean 'hidden_size'?",)),
        "override naming an unknown plugin": Case(
            base, TRAIN + ("model.attention.name=bahdanu",),
            ("nmt: override model.attention.name: unknown attention 'bahdanu'; did you mean 'bahdanau'?",)),
        "wrong type via override": Case(
            base, TRAIN + ("optim.lr=fast",), ("nmt: override optim.lr: input should be a valid number", "'fast'")),
        "override through a scalar": Case(
            base, TRAIN + ("seed.value=1",), ("override 'seed.value=1'", "seed is an int, not a section")),
        "bad --plugin path": Case(
            base, ("--plugin", "{tmp}/nothere.py") + TRAIN, ("{tmp}/nothere.py", "plugin file not found")),
        "bad --plugin module": Case(
            base, ("--plugin", "no_such_nmt_plugin_module") + TRAIN,
            ("no_such_nmt_plugin_module", "plugin module not found")),
        "plugin that fails on import": Case(
            base, ("--plugin", "{tmp}/broken.py", "plugins"), ("{tmp}/broken.py", "RuntimeError: boom"),
            files={"broken.py": "raise RuntimeError('boom')\n"}),
        "recipe plugins: entry not found": Case(
            with_values(base, plugins=["missing_plugin.py"]), TRAIN, ("missing_plugin.py", "plugin file not found")),
        "duplicate plugin registration, naming both origins": Case(
            base, ("--plugin", "{tmp}/my_attention.py") + TRAIN,
            ("attention 'bahdanau'", "registered twice", "by nmt ", "nmt_builtin.bahdanau.BahdanauAttention",
             "by {tmp}/my_attention.py", "MyBahdanau"),
            files={"my_attention.py": DUPLICATE_PLUGIN}),
        "zero validation interval (Lightning would divide by it mid-training)": Case(
            with_values(base, trainer__val_check_interval=0), TRAIN, ("trainer.val_check_interval", "positive", "0")),
        "zero logging interval": Case(
            with_values(base, trainer__log_every_n_steps=0), TRAIN, ("trainer.log_every_n_steps", "positive")),
        "zero gradient accumulation": Case(
            with_values(base, trainer__accumulate_grad_batches=0), TRAIN, ("trainer.accumulate_grad_batches", "positive")),
        "more CPU training processes than cores": Case(
            with_values(base, trainer__devices=4096), TRAIN, ("trainer.devices", "4096 training processes on a CPU")),
        "sizes each in bounds, together too large a model": Case(
            with_values(base, model__encoder__hidden_size=30000, model__decoder__hidden_size=30000), TRAIN,
            ("{recipe}: model:", "parameters even with a vocabulary of 8, more than 1,073,741,824",
             "model.decoder.hidden_size 30000")),
        "missing command argument": Case(None, ("train",), ("Missing argument 'RECIPE'",)),
        "unknown command, with a suggestion": Case(None, ("trian",), ("No such command 'trian'", "train")),
        "unknown option": Case(base, TRAIN + ("--epochs", "3"), ("No such option", "--epochs")),
        "bad option value": Case(None, ("translate", "--run", "{tmp}", "--beam", "0"), ("--beam", "0")),
    }


CASE_IDS = list(cases({}))


def prepare(case: Case, tmp: Path) -> tuple[list[str], list[str]]:
    """Write the case's files under ``tmp``; return its argv and expected fragments, filled in."""
    recipe = tmp / "recipe.yaml"
    if isinstance(case.recipe, dict):
        recipe.write_text(yaml.safe_dump(case.recipe, sort_keys=False))
    elif case.recipe is not None:
        recipe.write_bytes(case.recipe if isinstance(case.recipe, bytes) else case.recipe.encode())
    for name, text in case.files.items():
        (tmp / name).write_text(text)

    def fill(text: str) -> str:
        return text.replace("{recipe}", str(recipe)).replace("{tmp}", str(tmp))

    return [fill(a) for a in case.args], [fill(f) for f in case.fragments]


def test_the_table_is_large_enough():
    assert len(CASE_IDS) >= 15


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_malformed_input_gives_one_line_and_exit_code_2(case_id, data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written outside tmp_path, whatever happens
    before = set(registry.entries())
    case = cases(reverse_recipe(data_dir, trainer={"max_epochs": 1, "accelerator": "cpu"}))[case_id]
    argv, fragments = prepare(case, tmp_path)

    code = main(argv)

    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("nmt: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "Traceback" not in out
    for fragment in fragments:
        assert fragment in err
    assert set(registry.entries()) == before  # a failed plugin load leaves the registry as it was


def test_the_installed_script_prints_no_traceback(data_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(reverse_recipe(data_dir, model={"attention": {"name": "bahdanu"}})))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(NMT), "train", str(recipe), "--run-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr == (f"nmt: {recipe}: model.attention.name: unknown attention 'bahdanu'; "
                             "did you mean 'bahdanau'?\n")
    assert result.stdout == ""
    assert not (tmp_path / "run").exists()


def test_debug_shows_the_traceback(data_dir, tmp_path):
    """``--debug`` is the way to the traceback: the user error is raised, not swallowed."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(reverse_recipe(data_dir, task="seq2sek")))
    from nmt.errors import PluginError

    with pytest.raises(PluginError, match="unknown task 'seq2sek'"):
        main(["--debug", "train", str(recipe), "--run-dir", str(tmp_path / "run")])



def test_model_errors_are_caught_before_the_run_directory_is_written(data_dir, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(reverse_recipe(
        data_dir, model={"attention": {"name": "luong", "score": "dot"},
                         "decoder": {"name": "rnn", "hidden_size": 96}})))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}: model.attention.score" in err
    assert not (tmp_path / "run").exists()
