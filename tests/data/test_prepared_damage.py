"""A prepared corpus whose files have the right sizes but bad content (a disk error, a stray write) is a
one-line error naming the file and saying how to prepare it again, when it is opened: never an
IndexError deep in training (on a GPU, a device-side assert)."""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.cli import main
from nmt.data.shards import PreparedCorpus
from nmt.errors import DataError

SAMPLING = {"name": "sentencepiece", "vocab_size": 40, "sampling": {"alpha": 0.3}}  # keeps the lines' text too


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Two prepared runs, built once: whitespace words, and subword sampling (text shards too)."""
    root = tmp_path_factory.mktemp("damage")
    data = write_reverse_corpus(root / "data", n_train=120, n_dev=10)
    runs = {}
    for name, tokenizer in (("words", {"name": "whitespace"}), ("text", SAMPLING)):
        recipe = write_recipe(root / f"{name}.yaml", reverse_recipe(data, data={"tokenizer": tokenizer},
                                                                    trainer={"max_epochs": 1}))
        assert main(["prepare", str(recipe), "--run-dir", str(root / name), "--workers", "1"]) == 0
        runs[name] = root / name
    runs["recipe"] = root / "words.yaml"
    return runs


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run" / "corpus"


def open_fully(corpus: Path) -> None:
    PreparedCorpus(corpus).length_index()


def expect_damaged(corpus: Path, name: str, what: str) -> None:
    with pytest.raises(DataError) as caught:
        open_fully(corpus)
    assert caught.value.where == str(corpus / name)
    assert caught.value.what.startswith(f"damaged: {what}")
    assert caught.value.what.endswith(f"run nmt prepare --force (or delete {corpus}) to prepare it again")


def edit_index(path: Path, edit) -> None:
    records = np.load(path)
    edit(records)
    np.save(path, records)


def test_an_undamaged_corpus_opens(prepared, tmp_path):
    for name in ("words", "text"):
        corpus = PreparedCorpus(prepared[name] / "corpus")
        assert len(corpus.length_index()) == len(corpus) > 100
        assert set(corpus.manifest["vocab_size"]) == {"src", "tgt"}


def test_token_ids_beyond_the_vocabulary(prepared, tmp_path):
    corpus = copy_of(prepared["words"], tmp_path)
    shard = corpus / "src-00000.bin"
    shard.write_bytes(b"\xff" * shard.stat().st_size)  # the same size: only the content tells
    vocab = PreparedCorpus(prepared["words"] / "corpus").manifest["vocab_size"]["src"]
    expect_damaged(corpus, "src-00000.bin", f"token id 65,535 is not below the vocabulary size {vocab}")


def test_one_id_just_past_the_vocabulary(prepared, tmp_path):
    corpus = copy_of(prepared["words"], tmp_path)
    vocab = PreparedCorpus(corpus).manifest["vocab_size"]["tgt"]
    ids = np.fromfile(corpus / "tgt-00000.bin", dtype=np.uint16)
    ids[len(ids) // 2] = vocab
    ids.tofile(corpus / "tgt-00000.bin")
    expect_damaged(corpus, "tgt-00000.bin", f"token id {vocab} is not below")


@pytest.mark.parametrize("field, value, what", [
    ("src", 10**12, "record 5: offset 1,000,000,000,000 and length"),
    ("tgt", -1, "record 5: offset -1 and length"),
    ("src_len", 60_000, "record 5: length 60,000 is over the corpus's max_length"),
])
def test_records_outside_the_shards(prepared, tmp_path, field, value, what):
    corpus = copy_of(prepared["words"], tmp_path)
    edit_index(corpus / "index.npy", lambda records: records[field].__setitem__(5, value))
    expect_damaged(corpus, "index.npy", what)


def test_the_last_record_running_past_its_shard(prepared, tmp_path):
    corpus = copy_of(prepared["words"], tmp_path)
    total = PreparedCorpus(corpus).manifest["shards"]["tgt"][0]["tokens"]

    def past_the_end(records):
        last = int(np.argmax(records["tgt"]))
        records["tgt"][last] = total - int(records["tgt_len"][last]) + 1
    edit_index(corpus / "index.npy", past_the_end)
    expect_damaged(corpus, "index.npy", "record ")


def test_text_records_outside_the_text_shards(prepared, tmp_path):
    corpus = copy_of(prepared["text"], tmp_path)
    edit_index(corpus / "text-index.npy", lambda records: records["tgt_text"].__setitem__(3, 10**9))
    expect_damaged(corpus, "text-index.npy", "record 3: offset 1,000,000,000")


@pytest.mark.parametrize("key, edit", [
    ("order", lambda a: a * 1000),
    ("order", lambda a: a - 1),
    ("starts", lambda a: a + 1),
])
def test_length_index_outside_the_examples(prepared, tmp_path, key, edit):
    corpus = copy_of(prepared["words"], tmp_path)
    with np.load(corpus / "buckets.npz") as saved:
        arrays = dict(saved)
    arrays[key] = edit(arrays[key])
    np.savez(corpus / "buckets.npz", **arrays)
    expect_damaged(corpus, "buckets.npz", "example ids or length runs outside the")


def test_a_data_loader_worker_does_not_check_again(prepared, monkeypatch):
    """The parent checked the corpus; a worker (a pickled copy) maps it without reading it through."""
    corpus = PreparedCorpus(prepared["words"] / "corpus")
    monkeypatch.setattr(PreparedCorpus, "_check_content", lambda self: pytest.fail("checked again"))
    assert pickle.loads(pickle.dumps(corpus)).pair(3) == corpus.pair(3)


def test_nmt_train_on_a_damaged_shard_is_one_line_and_exit_2(prepared, tmp_path, capsys):
    copy_of(prepared["words"], tmp_path)
    shard = tmp_path / "run" / "corpus" / "src-00000.bin"
    shard.write_bytes(b"\xff" * shard.stat().st_size)
    capsys.readouterr()
    assert main(["train", str(prepared["recipe"]), "--run-dir", str(tmp_path / "run")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nmt: ")]
    assert len(lines) == 1 and lines[0].startswith(f"nmt: {shard}: damaged: token id 65,535"), lines
