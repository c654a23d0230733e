"""Shared fixtures: small synthetic tasks written to a temporary directory, and recipe builders."""
from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch
import yaml

WORDS = [f"{c}{n}" for c in "abcdef" for n in range(4)]  # 24 word types


def write_reverse_corpus(directory: Path, n_train: int = 3000, n_dev: int = 200, seed: int = 0) -> Path:
    """A toy translation task: the target is the source words in reverse order."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)

    def sentence() -> list[str]:
        return [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]

    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_dev)):
        words = [sentence() for _ in range(n)]
        (directory / f"{split}.src").write_text("".join(" ".join(w) + "\n" for w in words))
        (directory / f"{split}.tgt").write_text("".join(" ".join(reversed(w)) + "\n" for w in words))
    return directory


def reverse_recipe(data_dir: Path, **sections) -> dict:
    """A small seq2seq recipe over :func:`write_reverse_corpus`; keyword sections update the defaults."""
    recipe = {
        "name": "reverse",
        "task": "seq2seq",
        "seed": 1,
        "data": {"root": str(data_dir), "train": {"src": "train.src", "tgt": "train.tgt"},
                 "valid": {"src": "dev.src", "tgt": "dev.tgt"}, "tokenizer": {"name": "whitespace"},
                 "batch_tokens": 400},
        "model": {"embedding": {"size": 64}, "encoder": {"name": "gru", "hidden_size": 64},
                  "attention": {"name": "bahdanau"}, "decoder": {"name": "rnn", "hidden_size": 128}},
        "optim": {"lr": 0.003},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "enable_progress_bar": False,
                    "enable_model_summary": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (benchmarks/ is no package: its scripts run as files)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def reverse_data(tmp_path: Path) -> Path:
    return write_reverse_corpus(tmp_path / "data")


@pytest.fixture
def one_thread():
    """One intra-op thread for a module of small models: on a shared CPU more threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def private_registry(monkeypatch):
    """The test registers, discovers and loads plugins into copies of the registry's state, so nothing it adds
    outlives it; torch's default dtype is put back after it (plugins that change it are tested)."""
    from nmt import registry

    registry.discover()
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(registry, "_broken", [])
    monkeypatch.setattr(registry, "_loaded", {})
    yield
    torch.set_default_dtype(torch.float32)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    random.seed(0)
    yield


def pytest_collection_modifyitems(session, config, items):
    """The bad-input table (``tests/reliability/test_table.py``) renders the rows every other
    reliability test recorded, so it runs last whatever the modules are named."""
    last = [item for item in items if item.nodeid.endswith("test_table.py::test_docs_table_matches_the_suite")]
    items[:] = [item for item in items if item not in last] + last
