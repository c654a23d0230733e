"""The plugin contracts (nmt/contracts.py): registration rejects a malformed plugin with one clear
message, the built-ins and the third-party fixture meet theirs, attention keeps no per-batch state,
and every plugin section of a recipe is resolved once, at validation."""
from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel
from torch import nn

import nmt
import nmt.recipe
from nmt import registry
from nmt.cli import main
from nmt.contracts import EncoderOutput, check_plugin
from nmt.errors import PluginError
from nmt.recipe import Component, validate_recipe

from conftest import reverse_recipe, write_recipe, write_reverse_corpus

FIXTURE_PLUGIN = Path(__file__).parent / "fixtures" / "nmt-extra-plugin" / "nmt_extra_plugin" / "__init__.py"


@pytest.fixture(autouse=True)
def private_registry(monkeypatch):
    """Each test registers into a copy of the registry, so nothing it adds outlives it."""
    registry.discover()
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))


class Options(BaseModel):
    """Recipe options of the test plugins."""


def encoder_class(**members) -> type:
    """An encoder class meeting the contract, with ``members`` replaced (None: removed)."""
    def __init__(self, config, input_size):
        nn.Module.__init__(self)
        self.output_size = input_size

    def forward(self, inputs, lengths):
        mask = torch.arange(inputs.shape[1])[None] < lengths[:, None]
        return EncoderOutput(inputs, mask, inputs.mean(1))

    body = {"__doc__": "A test encoder.", "Config": Options, "__annotations__": {"output_size": int},
            "__init__": __init__, "forward": forward}
    body.update(members)
    return type("TestEncoder", (nn.Module,), {k: v for k, v in body.items() if v is not None})


def test_a_conforming_encoder_registers():
    cls = nmt.register("encoder", "test_conforming")(encoder_class())
    assert registry.get("encoder", "test_conforming") is cls


@pytest.mark.parametrize("members,problem", [
    ({"Config": None}, "no Config class (a pydantic BaseModel of its recipe options)"),
    ({"Config": dict}, "no Config class"),
    ({"__annotations__": {}}, "no output_size (declare `output_size: int` and set it in __init__"),
    ({"forward": None}, "no forward(inputs, lengths) method"),
    ({"forward": lambda self, inputs: inputs}, "forward must take (inputs, lengths), got forward(self, inputs)"),
    ({"forward": lambda self, inputs, lengths, extra: inputs}, "forward must take (inputs, lengths)"),
    ({"__init__": lambda self, config: None}, "__init__ must take (config, input_size)"),
])
def test_registration_rejects_a_malformed_encoder(members, problem):
    with pytest.raises(PluginError) as info:
        nmt.register("encoder", "test_malformed")(encoder_class(**members))
    message = info.value.message
    assert message.startswith("register('encoder', 'test_malformed'): TestEncoder does not meet the encoder "
                              "contract (nmt.contracts): ")
    assert problem in message
    assert "test_malformed" not in registry.names("encoder")


def test_an_encoder_must_be_a_torch_module():
    class NotAModule:
        """Plain object."""
        Config = Options
        output_size = 4

    assert check_plugin("encoder", NotAModule) == "an encoder must subclass torch.nn.Module"
    assert check_plugin("attention", NotAModule) == "an attention must subclass torch.nn.Module"


def test_registration_rejects_malformed_attention_decoder_and_tokenizer():
    class ThreeArgumentAttention(nn.Module):
        """Forgets the mask."""
        Config = Options

        def __init__(self, config, query_size, key_size):
            super().__init__()

        def prepare(self, keys):
            return keys

        def forward(self, query, keys, values):
            return values.mean(1), None

    with pytest.raises(PluginError, match=r"forward must take \(query, keys, values, mask\)"):
        nmt.register("attention", "test_no_mask")(ThreeArgumentAttention)

    class HalfDecoder(nn.Module):
        """No init_state, no select_memory."""
        Config = Options
        output_size: int

        def __init__(self, config, input_size, encoder_output_size, attention_factory):
            super().__init__()

        def prepare_memory(self, encoded): ...

        def step(self, input_emb, state, memory): ...

        def select_state(self, state, index): ...

    with pytest.raises(PluginError, match="missing methods: init_state, select_memory$"):
        nmt.register("decoder", "test_half")(HalfDecoder)

    class NotATokenizer:
        """No base class."""
        Config = Options

    with pytest.raises(PluginError, match="a tokenizer must subclass nmt.data.tokenizer.Tokenizer"):
        nmt.register("tokenizer", "test_not_a_tokenizer")(NotATokenizer)


def test_a_malformed_plugin_file_is_one_line_from_the_cli(tmp_path, capsys):
    plugin = tmp_path / "bad_encoder.py"
    plugin.write_text(textwrap.dedent('''
        import torch
        import nmt

        @nmt.register("encoder", "bad_encoder")
        class BadEncoder(torch.nn.Module):
            """An encoder without a Config."""
            output_size = 8
    '''))
    assert main(["--plugin", str(plugin), "plugins"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{plugin}: register('encoder', 'bad_encoder'): BadEncoder does not meet the encoder contract" in err


def test_builtins_and_the_third_party_fixture_meet_their_contracts():
    for entry in registry.entries():
        assert check_plugin(entry.kind, entry.cls) is None, (entry.kind, entry.name)
    spec = importlib.util.spec_from_file_location("nmt_extra_plugin_contract_check", FIXTURE_PLUGIN)
    module = importlib.util.module_from_spec(spec)
    registry._entries.pop(("attention", "scaled_dot"), None)
    spec.loader.exec_module(module)  # registers attention/scaled_dot: the check passes
    assert check_plugin("attention", module.ScaledDotAttention) is None


@pytest.mark.parametrize("name", ["bahdanau", "luong"])
def test_attention_keeps_no_per_batch_state(name):
    """Two batches of different sizes leave the module's attributes exactly as they were."""
    cls = registry.get("attention", name)
    attention = cls(cls.Config(), 6, 6)
    before = {k: v for k, v in vars(attention).items() if k != "_modules"}
    for batch, length in ((2, 5), (3, 4)):
        keys = torch.randn(batch, length, 6)
        context, weights = attention(torch.randn(batch, 6), attention.prepare(keys), keys,
                                     torch.ones(batch, length, dtype=torch.bool))
        assert context.shape == (batch, 6) and weights.shape == (batch, length)
    after = {k: v for k, v in vars(attention).items() if k != "_modules"}
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] or after[k] == before[k] for k in before)
    assert not list(attention.buffers())


def test_every_plugin_section_is_resolved_once_at_validation(tmp_path, monkeypatch):
    data = write_reverse_corpus(tmp_path / "data", n_train=30, n_dev=5)
    calls: list[str] = []
    resolve = nmt.recipe.component
    monkeypatch.setattr(nmt.recipe, "component", lambda kind, section, key, *a: calls.append(key) or
                        resolve(kind, section, key, *a))
    recipe = validate_recipe(reverse_recipe(data), tmp_path / "reverse.yaml")
    assert sorted(calls) == ["data.tokenizer", "model.attention", "model.decoder", "model.encoder"]
    assert all(isinstance(c, Component) for c in recipe.components.values())
    assert recipe.components["model.encoder"].cls is registry.get("encoder", "gru")
    assert recipe.components["model.encoder"].config.hidden_size == 64
    assert recipe.raw["model"]["encoder"] == {"name": "gru", "hidden_size": 64}  # the raw section is kept

    lookups: list[tuple] = []  # building the task, training its tokenizer: no further lookup
    monkeypatch.setattr(registry, "get", lambda *a, **k: lookups.append(a))
    calls.clear()
    recipe.task_cls.prepare_run(recipe, tmp_path / "run")
    recipe.task_cls.from_run(recipe, tmp_path / "run")
    assert calls == [] and lookups == []


def test_an_override_naming_an_unknown_plugin_names_the_override(tmp_path):
    data = write_reverse_corpus(tmp_path / "data", n_train=30, n_dev=5)
    path = write_recipe(tmp_path / "reverse.yaml", reverse_recipe(data))
    with pytest.raises(PluginError) as info:
        nmt.recipe.load_recipe(path, ["model.encoder={name: transformr}"])
    assert info.value.message == ("override model.encoder.name: unknown encoder 'transformr'; "
                                  "did you mean 'transformer'?")
