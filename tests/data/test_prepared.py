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
from nmt.data import prepared, tokenize_chunks
from nmt.data.text import read_parallel
from nmt.errors import DataError
from nmt.recipe import load_recipe, validate_recipe
from nmt.runs import load_run

SENTENCEPIECE = {"name": "sentencepiece", "vocab_size": 60}


def make_task(tmp_path: Path, data: Path, tokenizer: dict = SENTENCEPIECE, **data_section):
    recipe = validate_recipe(reverse_recipe(data, data={"tokenizer": tokenizer, **data_section}),
                             tmp_path / "r.yaml")
    recipe.task_cls.prepare_run(recipe, tmp_path / "run", workers=2)
    return recipe.task_cls.from_run(recipe, tmp_path / "run")


def expected_pairs(task, sources: list[str], targets: list[str]):
    """What training must see: every line pair tokenised on its own, filtered as the recipe says; and
    how many pairs each filter dropped."""
    data = task.recipe.data
    kept, dropped = [], {"empty": 0, "too_long": 0, "ratio": 0}
    for i, (s, t) in enumerate(zip(sources, targets)):
        s_ids, t_ids = task.src_tokenizer.encode(s), task.tgt_tokenizer.encode(t)
        if not s_ids or not t_ids:
            dropped["empty"] += 1
        elif len(s_ids) > data.max_length or len(t_ids) > data.max_length:
            dropped["too_long"] += 1
        elif data.max_ratio is not None and max(len(s_ids), len(t_ids)) > data.max_ratio * min(len(s_ids), len(t_ids)):
            dropped["ratio"] += 1
        else:
            kept.append((i, s_ids, t_ids))
    return kept, dropped


def seen_pairs(task) -> list[tuple[int, list[int], list[int]]]:
    train = task.make_datamodule().train_set
    return [(p.index, p.src, p.tgt) for p in (train[i] for i in range(len(train)))]


@pytest.mark.parametrize("tokenizer", [SENTENCEPIECE, {"name": "characters"}])  # characters: "\r" is one
def test_pairs_from_many_chunks_and_workers_are_the_lines_of_the_files(tmp_path, monkeypatch, tokenizer):
    """Gzip, a BOM, CRLF endings, a last line without newline, blank and long lines, two file pairs,
    chunks cut every few hundred bytes across two worker processes: the same pairs as line by line."""
    monkeypatch.setattr(tokenize_chunks, "CHUNK_BYTES", 300)
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
    task = make_task(tmp_path, data, tokenizer, train=parts, max_length=40, max_ratio=2.5)

    expected, dropped = expected_pairs(task, src, tgt)
    assert seen_pairs(task) == expected
    manifest = json.loads((tmp_path / "run" / "corpus" / "manifest.json").read_text())
    assert manifest["pairs_read"] == 400 and manifest["pairs_kept"] == len(expected) > 300
    assert manifest["dropped"] == dropped and min(dropped.values()) > 0
    assert manifest["workers"] == 2


def test_batches_come_from_the_length_index_of_the_corpus(tmp_path):
    import pickle

    data = write_reverse_corpus(tmp_path / "data", n_train=300, n_dev=10)
    task = make_task(tmp_path, data)
    train = task.make_datamodule().train_set
    sent = pickle.dumps(train.corpus)  # to a data loader worker: the folder, not the mapped data
    assert len(sent) < 500 and pickle.loads(sent).pair(7) == train.corpus.pair(7)
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
    monkeypatch.setattr(tokenize_chunks, "CHUNK_BYTES", 256)
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


def test_mapped_pages_are_released_as_pairs_are_read(tmp_path, monkeypatch):
    """The training process unmaps the corpus pages it read every RELEASE_EVERY pairs (else a random
    read pattern maps most of a large corpus: resident memory growing with the corpus)."""
    import mmap

    from nmt.data import shards

    data = write_reverse_corpus(tmp_path / "data", n_train=60, n_dev=10)
    task = make_task(tmp_path, data)
    assert not task.make_datamodule().train_set.corpus._large  # a small corpus stays mapped
    monkeypatch.setattr(shards, "RELEASE_ABOVE", 0)
    corpus = task.make_datamodule().train_set.corpus
    maps = list(corpus._maps())
    assert len(maps) == 3  # index, source and target shard
    released = []

    class Recording:
        def __init__(self, mapped):
            self.mapped = mapped

        def madvise(self, option, *args):
            released.append((id(self.mapped), option))

    monkeypatch.setattr(corpus, "_maps", lambda: (Recording(m) for m in maps))
    for i in range(shards.RELEASE_EVERY * 3):
        corpus.pair(i % len(corpus))
    assert released == [(id(m), mmap.MADV_DONTNEED) for m in maps] * 3


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_preparation(tmp_path):
    """SIGKILL nmt prepare while its workers tokenise: they die too (else, holding copies of its pipes, they
    would wait forever, and so would whoever reads its output)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = write_reverse_corpus(tmp_path / "data", n_train=200, n_dev=10)
    for side in ("src", "tgt"):  # about 40 MB a side: several seconds of tokenising
        lines = (data / f"train.{side}").read_text()
        (data / f"train.{side}").write_text(lines * 3000)
    recipe = write_recipe(tmp_path / "r.yaml", reverse_recipe(data))
    proc = subprocess.Popen([sys.executable, "-m", "nmt.cli", "prepare", str(recipe), "--run-dir", str(tmp_path / "run"),
                             "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    workers: list[int] = []
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
        workers = children_of(proc.pid)
        time.sleep(0.05)
    try:
        assert len(workers) >= 2, "the workers never started"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)  # returns once nothing holds its pipes
        time.sleep(0.5)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
                 and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]]
        assert alive == []
    finally:
        for pid in [proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_prepare_is_for_parallel_corpora(tmp_path, capsys):
    from tests.tasks.test_classify import classify_recipe, write_counting_task

    data = write_counting_task(tmp_path / "data", n_train=20, n_dev=5)
    recipe = write_recipe(tmp_path / "c.yaml", classify_recipe(data))
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "run")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("nmt: ")]
    assert lines == [f"nmt: {recipe}: task: task 'classify' reads its training data into memory; nmt prepare is "
                     "for parallel corpora (task seq2seq)"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("workers", ["99999999999999999999", "{too_many}", "0", "two"])
def test_workers_beyond_the_bound_are_one_line(tmp_path, tiny, capsys, workers):
    """--workers forks that many processes: at most two per CPU core, and a number, never an OverflowError."""
    from nmt.options import MAX_PREPARE_WORKERS

    _, recipe = tiny
    workers = workers.format(too_many=MAX_PREPARE_WORKERS + 1)
    capsys.readouterr()
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "run"), "--workers", workers]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nmt: --workers: expected "), err
    if workers.isdigit() and int(workers) > 1:
        assert f"at most {MAX_PREPARE_WORKERS} (two per CPU core" in lines[0]
    assert not (tmp_path / "run").exists()


def test_no_more_worker_processes_than_chunks(tmp_path, tiny, monkeypatch):
    """A forked pool starts all its processes at once: a one-chunk corpus starts none, a corpus of a few
    chunks one per chunk, whatever --workers asks; the pairs are those of the files either way."""
    import concurrent.futures

    from nmt.options import MAX_PREPARE_WORKERS

    data, recipe = tiny
    pools, real_pool = [], concurrent.futures.ProcessPoolExecutor

    def recording_pool(max_workers, *args, **kwargs):
        pools.append(max_workers)
        return real_pool(max_workers, *args, **kwargs)
    monkeypatch.setattr(tokenize_chunks.concurrent.futures, "ProcessPoolExecutor", recording_pool)
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "one"), "--workers", str(MAX_PREPARE_WORKERS)]) == 0
    assert pools == []  # one chunk a side: tokenised in this process

    size = max((data / f"train.{side}").stat().st_size for side in ("src", "tgt"))
    monkeypatch.setattr(tokenize_chunks, "CHUNK_BYTES", size // 2 + 1)  # two chunks a side (three where lines cross the cut)
    chunks = [len(list(tokenize_chunks.read_chunks(data / f"train.{side}"))) for side in ("src", "tgt")]
    assert main(["prepare", str(recipe), "--run-dir", str(tmp_path / "few"), "--workers", str(MAX_PREPARE_WORKERS)]) == 0
    assert pools == [min(n, MAX_PREPARE_WORKERS) for n in chunks]
    one, few = (tmp_path / name / "corpus" for name in ("one", "few"))
    for name in ("index.npy", "src-00000.bin", "tgt-00000.bin"):
        assert (one / name).read_bytes() == (few / name).read_bytes(), name
    assert json.loads((few / "manifest.json").read_text())["pairs_read"] == 120
