"""``nmt rerank``: an n-best list of ``nmt translate`` scored again by forward and channel runs.

The reverse task is its own inverse, so the shared trained run also serves as a channel model (it
scores how well a hypothesis, reversed, gives back the source). Forward scores must be the search's
own (its ranking is reproduced with weight 0 and the search's alpha, an ensemble's included), channel
scores must be the other direction's forced decoding, and tuning must write the row it reports best.
"""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # where the shared trained run lives
from reliability_support import error_lines, other_run, reliability_data, run_cli, trained_run  # noqa: E402,F401

from nmt.metrics import score as corpus_score  # noqa: E402
from nmt.rerank import Candidate, pick, read_nbest, score_candidates  # noqa: E402
from nmt.runs import fitted_dir, load_run  # noqa: E402
from nmt.score import score_lines  # noqa: E402

LINES = 30
BEAM = 4


@pytest.fixture(scope="module")
def dev(tmp_path_factory, reliability_data) -> tuple[Path, Path]:
    """The first LINES source and reference lines of the reverse task's dev set."""
    root = tmp_path_factory.mktemp("rerank-dev")
    paths = []
    for name in ("dev.src", "dev.tgt"):
        path = root / name
        path.write_text("\n".join((reliability_data / name).read_text().splitlines()[:LINES]) + "\n")
        paths.append(path)
    return paths[0], paths[1]


def nbest_of(capsys, tmp_path: Path, runs: list[Path], source: Path, alpha: float = 0.6) -> Path:
    """``nmt translate --beam 4 --nbest 4`` of ``source`` with ``runs`` (an ensemble if several)."""
    path = tmp_path / "dev.nbest"
    runs_args = [a for run in runs for a in ("--run", run)]
    code, _, err = run_cli(capsys, "translate", *runs_args, "-i", source, "-o", path, "--beam", BEAM,
                           "--nbest", BEAM, "--alpha", alpha, "--device", "cpu")
    assert code == 0, err[-2000:]
    return path


def search_scores(path: Path) -> list[list[tuple[str, float]]]:
    """Each input line's (hypothesis, score) pairs, in the list's order."""
    lines: dict[int, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        index, text, value = line.split(" ||| ")
        lines.setdefault(int(index), []).append((text, float(value)))
    return [lines[i] for i in sorted(lines)]


@pytest.mark.parametrize("ensemble", [False, True], ids=["one-run", "ensemble"])
def test_forward_scores_are_the_searchs_own_and_weight_0_keeps_its_ranking(capsys, tmp_path, trained_run,
                                                                           other_run, dev, ensemble):
    runs = [trained_run, other_run] if ensemble else [trained_run]
    source, _ = dev
    nbest = nbest_of(capsys, tmp_path, runs, source)
    searched = search_scores(nbest)
    candidates = score_candidates(read_nbest(nbest, LINES), source.read_text().splitlines(), runs, [],
                                  "best", "best", 4000, "cpu")
    compared = 0
    for src, line, found in zip(source.read_text().splitlines(), candidates, searched):
        assert [c.text for c in line] == [text for text, _ in found]
        limit = int(len(src.split()) * 2.0) + 10  # the search's longest output (--max-length-ratio 2)
        for candidate, (_, value) in zip(line, found):
            if candidate.pieces - 1 < limit:  # ended with EOS (at the limit, forced decoding adds the EOS)
                assert candidate.score(0.0, 0.6) == pytest.approx(value, abs=6e-5)  # the list prints 4 decimals
                compared += 1
    assert compared > LINES
    code, out, err = run_cli(capsys, "rerank", "--nbest", nbest, "-i", source, *[a for r in runs for a in ("--run", r)],
                             "--alpha", "0.6", "--device", "cpu")
    assert code == 0, err[-2000:]
    assert out.splitlines() == [found[0][0] for found in searched]
    assert any(len({value for _, value in found}) > 1 for found in searched)  # the ranking had something to keep


def test_channel_scores_are_the_other_directions_forced_decoding(capsys, tmp_path, trained_run, other_run, dev):
    source, _ = dev
    nbest = nbest_of(capsys, tmp_path, [trained_run], source)
    sources = source.read_text().splitlines()
    candidates = score_candidates(read_nbest(nbest, LINES), sources, [trained_run], [other_run], "best", "best",
                                  4000, "cpu")
    forward_task, channel_task = load_run(trained_run, device="cpu"), load_run(other_run, device="cpu")
    for src, line in zip(sources, candidates):
        hyps = [c.text for c in line]
        forward = score_lines(forward_task, [src] * len(hyps), hyps, 4000)
        channel = score_lines(channel_task, hyps, [src] * len(hyps), 4000)
        for candidate, f, c in zip(line, forward, channel):
            assert candidate.forward == pytest.approx(f.logprob, abs=1e-4)
            assert candidate.pieces == len(f.token_logprobs)
            assert candidate.channel == pytest.approx(c.logprob, abs=1e-4)
            assert candidate.source_pieces == len(c.token_logprobs)
    assert any(c.channel != pytest.approx(c.forward, abs=1e-3) for line in candidates for c in line)


def test_the_channel_is_weighed_per_source_piece_beside_the_length_penalised_forward_score():
    fluent = Candidate("fluent but short", forward=-2.0, pieces=4, channel=-9.0, source_pieces=3)
    faithful = Candidate("faithful", forward=-3.0, pieces=5, channel=-1.0, source_pieces=3)
    assert pick([[fluent, faithful]], 0.0, 0.0) == ["fluent but short"]
    assert pick([[fluent, faithful]], 1.0, 0.0) == ["faithful"]
    assert faithful.score(0.5, 1.0) == pytest.approx(-3.0 / ((5 + 5) / 6) + 0.5 * -1.0 / 3)
    # the channel term does not grow with the hypothesis: a longer one gains nothing from it
    longer = Candidate("faithful and more", forward=-3.0, pieces=9, channel=-1.0, source_pieces=3)
    assert longer.score(1.0, 1.0) - longer.score(0.0, 1.0) == pytest.approx(faithful.score(1.0, 1.0) -
                                                                            faithful.score(0.0, 1.0))
    assert pick([[], [faithful]], 1.0, 0.6) == ["", "faithful"]  # an empty source line stays empty


def test_tuning_on_a_reference_writes_the_row_it_reports_best(capsys, tmp_path, trained_run, dev):
    source, reference = dev
    nbest = nbest_of(capsys, tmp_path, [trained_run], source)
    out = tmp_path / "best.txt"
    code, _, err = run_cli(capsys, "rerank", "--nbest", nbest, "-i", source, "--run", trained_run, "--channel",
                           trained_run, "--weight", "0,0.5,3", "--alpha", "0,1.5", "--ref", reference, "-o", out,
                           "--device", "cpu")
    assert code == 0, err[-2000:]
    rows = [tuple(map(float, m.groups())) for m in re.finditer(r"^\s*([\d.]+)\s+([\d.]+)\s+([\d.]+)$", err, re.M)]
    assert [(w, a) for w, a, _ in rows] == [(w, a) for w in (0, 0.5, 3) for a in (0, 1.5)]
    chosen = re.search(r"chosen: --weight (\S+) --alpha (\S+) \(BLEU ([\d.]+)\)", err)
    weight, alpha, bleu = float(chosen[1]), float(chosen[2]), float(chosen[3])
    assert bleu == max(b for _, _, b in rows)
    written = out.read_text().splitlines()
    refs = reference.read_text().splitlines()
    assert round(corpus_score(written, [refs], ("bleu",))["bleu"].score, 2) == bleu
    # the chosen values, passed back without a reference, write the same lines (as for a test set)
    code, applied, err = run_cli(capsys, "rerank", "--nbest", nbest, "-i", source, "--run", trained_run,
                                 "--channel", trained_run, "--weight", weight, "--alpha", alpha, "--device", "cpu")
    assert code == 0, err[-2000:]
    assert applied.splitlines() == written


def test_padding_entries_are_dropped_and_empty_sources_stay_empty(capsys, tmp_path, trained_run):
    source = tmp_path / "src.txt"
    source.write_text("a b c\n\nd e\n")
    nbest = tmp_path / "list"
    nbest.write_text("0 ||| c b a ||| -0.1\n0 ||| ||| -inf\n1 ||| ||| 0.0000\n2 ||| e d ||| -0.2\n"
                     "2 ||| d e ||| -3.0\n")
    code, out, err = run_cli(capsys, "rerank", "--nbest", nbest, "-i", source, "--run", trained_run,
                             "--device", "cpu")
    assert code == 0, err[-2000:]
    lines = out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    assert lines[0] == "c b a"  # the only real hypothesis, not the padding
    assert read_nbest(nbest, 3) == [[(1, "c b a")], [(3, "")], [(4, "e d"), (5, "d e")]]  # with their lines


@pytest.mark.parametrize("case, content, options, expected", [
    ("not a list", "0 ||| x\n", (), r"list:1: expected 'i \|\|\| hypothesis \|\|\| score'"),
    ("bad number", "zero ||| x ||| -1\n", (), r"list:1: expected an input line number and a score"),
    ("beyond the source", "0 ||| x ||| -1\n5 ||| y ||| -1\n", (), r"list:2: input line 5 is not among the 2"),
    ("out of order", "1 ||| x ||| -1\n0 ||| y ||| -1\n", (), r"list:2: input line 0 after 1"),
    ("a line missing", "0 ||| x ||| -1\n", (), r"list: no hypothesis for input line 1"),
    ("grid without ref", "0 ||| x ||| -1\n1 ||| y ||| -1\n", ("--alpha", "0.6,1"), r"--ref: several weights"),
    ("weight without channel", "0 ||| x ||| -1\n1 ||| y ||| -1\n", ("--weight", "0.5"), r"--channel: a channel"),
    ("bad grid", "0 ||| x ||| -1\n1 ||| y ||| -1\n", ("--alpha", "0.6,big"), r"--alpha: expected comma-separated"),
    ("negative weight", "0 ||| x ||| -1\n1 ||| y ||| -1\n", ("--weight", "-1"), r"--weight: expected numbers from 0"),
    ("hypothesis over the token cap", "0 ||| x ||| -1\n1 ||| y ||| -1\n1 ||| y y y y ||| -2\n",
     ("--max-input-tokens", "3"), r"list:3: line has 4 tokens, more than --max-input-tokens \(3\)"),
    ("source over the token cap", "0 ||| x ||| -1\n1 ||| y ||| -1\n", ("--max-input-tokens", "1"),
     r"src.txt:1: line has 2 tokens, more than --max-input-tokens \(1\)"),
    ("list line over the byte cap", "0 ||| x ||| -1\n1 ||| " + "y " * 30_000 + "||| -1\n", (),
     r"list:2: line is longer than 51200 bytes; raise --max-input-tokens"),
])
def test_bad_input_is_one_line_naming_the_place(capsys, tmp_path, trained_run, case, content, options, expected):
    source = tmp_path / "src.txt"
    source.write_text("a b\nc d\n")
    nbest = tmp_path / "list"
    nbest.write_text(content)
    out = tmp_path / "out.txt"
    out.write_text("kept\n")
    code, _, err = run_cli(capsys, "rerank", "--nbest", nbest, "-i", source, "--run", trained_run, "-o", out,
                           "--device", "cpu", *options)
    assert code == 2, err
    assert len(error_lines(err)) == 1 and re.search(expected, error_lines(err)[0]), err
    assert out.read_text() == "kept\n"  # nothing written over


def test_a_reference_of_another_length_and_an_output_over_an_input_are_refused(capsys, tmp_path, trained_run):
    source = tmp_path / "src.txt"
    source.write_text("a b\nc d\n")
    nbest = tmp_path / "list"
    nbest.write_text("0 ||| b a ||| -1\n1 ||| d c ||| -1\n")
    reference = tmp_path / "ref.txt"
    reference.write_text("b a\n")
    code, _, err = run_cli(capsys, "rerank", "--nbest", nbest, "-i", source, "--run", trained_run, "--ref",
                           reference, "--device", "cpu")
    assert code == 2 and "ref.txt: line count differs" in error_lines(err)[0], err
    code, _, err = run_cli(capsys, "rerank", "--nbest", nbest, "-i", source, "--run", trained_run, "-o", nbest,
                           "--device", "cpu")
    assert code == 2 and len(error_lines(err)) == 1, err
    assert nbest.read_text() == "0 ||| b a ||| -1\n1 ||| d c ||| -1\n"


@pytest.mark.parametrize("option", ["--run", "--channel"])
def test_runs_of_one_side_with_different_tokenizers_are_refused_in_one_line(capsys, tmp_path, trained_run, dev,
                                                                             option):
    source, _ = dev
    nbest = nbest_of(capsys, tmp_path, [trained_run], source)
    other = Path(shutil.copytree(trained_run, tmp_path / "swapped"))
    vocab = fitted_dir(other) / "joint.vocab.json"
    payload = json.loads(vocab.read_text())
    payload["tokens"][4], payload["tokens"][5] = payload["tokens"][5], payload["tokens"][4]  # other ids
    vocab.write_text(json.dumps(payload))
    runs = ["--run", trained_run] + (["--run", other] if option == "--run" else ["--channel", trained_run,
                                                                                 "--channel", other])
    code, out, err = run_cli(capsys, "rerank", "--nbest", nbest, "-i", source, *runs, "--device", "cpu")
    assert code == 2 and out == ""
    [message] = error_lines(err)
    assert str(other) in message and "tokenizer differs" in message


def test_hypotheses_holding_the_separator_are_read_whole_with_or_without_alignments(tmp_path):
    """A model may write '|||' itself (a token of its vocabulary): the number is before the first separator and
    the score after the last, or before --alignments' field. Before, such a list nmt translate wrote was refused."""
    path = tmp_path / "nbest.txt"
    path.write_text("0 ||| ||| ||| a a ||| -2.50\n"
                    "0 ||| x ||| 3 ||| -2.5 ||| 0-0 1-1\n"
                    "1 ||| a b ||| -1.5 ||| 0-1 1-0\n"
                    "1 ||| a ||| 5 ||| -1 ||| \n"
                    "1 |||  ||| -inf\n")
    nbest = read_nbest(path, 2)
    assert [[(e.line, e.text) for e in entries] for entries in nbest] == [
        [(1, "||| ||| a a"), (2, "x ||| 3")], [(3, "a b"), (4, "a ||| 5")]]
