"""Hostile or careless recipes and run directories (issue 12): each is refused with one short line, fast.

Every case runs ``nmt`` in-process from a temporary working directory with relative paths, so the
rows it records for ``docs/bad-inputs.md`` are the same on every machine. None of them needs a
trained run: the checks come before any data file, checkpoint or run directory is touched.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import nmt
from conftest import reverse_recipe, write_recipe
from reliability_support import check, error_lines, record, run_cli

# The "billion laughs": each line nine aliases of the one before, 13 lines (500 bytes) make 9**13 items.
LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{c}: &{c} [" + ",".join([f"*{p}"] * 9) + "]\n" for p, c in zip("abcdefghijkl", "bcdefghijklm"))


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """cwd with ``r.yaml`` (a valid recipe; its data is never read) and ``in.txt``."""
    monkeypatch.chdir(tmp_path)
    write_recipe(tmp_path / "r.yaml", reverse_recipe(Path("data"), trainer={"max_epochs": 1}))
    (tmp_path / "in.txt").write_text("a0 b1\n")
    return tmp_path


def nested_aliases(levels: int) -> str:
    """A mapping of ``levels`` lists, each nine aliases of the one before: 9**levels items, 9*(levels-1) aliases."""
    return "laughs:\n" + "".join("  " + line + "\n" for line in LAUGHS.splitlines()[:levels])


def fake_run(workdir: Path, recipe_text: str | None = None) -> Path:
    """A run directory as far as its run.json and recipe.yaml go (no checkpoint: never reached)."""
    run = workdir / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"format": 1, "nmt_version": nmt.__version__}) + "\n")
    if recipe_text is not None:
        (run / "recipe.yaml").write_text(recipe_text)
    return run


TRANSLATE = ("translate", "--run", "run", "-i", "in.txt", "--device", "cpu")


# --- 1. YAML aliases --------------------------------------------------------------------------

def test_billion_laughs_is_refused_at_once(workdir, capsys):
    (workdir / "laughs.yaml").write_text(f"name: r\ntask: seq2seq\n{LAUGHS}seed: *m\n")
    import nmt.train  # noqa: F401  (imported by the command: its seconds are not the recipe's)

    start = time.monotonic()
    message = check(capsys, "recipe of nested YAML aliases (billion laughs)", "train", "laughs.yaml")
    assert time.monotonic() - start < 1.0
    assert message == "nmt: laughs.yaml: too many YAML aliases (more than 100); recipes do not need them"
    assert not (workdir / "runs").exists()


def test_fewer_aliases_that_still_expand_to_millions(workdir, capsys):
    (workdir / "laughs.yaml").write_text(f"name: r\ntask: seq2seq\n{nested_aliases(9)}")  # 72 aliases, 9**9 items
    message = check(capsys, "recipe of 72 YAML aliases expanding to 9**9 values", "train", "laughs.yaml")
    assert message == "nmt: laughs.yaml: YAML aliases expand to more than 1,000,000 values; recipes do not need them"


def test_recursive_alias(workdir, capsys):
    (workdir / "loop.yaml").write_text("name: r\ntask: seq2seq\nplugins: &p [x, *p]\n")
    message = check(capsys, "recipe with a recursive YAML alias", "train", "loop.yaml")
    assert message == "nmt: loop.yaml:3: a YAML alias inside its own anchor (a recursive value)"


def test_a_few_aliases_are_still_fine(workdir):
    from nmt.recipe import load_recipe

    text = (workdir / "r.yaml").read_text().replace("  max_epochs: 1", "  max_epochs: &epochs 1\n  min_epochs: *epochs")
    (workdir / "anchors.yaml").write_text(text)
    assert load_recipe("anchors.yaml", check_data=False).spec.trainer["min_epochs"] == 1


# --- 2. file size and type --------------------------------------------------------------------

def test_oversized_recipe(workdir, capsys):
    (workdir / "big.yaml").write_text((workdir / "r.yaml").read_text() + "#" * (1 << 20) + "\n")
    message = check(capsys, "recipe file over 1 MB", "train", "big.yaml")
    assert message == "nmt: big.yaml: too large for a recipe file (over 1024 KB)"


def test_recipe_that_is_a_device(workdir, capsys):
    message = check(capsys, "recipe that is a device (/dev/zero)", "train", "/dev/zero")
    assert message == "nmt: /dev/zero: a character device, not a recipe file"


def test_recipe_that_is_a_fifo(workdir, capsys):
    os.mkfifo(workdir / "fifo.yaml")  # opening it would block until someone writes
    message = check(capsys, "recipe that is a FIFO", "train", "fifo.yaml")
    assert message == "nmt: fifo.yaml: a FIFO, not a recipe file"


def test_run_json_that_is_a_folder(workdir, capsys):
    (workdir / "run").mkdir()
    (workdir / "run" / "run.json").mkdir()
    message = check(capsys, "run.json that is a folder", *TRANSLATE)
    assert message == "nmt: run/run.json: a directory, not a run file"


def test_run_json_that_is_a_device(workdir, capsys):
    (workdir / "run").mkdir()
    (workdir / "run" / "run.json").symlink_to("/dev/zero")  # read whole, it would never end
    message = check(capsys, "run.json linked to /dev/zero", *TRANSLATE)
    assert message == "nmt: run/run.json: a character device, not a run file"


def test_run_json_that_is_a_fifo(workdir, capsys):
    (workdir / "run").mkdir()
    os.mkfifo(workdir / "run" / "run.json")
    message = check(capsys, "run.json that is a FIFO", *TRANSLATE)
    assert message == "nmt: run/run.json: a FIFO, not a run file"


def test_oversized_run_json(workdir, capsys):
    run = fake_run(workdir)
    (run / "run.json").write_text(json.dumps({"format": 1, "nmt_version": nmt.__version__, "pad": "x" * 70000}))
    message = check(capsys, "run.json over 64 KB", *TRANSLATE)
    assert message == "nmt: run/run.json: too large for a run file (over 64 KB)"


# --- 3. values quoted in messages -------------------------------------------------------------

def test_aliases_in_a_run_recipe_give_a_short_line(workdir, capsys):
    """Within the alias bounds, five levels still expand to 9**5 items: the message quotes a few."""
    fake_run(workdir, f"task: seq2seq\n{nested_aliases(5)}name: *e\n".replace("laughs:\n", "trainer:\n"))
    message = check(capsys, "run recipe.yaml whose value expands to 59,049 items", *TRANSLATE)
    assert message.startswith("nmt: run/recipe.yaml: name: input should be a valid string, got [[[[")
    assert len(message) < 200


def test_huge_value_is_cut_in_the_message(workdir, capsys):
    text = (workdir / "r.yaml").read_text().replace("name: reverse", "name: " + "x" * 500_000 + " y")
    (workdir / "long.yaml").write_text(text)
    message = check(capsys, "recipe value of 500,000 characters", "train", "long.yaml")
    assert message.startswith("nmt: long.yaml: name: string should match pattern")
    assert message.endswith("xxx y'") and "..." in message and len(message) < 300


# --- 4. duplicate keys ------------------------------------------------------------------------

def test_duplicate_key_in_a_section(workdir, capsys):
    (workdir / "dup.yaml").write_text("name: r\ntask: seq2seq\n\noptim:\n  lr: 0.1\n  name: adam\n  lr: 0.01\n")
    message = check(capsys, "duplicate key in a recipe section", "train", "dup.yaml")
    assert message == "nmt: dup.yaml:7: duplicate key 'lr' in optim (first on line 5)"


def test_duplicate_key_nested_and_at_the_top(workdir, capsys):
    from nmt.recipe import load_recipe
    from nmt.errors import RecipeError

    (workdir / "a.yaml").write_text("name: r\nmodel:\n  encoder:\n    name: gru\n    name: lstm\n")
    with pytest.raises(RecipeError, match=r"^a.yaml:5: duplicate key 'name' in model.encoder \(first on line 4\)$"):
        load_recipe("a.yaml")
    (workdir / "b.yaml").write_text("name: r\ntask: seq2seq\nname: s\n")
    with pytest.raises(RecipeError, match=r"^b.yaml:3: duplicate key 'name' \(first on line 1\)$"):
        load_recipe("b.yaml")
    (workdir / "c.yaml").write_text("name: r\noptim: {lr: 0.1, lr: 0.2}\n")
    with pytest.raises(RecipeError, match=r"^c.yaml:2: duplicate key 'lr' in optim \(first on line 2\)$"):
        load_recipe("c.yaml")


def test_merge_keys_may_be_overridden(workdir):
    """``<<: *base`` then the same key again is YAML's way to override, not a duplicate."""
    from nmt.recipe import read_recipe_file

    (workdir / "m.yaml").write_text("base: &base {lr: 0.1, name: adam}\noptim:\n  <<: *base\n  lr: 0.2\n")
    assert read_recipe_file(Path("m.yaml"))["optim"] == {"lr": 0.2, "name": "adam"}


# --- 5. plugins registering an unknown kind ---------------------------------------------------

def test_plugin_registering_an_unknown_kind(workdir, capsys):
    (workdir / "typo_plugin.py").write_text("import nmt\n\n@nmt.register('encodr', 'mine')\nclass Mine:\n    pass\n")
    argv = ["--plugin", "typo_plugin.py", "plugins"]
    code, _, err = run_cli(capsys, *argv)
    # the plugin's origin is its absolute path: cut to the working directory for a stable table row
    message = record("plugin registering an unknown kind", argv, code, err.replace(f"{workdir}/", ""))
    assert code == 2 and len(error_lines(err)) == 1, err
    assert message == ("nmt: typo_plugin.py: register('encodr', 'mine'): unknown plugin kind "
                       "(known: encoder, decoder, attention, task, tokenizer); did you mean 'encoder'?")


# --- 6. Trainer argument types ----------------------------------------------------------------

def test_trainer_argument_of_the_wrong_type(workdir, capsys):
    message = check(capsys, "Trainer argument of the wrong type", "train", "r.yaml", "trainer.max_epochs=abc")
    assert message == "nmt: override trainer.max_epochs: expected an integer or null, got 'abc'"
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("key, value, expected", [
    ("val_check_interval", "[1]", "expected a number, a string, a duration, a mapping or null, got [1]"),
    ("precision", "17", "expected 64, 32, 16, "),
    ("accumulate_grad_batches", "2.5", "expected an integer, got 2.5"),
    ("gradient_clip_val", "high", "expected a number or null, got 'high'"),
    ("enable_progress_bar", "maybe", "expected a boolean or null, got 'maybe'"),
])
def test_trainer_types_in_the_file(workdir, key, value, expected):
    from nmt.errors import RecipeError
    from nmt.recipe import load_recipe

    with pytest.raises(RecipeError, match=f"^override trainer.{key}: {expected}".replace("[", r"\[")):
        load_recipe("r.yaml", [f"trainer.{key}={value}"], check_data=False)


def test_valid_trainer_values_pass(workdir):
    from nmt.recipe import load_recipe

    overrides = ["trainer.val_check_interval=0.5", "trainer.max_time=00:00:05:00", "trainer.devices=1",
                 "trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1", "trainer.max_steps=-1",
                 "trainer.deterministic=warn", "trainer.limit_val_batches=0.25"]
    assert load_recipe("r.yaml", overrides, check_data=False).spec.trainer["max_steps"] == -1


# --- 7. seed and sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["99999999999999999999", "-1"])
def test_seed_out_of_range(workdir, capsys, seed):
    message = check(capsys, f"seed out of range ({seed})", "train", "r.yaml", f"seed={seed}")
    assert message.startswith("nmt: override seed: input should be ") and message.endswith(f"got {seed}")


def test_hidden_size_too_large(workdir, capsys):
    message = check(capsys, "hidden size of 10**12", "train", "r.yaml", "model.encoder.hidden_size=1e12")
    assert message == ("nmt: override model.encoder.hidden_size: input should be less than or equal to 65536, "
                       "got 1000000000000.0")


@pytest.mark.parametrize("override", ["model.decoder.num_layers=1000", "model.embedding.size=1000000",
                                      "model.attention.hidden_size=100000000", "model.decoder.hidden_size=1e9"])
def test_sizes_are_bounded(workdir, override):
    from nmt.errors import RecipeError
    from nmt.recipe import load_recipe

    key = override.partition("=")[0]
    with pytest.raises(RecipeError, match=f"^override {key}: input should be less than or equal to"):
        load_recipe("r.yaml", [override], check_data=False)


# --- 8. finite floats -------------------------------------------------------------------------

def test_infinite_length_ratio(workdir, capsys):
    message = check(capsys, "infinite validation length ratio", "train", "r.yaml", "data.valid_max_length_ratio=.inf")
    assert message == "nmt: override data.valid_max_length_ratio: input should be a finite number, got inf"


@pytest.mark.parametrize("override", ["optim.lr=.inf", "optim.weight_decay=.inf", "optim.min_lr=.nan",
                                      "early_stopping.min_delta=.inf"])
def test_optimiser_floats_are_finite(workdir, override):
    from nmt.errors import RecipeError
    from nmt.recipe import load_recipe

    key = override.partition("=")[0]
    with pytest.raises(RecipeError, match=f"^override {key}: input should be a finite number"):
        load_recipe("r.yaml", [override], check_data=False)
