"""A run directory records the local plugins it was trained with, and says how to load them.

``--plugin`` left no trace in the run (recipe.yaml said ``plugins: []``), and a recipe's ``plugins:``
entry was kept relative to the recipe's folder, which the run does not know.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from nmt import registry, runs
from nmt.errors import RunError

from conftest import reverse_recipe, write_reverse_corpus

NMT = Path(sys.executable).parent / "nmt"
TREE = Path(registry.__file__).resolve().parents[1]  # the nmt under test, also in the nmt command's process

pytestmark = pytest.mark.usefixtures("private_registry")


def write_encoder_plugin(path: Path, name: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f'''
        import nmt
        from nmt_builtin.rnn_encoders import GRUEncoder

        @nmt.register("encoder", "{name}")
        class PluginEncoder(GRUEncoder):
            """A GRU under another name."""
    '''))
    return path


def write_plugin_run(tmp_path: Path, name: str, recipe_plugins: list[str] = ()) -> tuple[Path, Path]:
    """A run directory (run.json, recipe.yaml) of a recipe whose encoder ``name`` comes from a plugin file
    in ``tmp_path/plugins``, loaded the way nmt train loads it (``recipe_plugins`` relative to the recipe)."""
    plugin = write_encoder_plugin(tmp_path / "plugins" / "my_encoder.py", name)
    data = write_reverse_corpus(tmp_path / "data", n_train=20, n_dev=5)
    raw = reverse_recipe(data, plugins=list(recipe_plugins), model={"encoder": {"name": name, "hidden_size": 8}})
    if recipe_plugins:
        for spec in recipe_plugins:
            registry.load_plugin(spec, base=tmp_path / "plugins")
    else:
        registry.load_plugin("my_encoder.py", base=tmp_path / "plugins")  # as --plugin, from that folder
    run_dir = tmp_path / "run"
    runs.write_run(run_dir, raw)
    return run_dir, plugin


def forget(name: str, monkeypatch) -> None:
    """As a new process without the plugin: its name unknown, nothing loaded."""
    monkeypatch.setattr(registry, "_entries", {k: v for k, v in registry._entries.items() if k[1] != name})
    monkeypatch.setattr(registry, "_loaded", {}, raising=False)


def test_the_run_records_the_absolute_path_of_a_plugin_given_with_the_option(tmp_path, monkeypatch):
    """Before: run.json held format and version only, and loading said only 'unknown encoder ...; known: ...'."""
    run_dir, plugin = write_plugin_run(tmp_path, "recorded_enc")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["plugins"] == [str(plugin.resolve())]

    forget("recorded_enc", monkeypatch)
    with pytest.raises(RunError) as error:
        runs.load_run_recipe(run_dir)
    assert error.value.message == (
        f"{run_dir}/recipe.yaml: model.encoder.name: unknown encoder 'recorded_enc'; known: gru, lstm, transformer "
        f"(the run was trained with plugin {plugin.resolve()}; a run directory does not load code by itself: "
        f"pass nmt --plugin {plugin.resolve()})")


def test_a_recipe_plugin_is_recorded_resolved_not_as_written(tmp_path, monkeypatch):
    """Before: the hint named 'my_encoder.py', relative to the recipe's folder, which fails from anywhere else."""
    run_dir, plugin = write_plugin_run(tmp_path, "recipe_enc", recipe_plugins=["my_encoder.py"])
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["plugins"] == ["my_encoder.py"]  # as written
    forget("recipe_enc", monkeypatch)
    with pytest.raises(RunError, match=f"pass nmt --plugin {plugin.resolve()}\\)$"):
        runs.load_run_recipe(run_dir)


def test_the_hint_is_left_out_once_the_plugin_is_loaded(tmp_path, monkeypatch):
    run_dir, plugin = write_plugin_run(tmp_path, "loaded_enc")
    assert runs.load_run_recipe(run_dir).components["model.encoder"].cls.registered_name == "loaded_enc"


def test_a_run_without_recorded_plugins_loads_as_before(tmp_path):
    data = write_reverse_corpus(tmp_path / "data", n_train=20, n_dev=5)
    run_dir = tmp_path / "old"
    runs.write_run(run_dir, reverse_recipe(data))
    (run_dir / "run.json").write_text(json.dumps({"format": runs.RUN_FORMAT, "nmt_version": "0.0.9"}))
    assert runs.load_run_recipe(run_dir).spec.task == "seq2seq"


@pytest.mark.parametrize("recorded", ["not a list", [3, None, "bad\nline", ""]])
def test_a_malformed_plugins_field_is_ignored(recorded, tmp_path):
    data = write_reverse_corpus(tmp_path / "data", n_train=20, n_dev=5)
    run_dir = tmp_path / "odd"
    runs.write_run(run_dir, reverse_recipe(data, model={"encoder": {"name": "nowhere_enc"}}))
    (run_dir / "run.json").write_text(json.dumps({"format": runs.RUN_FORMAT, "plugins": recorded}))
    with pytest.raises(Exception) as error:
        runs.load_run_recipe(run_dir)
    assert error.value.message.endswith("unknown encoder 'nowhere_enc'; known: gru, lstm, transformer")


def test_following_the_hint_from_another_folder_loads_the_recipe(tmp_path, monkeypatch):
    run_dir, plugin = write_plugin_run(tmp_path, "cli_enc", recipe_plugins=["my_encoder.py"])
    (tmp_path / "in.txt").write_text("a1 b2\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (TREE, TREE / "plugins")))}
    command = [str(NMT), "translate", "--run", str(run_dir), "-i", str(tmp_path / "in.txt")]
    without = subprocess.run(command, capture_output=True, text=True, env=env, cwd=elsewhere, timeout=120)
    assert without.returncode == 2 and without.stderr.count("\n") == 1, without.stderr
    hint = without.stderr.rstrip().rpartition("pass nmt ")[2].rstrip(")")
    assert hint == f"--plugin {plugin.resolve()}"
    followed = subprocess.run([str(NMT), *hint.split(), *command[1:]], capture_output=True, text=True, env=env,
                              cwd=elsewhere, timeout=120)
    # the recipe loads now; this run was never trained, so what stops it is what training would have written
    assert followed.returncode == 2 and "unknown encoder" not in followed.stderr, followed.stderr
    assert f"{run_dir}/fitted/" in followed.stderr and "not found" in followed.stderr, followed.stderr
