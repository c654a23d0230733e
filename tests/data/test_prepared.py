"""The prepared corpus (``nmt prepare``, ``RUN/corpus``): the pairs training reads from it are the pairs of
the text files, it is rebuilt when stale and never half written, and damage is a one-line error."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.cli import main
from nmt.data import prepared
from nmt.data.text import read_parallel
from nmt.errors import DataError
from nmt.recipe import load_recipe, validate_recipe
from nmt.runs import load_run

SENTENCEPIECE = {"name": "sentencepiece", "vocab_size": 60}


def make_task(tmp_path: Path, data: Path, **data_section):
    recipe = validate_recipe(reverse_recipe(data, data={"tokenizer": SENTENCEPIECE, **data_section}),
                             tmp_path / "r.yaml")
    recipe.task_cls.prepare_run(recipe, tmp_path / "run", workers=2)
    return recipe.task_cls.from_run(recipe, tmp_path / "run")


def expected_pairs(task, sources: list[str], targets: list[str]) -> list[tuple[int, list[int], list[int]]]:
    """What training must see: every line pair tokenised on its own, filtered as the recipe says."""
    data = task.recipe.data
    kept = []
    for i, (s, t) in enumerate(zip(sources, targets)):
        s_ids, t_ids = task.src_tokenizer.encode(s), task.tgt_tokenizer.encode(t)
        if not (0 < len(s_ids) <= data.max_length and 0 < len(t_ids) <= data.max_length):
            continue
        if data.max_ratio is not None and max(len(s_ids), len(t_ids)) > data.max_ratio * min(len(s_ids), len(t_ids)):
            continue
        kept.append((i, s_ids, t_ids))
    return kept


def seen_pairs(task) -> list[tuple[int, list[int], list[int]]]:
    train = task.make_datamodule().train_set
    return [(p.index, p.src, p.tgt) for p in (train[i] for i in range(len(train)))]


def test_pairs_from_many_chunks_and_workers_are_the_lines_of_the_files(tmp_path, monkeypatch):
    """Gzip, a BOM, CRLF endings, a last line without newline, blank and long lines, two file pairs,
    chunks cut every few hundred bytes across two worker processes: the same pairs as line by line."""
    monkeypatch.setattr(prepared, "CHUNK_BYTES", 300)
    data = write_reverse_corpus(tmp_path / "data", n_train=400, n_dev=10)
    src, tgt = read_parallel(data / "train.src", data / "train.tgt")
    src[3], tgt[7] = "", "   "  # dropped: empty
    src[11] = " ".join(["a1"] * 60)  # dropped: longer than max_length
    src[20], tgt[20] = "a1", "a1 " * 6  # dropped by max_ratio only
    first_src, first_tgt = src[:250], tgt[:250]
    with gzip.open(data / "part1.src.gz", "wt", encoding="utf-8", newline="") as f:
        f.write("\ufeff" + "\r\n".join(first_src) + "\r\n")
    (data / "part1.tgt").write_text("\n".join(first_tgt) + "\n", encoding="utf-8")
    (data / "part2.src").write_text("\n".join(src[250:]), encoding="utf-8")  # no final newline
    (data / "part2.tgt").write_text("\n".join(tgt[250:]) + "\n", encoding="utf-8")
    parts = [{"src": "part1.src.gz", "tgt": "part1.tgt"}, {"src": "part2.src", "tgt": "part2.tgt"}]
    task = make_task(tmp_path, data, train=parts, max_length=40, max_ratio=2.5)

    expected = expected_pairs(task, src, tgt)
    assert seen_pairs(task) == expected
    manifest = json.loads((tmp_path / "run" / "corpus" / "manifest.json").read_text())
    assert manifest["pairs_read"] == 400 and manifest["pairs_kept"] == len(expected) == 396
    assert manifest["dropped"] == {"empty": 2, "too_long": 1, "ratio": 1}
    assert manifest["workers"] == 2


def test_batches_come_from_the_length_index_of_the_corpus(tmp_path):
    data = write_reverse_corpus(tmp_path / "data", n_train=300, n_dev=10)
    task = make_task(tmp_path, data)
    train = task.make_datamodule().train_set
    index = train.length_index()
    lengths = train.lengths()
    assert sorted(index.order.tolist()) == list(range(len(train)))
    assert np.all(np.diff(lengths[index.order]) >= 0)  # ascending length
    pair = train[int(index.order[-1])]
    assert max(len(pair.src), len(pair.tgt) + 1) == lengths.max()


def train_cli(recipe: Path, run_dir: Path, *overrides: str) -> int:
    return main(["train", str(recipe), "--run-dir", str(run_dir), *overrides])


@pytest.fixture
def tiny(tmp_path):
    data = write_reverse_corpus(tmp_path / "data", n_train=120, n_dev=10)
    recipe = write_recipe(tmp_path / "r.yaml", reverse_recipe(data, trainer={"max_epochs": 1},
                                                              model={"embedding": {"size": 16},
                                                                     "encoder": {"name": "gru", "hidden_size": 16},
                                                                     "attention": {"name": "bahdanau"},
                                                                     "decoder": {"name": "rnn", "hidden_size": 16}}))
    return data, recipe


def test_a_changed_training_file_is_prepared_again(tmp_path, tiny, capsys):
    data, recipe = tiny
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    corpus = tmp_path / "run" / "corpus"
    built = (corpus / "manifest.json").stat().st_mtime_ns
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert "up to date" in capsys.readouterr().err
    assert (corpus / "manifest.json").stat().st_mtime_ns == built  # reused, not rebuilt

    lines = (data / "train.tgt").read_text().splitlines()
    lines[5] = changed = " ".join(reversed(lines[6].split()))  # same line count and words, other content
    (data / "train.tgt").write_text("\n".join(lines) + "\n")
    assert train_cli(recipe, tmp_path / "run") == 0
    assert "train.tgt changed since it was prepared" in capsys.readouterr().err
    task = load_run(tmp_path / "run", device="cpu")
    fifth = next(p for p in (task.make_datamodule().train_set[i] for i in range(115)) if p.index == 5)
    assert task.tgt_tokenizer.decode(fifth.tgt) == changed


def test_a_refitted_tokenizer_prepares_the_corpus_again(tmp_path, tiny, capsys):
    data, recipe = tiny
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    vocab = tmp_path / "run" / "fitted" / "joint.vocab.json"
    payload = json.loads(vocab.read_text())
    tokens = payload["tokens"]
    tokens[4], tokens[5] = tokens[5], tokens[4]  # another vocabulary: two words swap ids
    vocab.write_text(json.dumps(payload))
    capsys.readouterr()
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert "the tokenizer changed since it was prepared" in capsys.readouterr().err
    loaded = load_recipe(recipe, [])
    task = loaded.task_cls.from_run(loaded, tmp_path / "run")
    sources = (data / "train.src").read_text().splitlines()
    train = task.make_datamodule().train_set
    assert all(train[i].src == task.src_tokenizer.encode(sources[train[i].index]) for i in range(len(train)))


def test_a_truncated_shard_is_one_line_naming_it(tmp_path, tiny, capsys):
    data, recipe = tiny
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    shard = tmp_path / "run" / "corpus" / "tgt-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-6])
    capsys.readouterr()
    assert train_cli(recipe, tmp_path / "run") == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nmt: ")]
    assert len(lines) == 1 and lines[0].startswith(f"nmt: {shard}: truncated or damaged"), lines


def test_bad_utf8_deep_in_a_file_names_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(prepared, "CHUNK_BYTES", 256)
    data = write_reverse_corpus(tmp_path / "data", n_train=200, n_dev=10)
    task = make_task(tmp_path / "clean", data)
    raw = (data / "train.src").read_bytes().split(b"\n")
    raw[150] = raw[150] + b" \xe4"
    (data / "train.src").write_bytes(b"\n".join(raw))
    bad_line = r"train\.src:151: invalid UTF-8 \(byte 0xe4\)"
    spec = task.corpus_spec(task.recipe, tmp_path / "clean" / "run")
    for workers in (1, 2):  # found by a worker, in a chunk that starts far from the top
        with pytest.raises(DataError, match=bad_line):
            prepared.prepare_corpus(spec, tmp_path / f"corpus{workers}", workers=workers)
    with pytest.raises(DataError, match=bad_line):  # found while fitting sentencepiece on the stream
        make_task(tmp_path, data)


def test_files_of_different_length_name_the_target(tmp_path):
    data = write_reverse_corpus(tmp_path / "data", n_train=50, n_dev=10)
    (data / "train.tgt").write_text("\n".join((data / "train.tgt").read_text().splitlines()[:49]) + "\n")
    with pytest.raises(DataError, match=r"train\.tgt: line count differs from .*train\.src \(49 vs 50\)"):
        make_task(tmp_path, data)


def test_a_failed_preparation_keeps_the_corpus_there_was(tmp_path, monkeypatch):
    data = write_reverse_corpus(tmp_path / "data", n_train=80, n_dev=10)
    task = make_task(tmp_path, data)
    corpus = tmp_path / "run" / "corpus"
    before = {p.name: p.read_bytes() for p in corpus.iterdir()}

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepared, "_write_index", fail)
    with pytest.raises(KeyboardInterrupt):
        prepared.prepare_corpus(task.corpus_spec(task.recipe, tmp_path / "run"), corpus, workers=1)
    assert {p.name: p.read_bytes() for p in corpus.iterdir()} == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith("corpus")) == ["corpus"]


def test_errors_cross_process_boundaries_whole():
    import pickle

    from nmt.errors import RequestError

    error = pickle.loads(pickle.dumps(DataError("train.src:3", "invalid UTF-8")))
    assert type(error) is DataError and str(error) == "train.src:3: invalid UTF-8"
    request = pickle.loads(pickle.dumps(RequestError(413, "text", "too long")))
    assert (request.status, str(request)) == (413, "text: too long")
