"""What registration and building check of a plugin: names and objects registered, the constructor
calls and output sizes the builders use, what training reads of a task and recipe keys a
plugin's Config does not declare. Each failure is one line naming the plugin."""
from __future__ import annotations

import textwrap

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

import nmt
from nmt import registry
from nmt.cli import main
from nmt.contracts import EncoderDecoderBuilder, EncoderOutput, build_encoder
from nmt.errors import PluginError, RecipeError
from nmt.recipe import Component, component, load_recipe
from nmt.tasks.seq2seq import Seq2SeqTask
from nmt_builtin.bahdanau import BahdanauAttention
from nmt_builtin.rnn_decoder import RNNDecoder
from nmt_builtin.rnn_encoders import GRUEncoder

from conftest import reverse_recipe, write_recipe, write_reverse_corpus

pytestmark = pytest.mark.usefixtures("private_registry")


# --- names and objects ---------------------------------------------------------------

def test_registering_an_instance_is_one_line(tmp_path, capsys):
    """Before: five lines, the module's repr, then 'expected a class, got GRUEncoder'."""
    plugin = tmp_path / "instance.py"
    plugin.write_text(textwrap.dedent("""
        from nmt.registry import register
        from nmt_builtin.rnn_encoders import GRUEncoder
        register("encoder", "inst")(GRUEncoder(GRUEncoder.Config(), 4))
    """))
    assert main(["--plugin", str(plugin), "plugins"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"nmt: {plugin}: register('encoder', 'inst'): expected a class to decorate, "
                          "got a GRUEncoder object: GRUEncoder(")
    assert len(err) < 300


@pytest.mark.parametrize("name", ["two\nlines", "has space", "x" * 65, "quote'd", "tab\there", "é"])
def test_a_name_that_breaks_the_plugins_table_is_refused(name):
    """Before: accepted, and nmt plugins printed a row split over lines or hundreds of columns wide."""
    with pytest.raises(PluginError) as info:
        nmt.register("encoder", name)
    assert "\n" not in info.value.message
    assert info.value.message.endswith("the name must be 1 to 64 letters, digits or _ . + - "
                                       "(it is written in recipes and listed by nmt plugins)")


def test_every_builtin_name_is_a_valid_name():
    for entry in registry.entries():
        assert registry.NAME_PATTERN.fullmatch(entry.name), entry
    for name in ("a", "my-plugin.v2+cuda", "x" * 64):
        nmt.register("encoder", name)(type(f"Enc{len(name)}", (GRUEncoder,), {"__doc__": "Fine."}))


# --- constructor calls and output sizes ----------------------------------------------

def test_an_encoder_init_without_the_keyword_the_builder_passes_is_refused():
    """Before: (config, size) passed registration, then TypeError 'unexpected keyword argument input_size' at build."""
    class PosNames(GRUEncoder):
        """Takes (config, size)."""

        def __init__(self, config, size):
            super().__init__(config, size)

    with pytest.raises(PluginError) as info:
        nmt.register("encoder", "posnames")(PosNames)
    assert info.value.message.startswith("register('encoder', 'posnames'): ")
    assert info.value.message.endswith(
        "PosNames does not meet the encoder contract (nmt.contracts): __init__ must take (config, input_size), "
        "called as PosNames(config, input_size=...); got __init__(self, config, size)")


def test_an_encoder_init_with_keyword_only_input_size_is_accepted_and_builds():
    """Before: refused at registration ('__init__ must take (config, input_size)'), though the builder calls it so."""
    @nmt.register("encoder", "kwonly")
    class KwOnly(GRUEncoder):
        """input_size keyword-only."""

        def __init__(self, config, *, input_size):
            super().__init__(config, input_size)

    encoder = build_encoder(Component(KwOnly, KwOnly.Config(hidden_size=4)), input_size=3)
    assert encoder.output_size == 8


def test_a_decoder_init_without_the_keywords_the_builder_passes_is_refused():
    class Renamed(RNNDecoder):
        """Calls the factory by another name."""

        def __init__(self, config, input_size, encoder_output_size, factory):
            super().__init__(config, input_size, encoder_output_size, factory)

    with pytest.raises(PluginError, match=r"__init__ must take \(config, input_size, encoder_output_size, "
                                          r"attention_factory\), called as Renamed\(config, input_size=\.\.\., "):
        nmt.register("decoder", "renamed")(Renamed)


def sized_encoder(size=None, set_it=True) -> type:
    class Sized(nn.Module):
        """Sets output_size to a given value."""
        output_size: int

        class Config(BaseModel):
            pass

        def __init__(self, config, input_size):
            super().__init__()
            if set_it:
                self.output_size = size

        def forward(self, inputs, lengths):
            return EncoderOutput(inputs, lengths > 0, inputs.mean(1))

    return Sized


@pytest.mark.parametrize("size", [None, 0, -3, 16.5, True, "16", 10**9])
def test_an_encoder_output_size_that_is_no_positive_int_names_the_plugin(size):
    """Before: torch errors from the next layer (exit 1), or 10**9 blamed on the recipe's sizes."""
    cls = nmt.register("encoder", "sized")(sized_encoder(size))
    with pytest.raises(PluginError) as info:
        build_encoder(Component(cls, cls.Config()), input_size=4)
    assert info.value.message == (f"encoder 'sized' ({__file__}): output_size (the "
                                  f"size D of its states) must be a positive integer up to 1,048,576, got {size!r}")


def test_an_encoder_output_size_never_set_names_the_plugin():
    """Before: AttributeError "'NoOutputSize' object has no attribute 'output_size'" (exit 1)."""
    cls = nmt.register("encoder", "unset")(sized_encoder(set_it=False))
    with pytest.raises(PluginError, match=r"^encoder 'unset' \(.*\.py\): output_size was not set in __init__ "
                                          r"\(the size D of its states\)$"):
        build_encoder(Component(cls, cls.Config()), input_size=4)


def test_a_decoder_output_size_is_checked_too():
    class ZeroDecoder(RNNDecoder):
        """Reports output_size 0."""

        def __init__(self, config, input_size, encoder_output_size, attention_factory):
            super().__init__(config, input_size, encoder_output_size, attention_factory)
            self.output_size = 0

    nmt.register("decoder", "zero")(ZeroDecoder)
    builder = EncoderDecoderBuilder(Component(GRUEncoder, GRUEncoder.Config(hidden_size=4)),
                                    Component(BahdanauAttention, BahdanauAttention.Config()),
                                    Component(ZeroDecoder, ZeroDecoder.Config(hidden_size=4)))
    encoder = builder.build_encoder(3)
    with pytest.raises(PluginError, match=r"^decoder 'zero' \(.*\.py\): output_size \(the size H of each "
                                          r"step's output\) must be a positive integer up to 1,048,576, got 0$"):
        builder.build_decoder(3, encoder)


def test_an_oversized_plugin_output_size_is_blamed_on_the_plugin_in_a_recipe(tmp_path):
    """Before: 'model: 96,000,010,808 parameters even with a vocabulary of 8 ... (model.embedding.size 16, ...)'."""
    nmt.register("encoder", "huge")(sized_encoder(10**9))
    data = write_reverse_corpus(tmp_path / "data", n_train=20, n_dev=5)
    path = write_recipe(tmp_path / "r.yaml", reverse_recipe(data, model={"encoder": {"name": "huge"}}))
    with pytest.raises(PluginError, match=r"^encoder 'huge' \(.*\): output_size .*got 1000000000$"):
        load_recipe(path)


# --- tasks ---------------------------------------------------------------------------

def test_a_task_that_is_no_task_subclass_is_refused():
    """Before: registered, then "AttributeError: type object 'BadTask' has no attribute 'monitor'" in training."""
    class BadTask:
        """The declared parts and nothing else."""

        class DataConfig(BaseModel):
            pass

        class ModelConfig(BaseModel):
            pass

        @classmethod
        def check_recipe(cls, recipe, check_data=True):
            pass

        @classmethod
        def from_run(cls, recipe, run_dir):
            return cls()

    with pytest.raises(PluginError) as info:
        nmt.register("task", "badtask")(BadTask)
    assert info.value.message.startswith("register('task', 'badtask'): ")
    assert info.value.message.endswith(
        "BadTask does not meet the task contract (nmt.contracts): a task must subclass "
        "nmt.tasks.base.Task (a LightningModule; training reads its monitor, monitor_mode, prepare_run, from_run "
        "and make_datamodule)")


@pytest.mark.parametrize("members,problem", [
    ({"monitor_mode": "up"}, "monitor_mode must be 'min' or 'max', got 'up'"),
    ({"monitor": ""}, "monitor must be the name of a logged metric (e.g. 'val/loss'), got ''"),
    ({"monitor": None}, "monitor must be the name of a logged metric (e.g. 'val/loss'), got None"),
])
def test_a_task_with_a_bad_monitor_is_refused(members, problem):
    cls = type("OddTask", (Seq2SeqTask,), {"__doc__": "Odd.", **members})
    with pytest.raises(PluginError) as info:
        nmt.register("task", "odd")(cls)
    assert info.value.message.endswith(f"OddTask does not meet the task contract (nmt.contracts): {problem}")


def test_a_task_without_make_datamodule_is_refused():
    from nmt.tasks.base import Task

    class NoData(Task):
        """Configs, no data module."""

        class DataConfig(BaseModel):
            pass

        class ModelConfig(BaseModel):
            pass

    with pytest.raises(PluginError, match=r"no make_datamodule\(\) method$"):
        nmt.register("task", "nodata")(NoData)
    nmt.register("task", "subclass_ok")(type("Fine", (Seq2SeqTask,), {"__doc__": "Fine."}))


# --- undeclared recipe keys ----------------------------------------------------------

class LaxEncoder(GRUEncoder):
    """A Config that leaves pydantic's default extra="ignore"."""

    class Inner(BaseModel):
        depth: int = 1

    class Config(BaseModel):
        hidden_size: int = 16
        num_layers: int = 1
        dropout: float = 0.0
        bidirectional: bool = True
        inner: "LaxEncoder.Inner | None" = None
        renamed: int = Field(0, alias="old_name")


LaxEncoder.Config.model_rebuild()


def test_a_misspelt_key_of_a_lax_plugin_config_is_refused(tmp_path):
    """Before: trained with hidden_size 16, the misspelt hiden_size=64 silently ignored."""
    nmt.register("encoder", "lax")(LaxEncoder)
    data = write_reverse_corpus(tmp_path / "data", n_train=20, n_dev=5)
    path = write_recipe(tmp_path / "r.yaml", reverse_recipe(data))
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["model.encoder.name=lax", "model.encoder.hiden_size=64"], check_data=False)
    assert info.value.message == "override model.encoder.hiden_size: unknown key; did you mean 'hidden_size'?"
    with pytest.raises(RecipeError) as builtin:  # the built-in's error, word for word
        load_recipe(path, ["model.encoder.hiden_size=64"], check_data=False)
    assert builtin.value.message == info.value.message


def test_undeclared_keys_are_found_in_nested_sections_and_aliases_are_declared(tmp_path):
    nmt.register("encoder", "lax2")(LaxEncoder)
    where = tmp_path / "r.yaml"
    with pytest.raises(RecipeError) as info:
        component("encoder", {"name": "lax2", "inner": {"dept": 2}}, "model.encoder", where)
    assert info.value.message == f"{where}: model.encoder.inner.dept: unknown key; did you mean 'depth'?"
    with pytest.raises(RecipeError, match=r"model.encoder.zzz: unknown key; expected one of: bidirectional, "):
        component("encoder", {"name": "lax2", "zzz": 1}, "model.encoder", where)
    resolved = component("encoder", {"name": "lax2", "hidden_size": 8, "old_name": 3, "inner": {"depth": 2}},
                         "model.encoder", where)
    assert (resolved.config.hidden_size, resolved.config.renamed, resolved.config.inner.depth) == (8, 3, 2)


def test_an_allowing_config_is_held_to_its_declared_keys_too(tmp_path):
    class Allowing(GRUEncoder):
        """extra="allow"."""

        class Config(BaseModel):
            model_config = ConfigDict(extra="allow")
            hidden_size: int = 16

    nmt.register("encoder", "allowing")(Allowing)
    with pytest.raises(RecipeError, match=r"model.encoder.hiden_size: unknown key; did you mean 'hidden_size'\?$"):
        component("encoder", {"name": "allowing", "hiden_size": 64}, "model.encoder", tmp_path / "r.yaml")
    assert torch.get_default_dtype() == torch.float32
