"""Installed plugins that fail to load and plugins that change torch's default dtype.

A broken ``nmt.plugins`` entry point is written as a real distribution (a ``.dist-info`` with its
``entry_points.txt``) in a temporary folder put on ``sys.path``, so ``importlib.metadata`` finds it the
way it finds an installed package.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from nmt import registry
from nmt.errors import PluginError
from nmt.recipe import validate_recipe

from conftest import reverse_recipe, write_reverse_corpus

NMT = Path(sys.executable).parent / "nmt"
TREE = Path(registry.__file__).resolve().parents[1]  # the nmt under test, also in the nmt command's process

pytestmark = pytest.mark.usefixtures("private_registry")


def write_distribution(site: Path, package: str, body: str) -> Path:
    """An installed distribution ``package`` 0.1 whose entry point ``evil`` names ``package.plugin``."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("")
    (site / package / "plugin.py").write_text(textwrap.dedent(body))
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[nmt.plugins]\nevil = {package}.plugin\n")
    return site


def discover_again(monkeypatch, site: Path) -> None:
    """Discover with ``site`` on sys.path (modules imported already, the built-ins, are not imported again)."""
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_discovered", False)
    registry.discover()


MISSING_EXTENSION = """
    import nmt
    from nmt_builtin.rnn_encoders import GRUEncoder

    @nmt.register("encoder", "evil_enc")
    class EvilEncoder(GRUEncoder):
        '''Registered, then the module fails.'''

    import some_missing_cuda_extension_for_nmt_tests
"""


def test_a_broken_entry_point_is_a_warning_not_an_error(tmp_path, monkeypatch, capsys):
    """Before: PluginError from discover(), so every command (nmt plugins, a built-in run's translate) exited 2."""
    discover_again(monkeypatch, write_distribution(tmp_path / "site", "nmt_test_evilpkg", MISSING_EXTENSION))

    err = capsys.readouterr().err
    assert err == ("nmt: warning: entry point 'evil' (nmt_test_evilpkg 0.1): cannot import nmt_test_evilpkg.plugin: "
                   "ModuleNotFoundError: No module named 'some_missing_cuda_extension_for_nmt_tests'; "
                   "its plugins are unavailable\n")
    [broken] = registry.broken_entry_points()
    assert (broken.name, broken.origin) == ("evil", "nmt_test_evilpkg 0.1")
    assert "evil_enc" not in registry.names("encoder")  # what it registered before failing is withdrawn
    assert registry.get("encoder", "gru").__name__ == "GRUEncoder"  # the built-ins work
    data = write_reverse_corpus(tmp_path / "data", n_train=20, n_dev=5)
    recipe = validate_recipe(reverse_recipe(data), tmp_path / "r.yaml", check_data=False)
    assert recipe.task_cls.__name__ == "Seq2SeqTask"


def test_an_unknown_name_mentions_the_broken_entry_point(tmp_path, monkeypatch):
    discover_again(monkeypatch, write_distribution(tmp_path / "site", "nmt_test_evilpkg2", MISSING_EXTENSION))
    with pytest.raises(PluginError) as info:
        registry.get("encoder", "evil_enc", where="recipe.yaml: model.encoder.name")
    assert info.value.message == (
        "recipe.yaml: model.encoder.name: unknown encoder 'evil_enc'; known: gru, lstm, transformer; "
        "entry point 'evil' (nmt_test_evilpkg2 0.1) may provide it but failed to load: cannot import "
        "nmt_test_evilpkg2.plugin: ModuleNotFoundError: No module named 'some_missing_cuda_extension_for_nmt_tests'")


def test_a_broken_contract_in_an_entry_point_is_a_warning_too(tmp_path, monkeypatch, capsys):
    site = write_distribution(tmp_path / "site", "nmt_test_badcontract", """
        import torch, nmt

        @nmt.register("encoder", "no_config")
        class NoConfig(torch.nn.Module):
            '''No Config.'''
    """)
    discover_again(monkeypatch, site)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("nmt: warning: entry point 'evil' (nmt_test_badcontract 0.1): register('encoder', "
                          "'no_config'): NoConfig does not meet the encoder contract")


def test_the_cli_keeps_working_with_a_broken_entry_point(tmp_path):
    site = write_distribution(tmp_path / "site", "nmt_test_evilcli", MISSING_EXTENSION)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (site, TREE, TREE / "plugins")))}
    done = subprocess.run([str(NMT), "plugins"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "nmt: warning: entry point 'evil' (nmt_test_evilcli 0.1): cannot import nmt_test_evilcli.plugin: "
        "ModuleNotFoundError: No module named 'some_missing_cuda_extension_for_nmt_tests'; its plugins are unavailable"]
    assert "bahdanau" in done.stdout


DTYPE_CHANGE = """
    import torch
    torch.set_default_dtype(torch.float64)
"""


def test_a_plugin_file_changing_the_default_dtype_is_named(tmp_path):
    """Before: accepted; training then failed with 'expected m1 and m2 to have the same dtype' (exit 1)."""
    plugin = tmp_path / "dtype.py"
    plugin.write_text(textwrap.dedent(DTYPE_CHANGE) + textwrap.dedent("""
        import nmt
        from nmt_builtin.rnn_encoders import GRUEncoder

        @nmt.register("encoder", "f64")
        class F64(GRUEncoder):
            '''float64'''
    """))
    with pytest.raises(PluginError) as info:
        registry.load_plugin(str(plugin))
    assert info.value.message == (f"{plugin}: changed torch's default dtype to float64 when imported "
                                  "(torch.set_default_dtype); nmt builds float32 models: set trainer.precision "
                                  "instead, or the dtype of the plugin's own tensors")
    assert torch.get_default_dtype() == torch.float32  # restored
    assert "f64" not in registry.names("encoder")
    assert str(plugin.resolve()) not in registry.loaded_plugins()


def test_an_entry_point_changing_the_default_dtype_is_broken(tmp_path, monkeypatch, capsys):
    discover_again(monkeypatch, write_distribution(tmp_path / "site", "nmt_test_dtypepkg", DTYPE_CHANGE))
    assert torch.get_default_dtype() == torch.float32
    assert capsys.readouterr().err == ("nmt: warning: entry point 'evil' (nmt_test_dtypepkg 0.1): changed torch's "
                                       "default dtype to float64 when imported (torch.set_default_dtype); nmt builds "
                                       "float32 models: set trainer.precision instead, or the dtype of the plugin's "
                                       "own tensors; its plugins are unavailable\n")


def test_a_module_plugin_changing_the_default_dtype_is_named(tmp_path, monkeypatch):
    (tmp_path / "nmt_test_dtype_module.py").write_text(textwrap.dedent(DTYPE_CHANGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"^nmt_test_dtype_module: changed torch's default dtype to float64"):
        registry.load_plugin("nmt_test_dtype_module")
    assert torch.get_default_dtype() == torch.float32
