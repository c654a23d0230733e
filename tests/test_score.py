"""``nmt score``: forced decoding agrees with the loss the model reports in training.

The corpus NLL per target token must be the ``val/loss`` the run logged for the same dev set and
weights, and the loss the task computes on any pairs (empty lines included); per-token numbers must
add up to each line's total, whatever the batching.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # where the shared trained run lives
from reliability_support import reliability_data, run_cli, trained_run  # noqa: E402,F401

from nmt.data.parallel import PairCollator  # noqa: E402
from nmt.runs import load_run  # noqa: E402

CORPUS = re.compile(r"^corpus: (\d+) lines, (\d+) target tokens \(EOS included\), NLL (\S+) nats/token, ppl (\S+)$",
                    re.M)


def score_json(capsys, run, src, tgt, *options) -> tuple[list[dict], re.Match]:
    code, out, err = run_cli(capsys, "score", "--run", run, "--src", src, "--tgt", tgt, "--device", "cpu",
                             "--json", *options)
    assert code == 0, err
    corpus = CORPUS.search(err)
    assert corpus, err
    return [json.loads(line) for line in out.splitlines()], corpus


def logged_best_val_loss(run: Path) -> float:
    """The val/loss of the validation best.ckpt was saved at: the first with the highest val/bleu."""
    with open(run / "logs" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/loss")]
    best = max(rows, key=lambda r: float(r["val/bleu"]))  # max keeps the first of equals, as ModelCheckpoint does
    return float(best["val/loss"])


def test_corpus_nll_is_the_logged_validation_loss(trained_run, reliability_data, capsys):
    src, tgt = reliability_data / "dev.src", reliability_data / "dev.tgt"
    lines, corpus = score_json(capsys, trained_run, src, tgt, "--checkpoint", "best")
    targets = tgt.read_text().splitlines()
    assert [d["line"] for d in lines] == list(range(1, len(targets) + 1))
    for d, target in zip(lines, targets):
        assert d["tokens"] == target.split() + ["</s>"]  # the whitespace tokenizer: a piece per word
        assert len(d["token_logprobs"]) == len(d["tokens"]) and all(lp <= 0 for lp in d["token_logprobs"])
        assert math.fsum(d["token_logprobs"]) == pytest.approx(d["logprob"], abs=1e-9)
        assert d["ppl"] == pytest.approx(math.exp(-d["logprob"] / len(d["tokens"])))
    ntokens = sum(len(d["tokens"]) for d in lines)
    nll = -sum(d["logprob"] for d in lines) / ntokens
    assert nll == pytest.approx(logged_best_val_loss(trained_run), abs=1e-4)
    assert (int(corpus[1]), int(corpus[2])) == (len(targets), ntokens)
    assert float(corpus[3]) == pytest.approx(nll, abs=1e-6)
    assert float(corpus[4]) == pytest.approx(math.exp(nll), rel=1e-4)


def model_loss(task, sources: list[str], targets: list[str]) -> float:
    """The task's own loss (no label smoothing) per target token over these pairs, in batches of 3."""
    pairs = task.tokenize_pairs(sources, targets)
    collate = PairCollator(task.pad_id, task.bos_id, task.eos_id)
    total, ntokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(pairs), 3):
            loss, n = task.loss(collate(pairs[start:start + 3]))
            total, ntokens = total + loss.item(), ntokens + n
    return total / ntokens


def test_score_is_the_models_loss_on_pairs_with_empty_lines_in_any_batching(trained_run, tmp_path, capsys):
    sources = ["a0 b1 c2 d3", "", "f3 e2", "c1 c1 d2 a3 b0 e1 f2", "b2", "d0 d1"]
    targets = ["d3 c2 b1 a0", "a0", "", "f2 e1 b0 a3 d2 c1 c1", "b2 b2 b2", "d1 d0"]
    (tmp_path / "s.txt").write_text("".join(s + "\n" for s in sources))
    (tmp_path / "t.txt").write_text("".join(t + "\n" for t in targets))
    lines, corpus = score_json(capsys, trained_run, tmp_path / "s.txt", tmp_path / "t.txt")
    assert [d["tokens"] for d in lines] == [t.split() + ["</s>"] for t in targets]  # input order kept
    nll = -sum(d["logprob"] for d in lines) / sum(len(d["tokens"]) for d in lines)
    assert nll == pytest.approx(model_loss(load_run(trained_run, device="cpu"), sources, targets), abs=1e-4)
    # one pair per batch gives the same numbers: padding and batch neighbours change nothing
    alone, _ = score_json(capsys, trained_run, tmp_path / "s.txt", tmp_path / "t.txt", "--batch-size", "1")
    for d, a in zip(lines, alone):
        assert a["tokens"] == d["tokens"] and a["token_logprobs"] == pytest.approx(d["token_logprobs"], abs=1e-5)
    # plain text: one total a line, here to a file
    code, out, err = run_cli(capsys, "score", "--run", trained_run, "--src", tmp_path / "s.txt", "--tgt",
                             tmp_path / "t.txt", "--device", "cpu", "-o", tmp_path / "scores.txt")
    assert code == 0 and out == "" and CORPUS.search(err), err
    totals = [float(x) for x in (tmp_path / "scores.txt").read_text().splitlines()]
    assert totals == pytest.approx([d["logprob"] for d in lines], abs=1e-6)


def test_line_count_mismatch_is_one_line_naming_both_files(tmp_path, capsys):
    (tmp_path / "s.txt").write_text("a0\nb1\nc2\n")
    (tmp_path / "t.txt").write_text("a0\nb1\n")
    code, out, err = run_cli(capsys, "score", "--run", tmp_path / "no-run", "--src", tmp_path / "s.txt",
                             "--tgt", tmp_path / "t.txt", "--max-input-tokens", "10")
    assert code == 2 and out == ""
    # checked before the run is loaded (this one does not exist; with --max-input-tokens given, not
    # even its recipe is read)
    assert err.strip() == f"nmt: {tmp_path / 't.txt'}: line count differs from {tmp_path / 's.txt'} (2 vs 3)"



def fifo(path: Path, text: str) -> Path:
    """A named pipe at ``path`` that a thread fills with ``text`` (read once, as a shell's <(...) is)."""
    os.mkfifo(path)
    threading.Thread(target=path.write_text, args=(text,), daemon=True).start()
    return path


@pytest.mark.parametrize("src_lines,tgt_lines,error", [
    (3, 3, None), (3, 2, "line count differs from {src} (2 vs 3)"), (0, 0, "file is empty")])
def test_pipes_are_scored_and_checked_as_they_are_read(trained_run, reliability_data, tmp_path, capsys,
                                                       src_lines, tgt_lines, error):
    """A pipe reads once: its lines are scored as files' are, and a mismatch or an empty input is the
    same one-line error, found while reading, with an earlier output file left as it was."""
    sources = (reliability_data / "dev.src").read_text().splitlines(keepends=True)
    targets = (reliability_data / "dev.tgt").read_text().splitlines(keepends=True)
    (tmp_path / "s.txt").write_text("".join(sources[:src_lines]))
    (tmp_path / "t.txt").write_text("".join(targets[:tgt_lines]))
    args = ["score", "--run", trained_run, "--device", "cpu", "-o", tmp_path / "out.txt"]
    code, *_ = run_cli(capsys, *args, "--src", tmp_path / "s.txt", "--tgt", tmp_path / "t.txt")
    if error is None:
        assert code == 0
        from_files = (tmp_path / "out.txt").read_text()
    (tmp_path / "out.txt").write_text("earlier scores\n")
    src = fifo(tmp_path / "s.pipe", "".join(sources[:src_lines]))
    tgt = fifo(tmp_path / "t.pipe", "".join(targets[:tgt_lines]))
    code, out, err = run_cli(capsys, *args, "--src", src, "--tgt", tgt)
    if error is None:
        assert code == 0 and (tmp_path / "out.txt").read_text() == from_files and len(from_files.splitlines()) == 3
    else:
        assert code == 2 and err.strip() == f"nmt: {tgt if tgt_lines else src}: " + error.format(src=src)
        assert (tmp_path / "out.txt").read_text() == "earlier scores\n"


def test_score_lines_names_an_over_long_side_without_locations(trained_run):
    """Called from Python with a cap and no file names, the error still says which side and line."""
    from nmt.errors import DataError
    from nmt.score import score_lines

    task = load_run(trained_run, device="cpu")
    with pytest.raises(DataError, match=r"target line 8: line has 4 tokens, more than --max-input-tokens \(3\)"):
        score_lines(task, ["a0 b1", "c2"], ["b1 a0", "c2 c2 c2 c2"], 4000, first_line=7, max_tokens=3)


def test_dash_scores_standard_input(trained_run, reliability_data, capsys):
    """--tgt - read a file named '-' ("file not found"), as did nmt evaluate --hyp - and nmt rerank -i -."""
    import subprocess

    from reliability_support import NMT

    src, tgt = reliability_data / "dev.src", reliability_data / "dev.tgt"
    from_files, _ = score_json(capsys, trained_run, src, tgt)
    argv = [*NMT, "score", "--run", str(trained_run), "--src", str(src), "--device", "cpu", "--json"]
    piped = subprocess.run([*argv, "--tgt", "-"], input=tgt.read_text(), capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line) for line in piped.stdout.splitlines()] == from_files
    twice = subprocess.run([*argv[:len(NMT) + 3], "--src", "-", "--tgt", "-", "--device", "cpu"], input="", capture_output=True,
                           text=True, timeout=300)
    assert twice.returncode == 2 and "standard input) is already read by --src" in twice.stderr, twice.stderr
