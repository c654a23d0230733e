"""A stray very long line in a training file (a missing newline, a binary blob) is read with a byte cap:
skipped as it is read, never held whole (split into words it would cost many times its size), and its
pair is dropped as too long, with every other pair still aligned."""
from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from conftest import reverse_recipe, write_reverse_corpus
from nmt.data import tokenize_chunks
from nmt.data.text import BYTES_PER_TOKEN, MAX_LINE_BYTES, iter_lines
from nmt.recipe import validate_recipe


def peak_bytes(work) -> tuple[object, int]:
    """What ``work()`` returns, and the most memory Python allocated meanwhile."""
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_iter_lines_cuts_a_long_line_without_holding_it(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"first\n" + b"x" * (4 << 20) + b"\nlast\n")
    cut: set[int] = set()
    lines, peak = peak_bytes(lambda: list(iter_lines(path, max_bytes=1000, cut=cut)))
    assert lines == ["first", "x" * 1000, "last"] and cut == {2}
    assert peak < 256 << 10  # the line is 4 MB


def test_iter_lines_reads_at_most_max_line_bytes_by_default(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"a\n" + "é".encode() * (MAX_LINE_BYTES // 2 + 10) + b"\nb")
    lines = list(iter_lines(path))
    assert [len(line.encode()) for line in lines] == [1, MAX_LINE_BYTES, 1]  # cut between characters


def test_a_line_longer_than_a_chunk_is_skipped_as_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(tokenize_chunks, "CHUNK_BYTES", 4096)
    lines = [b"w %d" % i for i in range(3000)]
    long = {5: 2 << 20, 1000: 700, 1500: 641, 2999: 3 << 20}  # line number: bytes (the last has no newline)
    for number, size in long.items():
        lines[number] = b"y" * size
    lines[7] = b"z" * 640  # at the cap: kept
    path = tmp_path / "t.txt"
    path.write_bytes(b"\n".join(lines))

    chunks, peak = peak_bytes(lambda: list(tokenize_chunks.read_chunks(path, 640)))
    assert peak < 256 << 10  # the file is 5 MB
    data, flagged, first = b"", [], 0
    for chunk, too_long in chunks:
        data += chunk
        flagged += [first + int(k) for k in too_long]
        first += chunk.count(b"\n") + (not chunk.endswith(b"\n"))
    assert data.split(b"\n")[:-1] == [b"" if k in long else line for k, line in enumerate(lines)]
    assert flagged == sorted(long) and first == len(lines)


def make_task(tmp_path: Path, data: Path, workers: int, **data_section):
    recipe = validate_recipe(reverse_recipe(data, data=data_section), tmp_path / "r.yaml")
    recipe.task_cls.prepare_run(recipe, tmp_path / "run", workers=workers)
    return recipe.task_cls.from_run(recipe, tmp_path / "run")


@pytest.mark.parametrize("chunk_bytes, workers", [(256, 2), (1 << 20, 1)])
def test_pairs_with_a_line_over_the_byte_cap_are_dropped_wherever_it_falls(tmp_path, monkeypatch, chunk_bytes, workers):
    """A line of more bytes than data.max_length tokens may take (BYTES_PER_TOKEN each, as nmt translate
    bounds its input) is too long, on either side, inside a chunk or across many."""
    monkeypatch.setattr(tokenize_chunks, "CHUNK_BYTES", chunk_bytes)
    data = write_reverse_corpus(tmp_path / "data", n_train=200, n_dev=10)
    cap = 10 * BYTES_PER_TOKEN
    sides = {side: (data / f"train.{side}").read_text().splitlines() for side in ("src", "tgt")}
    sides["src"][20] = "x" * (cap + 1)  # one word: few tokens, many bytes
    sides["tgt"][90] = "a " * 3000  # many tokens and bytes
    sides["src"][150] = "y" * cap  # at the cap, one token: kept
    for side, lines in sides.items():
        (data / f"train.{side}").write_text("\n".join(lines) + "\n")
    task = make_task(tmp_path, data, workers, max_length=10)

    train = task.make_datamodule().train_set
    seen = {p.index: (p.src, p.tgt) for p in (train[i] for i in range(len(train)))}
    assert sorted(seen) == [i for i in range(200) if i not in (20, 90)]
    assert all(seen[i] == (task.src_tokenizer.encode(sides["src"][i]), task.tgt_tokenizer.encode(sides["tgt"][i]))
               for i in seen)
    manifest = json.loads((tmp_path / "run" / "corpus" / "manifest.json").read_text())
    assert manifest["dropped"] == {"empty": 0, "too_long": 2, "ratio": 0}


def test_the_tokenizer_is_fitted_on_long_lines_cut(tmp_path):
    """Fitting the tokenizer streams the training text: a line past MAX_LINE_BYTES is cut there."""
    data = write_reverse_corpus(tmp_path / "data", n_train=50, n_dev=10)
    lines = (data / "train.src").read_text().splitlines()
    lines[10] = "a " * (MAX_LINE_BYTES // 2) + "beyond"
    (data / "train.src").write_text("\n".join(lines) + "\n")
    task = make_task(tmp_path, data, workers=1)
    pieces = json.loads((tmp_path / "run" / "fitted" / "joint.vocab.json").read_text())["tokens"]
    assert "a" in pieces and "beyond" not in pieces
    assert 10 not in {p.index for p in (task.make_datamodule().train_set[i] for i in range(49))}
