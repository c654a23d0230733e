"""Recipes: YAML-typed ``key.path=value`` overrides, the data root, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nmt.errors import DataError, RecipeError, UserError
from nmt.recipe import apply_overrides, load_recipe, parse_override, resolve_data_path

from conftest import reverse_recipe, write_recipe, write_reverse_corpus


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_reverse_corpus(tmp_path_factory.mktemp("reverse"), n_train=20, n_dev=5)


@pytest.fixture
def recipe_path(tmp_path, data_dir) -> Path:
    return write_recipe(tmp_path / "recipe.yaml", reverse_recipe(data_dir))


# --- overrides ------------------------------------------------------------------------------

@pytest.mark.parametrize("text,keys,value", [
    ("trainer.max_epochs=3", ["trainer", "max_epochs"], 3),
    ("optim.lr=1e-3", ["optim", "lr"], 1e-3),
    ("optim.lr=0.5", ["optim", "lr"], 0.5),
    ("a.b=[1,2]", ["a", "b"], [1, 2]),
    ("a.b={x: 1}", ["a", "b"], {"x": 1}),
    ("model.encoder.bidirectional=false", ["model", "encoder", "bidirectional"], False),
    ("early_stopping.patience=null", ["early_stopping", "patience"], None),
    ("name=de-en", ["name"], "de-en"),
    ("name='3'", ["name"], "3"),
    ("data.root=", ["data", "root"], ""),
    ("data.root=/a=b", ["data", "root"], "/a=b"),  # only the first '=' separates
    ("name=[unclosed", ["name"], "[unclosed"),  # not YAML: kept as a string, validation decides
    # YAML 1.2's numbers and booleans (PyYAML's 1.1: octal 8, base-60 90, 10, True)
    ("trainer.max_steps=010", ["trainer", "max_steps"], 10),
    ("trainer.max_steps=1:30", ["trainer", "max_steps"], "1:30"),
    ("trainer.max_steps=1_0", ["trainer", "max_steps"], "1_0"),
    ("trainer.max_steps=0x10", ["trainer", "max_steps"], 16),
    ("model.encoder.bidirectional=yes", ["model", "encoder", "bidirectional"], "yes"),
    ("trainer.max_time=1:00:00:00", ["trainer", "max_time"], "1:00:00:00"),
])
def test_override_values_are_parsed_as_yaml(text, keys, value):
    assert parse_override(text) == (keys, value)
    assert type(parse_override(text)[1]) is type(value)


@pytest.mark.parametrize("text", ["trainer.max_epochs", "=3", ".a=1", "a..b=1", "a.=1", "1a=2", "a b=1"])
def test_malformed_overrides_are_rejected(text):
    with pytest.raises(RecipeError, match=r"expected key\.path=value") as info:
        parse_override(text)
    assert info.value.where == f"override '{text}'"


def test_overrides_set_nested_keys_and_leave_the_original_alone():
    raw = {"trainer": {"max_epochs": 10}, "model": {"encoder": {"name": "gru"}}, "seed": 1, "empty": None}
    result = apply_overrides(raw, ["trainer.max_epochs=3", "model.encoder.hidden_size=64",
                                   "model.decoder.name=rnn", "empty.key=1", "seed=7", "trainer.max_epochs=4"])
    assert result == {"trainer": {"max_epochs": 4}, "model": {"encoder": {"name": "gru", "hidden_size": 64},
                                                              "decoder": {"name": "rnn"}},
                      "seed": 7, "empty": {"key": 1}}
    assert raw["trainer"]["max_epochs"] == 10 and "hidden_size" not in raw["model"]["encoder"]


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path, data_dir):
    # PyYAML follows YAML 1.1, where 1e-3 is a string; a recipe means the number, as YAML 1.2 does.
    raw = reverse_recipe(data_dir, optim={"lr": "__LR__"}, trainer={"gradient_clip_val": "__CLIP__"})
    text = yaml.safe_dump(raw).replace("__LR__", "3e-4").replace("__CLIP__", "1E0")
    (tmp_path / "recipe.yaml").write_text(text)
    recipe = load_recipe(tmp_path / "recipe.yaml", ["trainer.max_time=null", "data.valid_max_length_ratio=1.5e0"])
    assert recipe.raw["optim"]["lr"] == 3e-4 and recipe.spec.trainer["gradient_clip_val"] == 1.0
    assert type(recipe.spec.trainer["gradient_clip_val"]) is float
    assert recipe.data.valid_max_length_ratio == 1.5
    assert parse_override("a=-2.5e+3") == (["a"], -2500.0) and parse_override("a=1e") == (["a"], "1e")


def test_override_through_a_value_that_is_not_a_section():
    with pytest.raises(RecipeError, match="seed is an int, not a section") as info:
        apply_overrides({"seed": 1}, ["seed.x.y=2"])
    assert info.value.where == "override 'seed.x.y=2'"


def test_overrides_are_validated_like_the_file(recipe_path):
    recipe = load_recipe(recipe_path, ["trainer.max_epochs=7", "optim.lr=0.01", "model.encoder.hidden_size=32",
                                       "early_stopping.patience=2"])
    assert recipe.spec.trainer["max_epochs"] == 7
    assert recipe.spec.optim.lr == 0.01
    assert recipe.model.encoder["hidden_size"] == 32
    assert recipe.spec.early_stopping.patience == 2
    assert recipe.raw["trainer"]["max_epochs"] == 7  # the run directory saves the recipe as trained
    assert recipe.overrides == ["trainer.max_epochs=7", "optim.lr=0.01", "model.encoder.hidden_size=32",
                                "early_stopping.patience=2"]
    assert yaml.safe_load(recipe_path.read_text())["trainer"]["max_epochs"] == 3  # the file is untouched


def test_a_plugin_section_without_a_name_keeps_the_default_plugin(tmp_path, data_dir):
    raw = reverse_recipe(data_dir)
    del raw["model"]["encoder"], raw["model"]["attention"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe = load_recipe(path, ["model.encoder.hidden_size=24", "model.attention.hidden_size=16"])
    assert recipe.model.encoder == {"name": "gru", "hidden_size": 24}
    assert recipe.model.attention == {"name": "bahdanau", "hidden_size": 16}


@pytest.mark.parametrize("override,where,what", [
    ("optim.lr=-1", "override optim.lr", "greater than 0"),
    ("optim.lr=fast", "override optim.lr", "'fast'"),
    ("optim.lrr=0.1", "override optim.lrr", "did you mean 'lr'?"),
    ("seed=[1]", "override seed", "integer"),
    ("model.encoder.hiden_size=2", "override model.encoder.hiden_size", "did you mean 'hidden_size'?"),
    ("model.encoder.hidden_size=0", "override model.encoder.hidden_size", "greater than 0"),
    ("model.attention.name=luongg", "override model.attention.name", "did you mean 'luong'?"),
    ("trainer.max_epoch=1", "override trainer.max_epoch", "did you mean 'max_epochs'?"),
    ("data.batch_tokens=many", "override data.batch_tokens", "'many'"),
])
def test_override_errors_name_the_override(recipe_path, override, where, what):
    with pytest.raises(UserError) as info:
        load_recipe(recipe_path, [override])
    assert info.value.where == where
    assert what in info.value.what


# --- validation errors name the key path ----------------------------------------------------

@pytest.mark.parametrize("change,key,what", [
    ({"optim": {"lr": 0}}, "optim.lr", "greater than 0"),
    ({"optim": {"momentum": 0.9}}, "optim.momentum", "unknown key"),
    ({"early_stopping": {"patience": 0}}, "early_stopping.patience", "greater than or equal to 1"),
    ({"seed": "x"}, "seed", "integer"),
    ({"plugins": "my.py"}, "plugins", "list"),
    ({"data": {"batch_tokens": -5}}, "data.batch_tokens", "greater than 0"),
    ({"data": {"valid": {"src": "dev.src"}}}, "data.valid.tgt", "required key is missing"),
    ({"data": {"test": {"t1": {"src": 3}}}}, "data.test.t1.src", "string"),
    ({"model": {"embedding": {"size": 0}}}, "model.embedding.size", "greater than 0"),
    ({"model": {"encoder": {"name": "gru", "num_layers": "two"}}}, "model.encoder.num_layers", "integer"),
    ({"model": {"decoder": {"name": "rnn", "cell": "rnnn"}}}, "model.decoder.cell", "'gru' or 'lstm'"),
    ({"model": {"decoder": {"name": "rnn", "teacher_forcing": "fast"}}}, "model.decoder.teacher_forcing", "'shared'"),
    ({"model": {"attention": {"name": "bahdanau", "score": "dot"}}}, "model.attention.score", "unknown key"),
    ({"model": {"attention": {"name": None, "score": "dot"}}}, "model.attention.name", "required"),
    ({"model": {"attention": {"score": "dot"}}}, "model.attention.score", "unknown key"),  # the default: bahdanau
    ({"data": {"tokenizer": {"name": "whitespace", "min_freq": 0}}}, "data.tokenizer.min_freq", "greater than 0"),
    ({"trainer": {"max_epoch": 1}}, "trainer.max_epoch", "unknown Trainer argument"),
])
def test_validation_errors_name_the_key_path(tmp_path, data_dir, change, key, what):
    raw = reverse_recipe(data_dir)
    for section, value in change.items():
        raw[section] = {**raw[section], **value} if isinstance(value, dict) and isinstance(raw.get(section), dict) \
            else value
    path = write_recipe(tmp_path / "recipe.yaml", raw)
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert getattr(info.value, "where", None) == f"{path}: {key}", info.value
    assert what in info.value.what


def test_yaml_error_names_the_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: seq2seq\ntrainer:\n  max_epochs: 3\n  devices: [1, 2\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.where.startswith(f"{path}:") and info.value.where[len(str(path)) + 1:].isdigit()
    assert info.value.what.startswith("invalid YAML")


# --- data paths -----------------------------------------------------------------------------

def test_relative_data_paths_resolve_under_data_root(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.en").write_text("x\n")
    assert resolve_data_path("sub/train.en", tmp_path) == tmp_path / "sub" / "train.en"
    absolute = tmp_path / "sub" / "train.en"
    assert resolve_data_path(absolute, "/somewhere/else") == absolute


def test_data_root_defaults_to_the_nmt_data_variable(tmp_path, monkeypatch):
    (tmp_path / "train.en").write_text("x\n")
    monkeypatch.setenv("NMT_DATA", str(tmp_path))
    assert resolve_data_path("train.en", None) == tmp_path / "train.en"


def test_environment_variables_expand_in_data_paths(tmp_path, monkeypatch):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.en").write_text("x\n")
    monkeypatch.setenv("MY_CORPUS", str(tmp_path / "corpus"))
    assert resolve_data_path("train.en", "${MY_CORPUS}") == tmp_path / "corpus" / "train.en"
    assert resolve_data_path("${MY_CORPUS}/train.en", "/elsewhere") == tmp_path / "corpus" / "train.en"


def test_missing_data_file_names_the_path_and_the_root(tmp_path, monkeypatch):
    monkeypatch.setenv("NMT_DATA", str(tmp_path))
    with pytest.raises(DataError) as info:
        resolve_data_path("wmt/train.de", None)
    assert info.value.where == str(tmp_path / "wmt" / "train.de")
    assert "file not found" in info.value.what and str(tmp_path) in info.value.what
    assert resolve_data_path("wmt/train.de", None, check=False) == tmp_path / "wmt" / "train.de"


def test_recipe_without_a_data_root_uses_nmt_data(tmp_path, monkeypatch):
    data = write_reverse_corpus(tmp_path / "corpus", n_train=10, n_dev=2)
    raw = reverse_recipe(data)
    del raw["data"]["root"]
    path = write_recipe(tmp_path / "recipe.yaml", raw)
    monkeypatch.setenv("NMT_DATA", str(data))
    assert load_recipe(path).data.root is None  # resolved at use, so a run can move between machines
    monkeypatch.setenv("NMT_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match="file not found"):
        load_recipe(path)
    assert load_recipe(path, check_data=False).data.train.src == "train.src"
