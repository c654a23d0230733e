"""The plugin registry: register, get, names, close-match suggestions and explicit local plugins."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import nmt
from nmt import registry
from nmt.cli import main
from nmt.errors import PluginError
from nmt_builtin.bahdanau import BahdanauAttention


@pytest.fixture(autouse=True)
def private_registry(monkeypatch):
    """Each test registers into a copy of the registry, so nothing it adds outlives it."""
    registry.discover()
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))


# A base per kind that meets its contract (nmt.contracts), so a local plugin only has to name it.
CONFORMING_BASES = {"encoder": "nmt_builtin.rnn_encoders.GRUEncoder", "decoder": "nmt_builtin.rnn_decoder.RNNDecoder",
                    "attention": "nmt_builtin.bahdanau.BahdanauAttention",
                    "tokenizer": "nmt_builtin.simple_tokenizers.WhitespaceTokenizer"}


def write_plugin(path: Path, kind: str, name: str, body: str = "") -> Path:
    module, _, base = CONFORMING_BASES.get(kind, "torch.nn.Module").rpartition(".")
    path.write_text(textwrap.dedent(f'''
        import nmt
        from {module} import {base}

        @nmt.register("{kind}", "{name}")
        class LocalThing({base}):
            """A plugin defined in a local file."""
        {body}
    '''))
    return path


def test_builtins_are_discovered_through_entry_points():
    assert {"bahdanau", "luong"} <= set(registry.names("attention"))
    assert registry.names("attention") == sorted(registry.names("attention"))
    assert {"gru", "lstm"} <= set(registry.names("encoder"))
    entry = next(e for e in registry.entries() if (e.kind, e.name) == ("attention", "bahdanau"))
    assert entry.origin == f"nmt {nmt.__version__}"
    assert entry.description.startswith("Additive")
    assert registry.get("attention", "bahdanau") is entry.cls
    assert entry.cls.registered_name == "bahdanau"


def test_register_then_get():
    @nmt.register("attention", "unit_test_attention")
    class UnitTestAttention(BahdanauAttention):
        """One line.

        More text."""

    assert registry.get("attention", "unit_test_attention") is UnitTestAttention
    assert "unit_test_attention" in registry.names("attention")
    entry = next(e for e in registry.entries() if e.name == "unit_test_attention")
    assert entry.description == "One line."
    assert entry.origin == __file__
    assert nmt.register("attention", "unit_test_attention")(UnitTestAttention) is UnitTestAttention  # idempotent


def test_unknown_name_suggests_the_closest():
    with pytest.raises(PluginError) as info:
        registry.get("attention", "bahdanu", where="recipe.yaml: model.attention.name")
    assert info.value.message == ("recipe.yaml: model.attention.name: unknown attention 'bahdanu'; "
                                  "did you mean 'bahdanau'?")
    assert info.value.exit_code == 2


def test_unknown_name_without_a_close_match_lists_the_known_ones():
    with pytest.raises(PluginError, match=r"unknown encoder 'wavenet'; known: (\w+, )*gru, lstm(, \w+)*$"):
        registry.get("encoder", "wavenet")
    with pytest.raises(PluginError, match=r"unknown widget 'x'; known: none$"):
        registry.get("widget", "x")


def test_duplicate_registration_names_both_origins():
    with pytest.raises(PluginError) as info:
        @nmt.register("attention", "bahdanau")
        class Impostor(torch.nn.Module):
            """Not the real one."""

    message = info.value.message
    assert message.startswith("attention 'bahdanau': registered twice: ")
    assert f"by nmt {nmt.__version__} (nmt_builtin.bahdanau.BahdanauAttention)" in message
    assert f"by {__file__} (" in message and "Impostor" in message
    assert registry.get("attention", "bahdanau").__name__ == "BahdanauAttention"  # the first one stays


def test_register_refuses_an_unknown_kind():
    """A typo in the kind would register a class that no recipe can reach: an error, listing the kinds."""
    with pytest.raises(PluginError) as info:
        nmt.register("atention", "mine")
    assert info.value.message == ("register('atention', 'mine'): unknown plugin kind "
                                  "(known: encoder, decoder, attention, task, tokenizer); did you mean 'attention'?")
    with pytest.raises(PluginError, match=r"unknown plugin kind \(known: encoder, .*\)$"):
        nmt.register("widget", "mine")
    with pytest.raises(PluginError, match="the name must be 1 to 64 letters, digits or _ . \\+ -"):
        nmt.register("encoder", "")
    assert not [e for e in registry.entries() if e.name == "mine"]


def test_register_error_from_a_plugin_file_names_the_file(tmp_path):
    plugin = write_plugin(tmp_path / "typo.py", "decodr", "mine")
    with pytest.raises(PluginError) as info:
        registry.load_plugin(str(plugin))
    assert info.value.message.startswith(f"{plugin}: register('decodr', 'mine'): unknown plugin kind")
    assert info.value.message.endswith("did you mean 'decoder'?")


def test_unknown_name_is_quoted_short():
    with pytest.raises(PluginError) as info:
        registry.get("encoder", "x" * 100_000)
    assert len(info.value.message) < 200


def test_load_plugin_from_a_file(tmp_path):
    path = write_plugin(tmp_path / "my_plugin.py", "attention", "from_a_file")
    registry.load_plugin(str(path))
    entry = next(e for e in registry.entries() if e.name == "from_a_file")
    assert entry.origin == str(path)
    assert entry.description == "A plugin defined in a local file."
    registry.load_plugin(str(path))  # loading the same file again is a no-op, not a duplicate


def test_load_plugin_relative_to_a_base_directory(tmp_path):
    write_plugin(tmp_path / "beside_recipe.py", "encoder", "beside_recipe")
    registry.load_plugin("beside_recipe.py", base=tmp_path)
    assert "beside_recipe" in registry.names("encoder")


def test_load_plugin_from_a_package_directory(tmp_path):
    (tmp_path / "my_package").mkdir()
    write_plugin(tmp_path / "my_package" / "__init__.py", "decoder", "from_a_package")
    registry.load_plugin(str(tmp_path / "my_package"))
    assert "from_a_package" in registry.names("decoder")


def test_load_plugin_by_module_name(tmp_path, monkeypatch):
    write_plugin(tmp_path / "nmt_test_module_plugin.py", "tokenizer", "from_a_module")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.load_plugin("nmt_test_module_plugin")
    entry = next(e for e in registry.entries() if e.name == "from_a_module")
    assert entry.origin == "nmt_test_module_plugin"


@pytest.mark.parametrize("spec,body,expected", [
    ("missing.py", None, "missing.py: plugin file not found"),
    ("no_such_module_for_nmt", None, "no_such_module_for_nmt: plugin module not found"),
    ("broken.py", "raise ValueError('bad plugin')", "broken.py: cannot load plugin: ValueError: bad plugin"),
    ("syntax.py", "def (", "syntax.py: cannot load plugin: SyntaxError"),
    ("nmt_test_broken_module", "raise ValueError('bad module')",
     "nmt_test_broken_module: cannot load plugin: ValueError: bad module"),
    ("nmt_test_missing_dependency", "import no_such_dependency_for_nmt",
     "nmt_test_missing_dependency: cannot load plugin: ModuleNotFoundError: No module named 'no_such_dependency"),
])
def test_load_plugin_errors(spec, body, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    if body is not None:
        (tmp_path / (spec if spec.endswith(".py") else spec + ".py")).write_text(body + "\n")
    before = registry.entries()
    with pytest.raises(PluginError) as info:
        registry.load_plugin(spec, base=tmp_path)
    assert expected in info.value.message
    assert registry.entries() == before


@pytest.mark.parametrize("make, expected", [
    (lambda d: (d / "notpy.txt").write_text("x = 1\n") and "notpy.txt", "notpy.txt: not a Python file (.py) or a package directory"),
    (lambda d: os.mkfifo(d / "fifo.py") or "fifo.py", "fifo.py: not a regular file; expected a .py file or a package directory"),
    (lambda d: (d / "pkg").mkdir() or "pkg", "pkg: a directory without __init__.py; expected a .py file or a package directory"),
    (lambda d: (d / "exits.py").write_text("import sys\nsys.exit(3)\n") and "exits.py", "exits.py: cannot load plugin: SystemExit: 3"),
], ids=["not-python", "fifo", "directory-without-init", "sys-exit"])
def test_a_plugin_path_that_is_no_python_file_is_one_line_and_exit_2(make, expected, tmp_path):
    """Before: an AttributeError from importlib (exit 1), a FIFO waited for a writer forever (so a process
    with a timeout here), and a plugin's sys.exit(3) ended nmt with exit 3 and no message."""
    spec = make(tmp_path)
    done = subprocess.run([sys.executable, "-m", "nmt.cli", "--plugin", spec, "plugins"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, (done.returncode, done.stderr)
    assert done.stderr.startswith("nmt: ") and done.stderr.rstrip().endswith(expected), done.stderr


def test_cli_plugin_option_lists_the_file_as_origin(tmp_path, capsys):
    path = write_plugin(tmp_path / "cli_plugin.py", "attention", "from_the_cli")
    assert main(["--plugin", str(path), "plugins"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "from_the_cli" in line)
    assert row.split()[:3] == ["attention", "from_the_cli", str(path)]
    assert row.rstrip().endswith("A plugin defined in a local file.")
    assert f"nmt {nmt.__version__}" in out  # the built-ins are listed alongside
