"""Ensemble decoding (``nmt translate --run A --run B``): one search over several runs' averaged probabilities.

A model ensembled with itself must translate exactly as it does alone (the state and memory
bookkeeping of every member follows the beams); two different runs, here of different shapes
(GRU and Bahdanau against LSTM and Luong), must give the mean of their probabilities at every step
and translations of their own; runs with different tokenizers are refused in one line.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # where the shared trained run lives
from reliability_support import error_lines, other_run, reliability_data, run_cli, trained_run  # noqa: E402,F401

from nmt.cli import main  # noqa: E402
from nmt.ensemble import Ensemble, mean_probability  # noqa: E402
from nmt.runs import fitted_dir, load_run  # noqa: E402
from nmt.translate import encode_lines, translate_lines  # noqa: E402

DEV_LINES = 40  # of the reliability corpus's dev set: enough lines for two runs to disagree somewhere


@pytest.fixture(scope="module")
def source(reliability_data) -> Path:
    return reliability_data / "dev.src"


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()[:DEV_LINES]


def translate(capsys, runs: list[Path], source: Path, *options) -> list[str]:
    """``nmt translate --run R ... -i SOURCE`` in-process: its output lines (exit 0 asserted)."""
    argv = ["translate", *[a for run in runs for a in ("--run", run)], "-i", source, "--device", "cpu", *options]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err[-2000:]
    return out.splitlines()


def few_lines(tmp_path: Path, source: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines_of(source)) + "\n")
    return path


@pytest.mark.parametrize("beam", [1, 4])
def test_a_model_ensembled_with_itself_translates_exactly_as_alone(capsys, tmp_path, trained_run, source, beam):
    text = few_lines(tmp_path, source)
    options = ("--beam", beam, "--nbest", beam)  # with --nbest, every hypothesis and its score is printed
    alone = translate(capsys, [trained_run], text, *options)
    together = translate(capsys, [trained_run, trained_run], text, *options)
    assert len(alone) == DEV_LINES * beam
    assert together == alone


@pytest.mark.parametrize("beam, nbest", [(1, 1), (4, 4)])
def test_self_ensemble_scores_are_the_models_own_log_probabilities(trained_run, source, beam, nbest):
    task = load_run(trained_run, device="cpu")
    ensemble = Ensemble([task, load_run(trained_run, device="cpu")])
    lines = lines_of(source)
    alone = translate_lines(task, lines, beam, nbest, 0.6, 400, 2.0)
    together = translate_lines(ensemble, lines, beam, nbest, 0.6, 400, 2.0)
    assert [[(h.tokens, h.log_prob, h.score) for h in hyps] for hyps in together] == \
           [[(h.tokens, h.log_prob, h.score) for h in hyps] for hyps in alone]


def test_each_step_is_the_log_of_the_mean_of_the_members_probabilities(trained_run, other_run, source):
    first, second = load_run(trained_run, device="cpu"), load_run(other_run, device="cpu")
    ensemble = Ensemble([first, second])
    encoded = encode_lines(first, lines_of(source)[:6])
    src = torch.nn.utils.rnn.pad_sequence([torch.tensor(ids) for ids in encoded], batch_first=True)  # [B,S]
    src_len = torch.tensor([len(ids) for ids in encoded])  # [B]
    with torch.no_grad():
        memory, state = ensemble.encode(src, src_len)
        states = [m.encode(src, src_len)[1] for m in (first, second)]
        memories = [m.encode(src, src_len)[0] for m in (first, second)]
        prev = torch.full((len(encoded),), first.bos_id)
        for _ in range(3):  # a few steps: each member's own state must be carried to its next step
            plain, _ = ensemble.decode_step(prev, state, memory)  # [B,V]
            log_probs, state, weights = ensemble.decode_step_with_attention(prev, state, memory)  # [B,V], _, [B,S]
            torch.testing.assert_close(plain, log_probs)
            own = [m.decode_step_with_attention(prev, s, mem) for m, s, mem in zip((first, second), states, memories)]
            states = [s for _, s, _ in own]
            expected = torch.logsumexp(torch.stack([lp for lp, _, _ in own]), dim=0) - math.log(2)  # [B,V]
            torch.testing.assert_close(log_probs, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(weights, (own[0][2] + own[1][2]) / 2)
            torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(len(encoded)))  # a distribution
            prev = log_probs.argmax(-1)
    assert not torch.allclose(own[0][0], own[1][0], atol=1e-3)  # the members really differ


def test_the_mean_of_probabilities_is_exact_for_identical_members_and_safe_at_minus_infinity():
    log_probs = torch.log_softmax(torch.randn(3, 7), dim=-1)  # [B,V]
    assert torch.equal(mean_probability([log_probs, log_probs, log_probs]), log_probs)
    ruled_out = torch.tensor([[0.0, float("-inf")]])
    other = torch.tensor([[math.log(0.5), math.log(0.5)]])
    torch.testing.assert_close(mean_probability([ruled_out, other]), torch.tensor([[math.log(0.75), math.log(0.25)]]))
    assert torch.equal(mean_probability([ruled_out, ruled_out]), ruled_out)  # -inf stays -inf, never NaN


def test_two_different_runs_translate_unlike_either_alone(capsys, tmp_path, trained_run, other_run, source):
    text = few_lines(tmp_path, source)
    for beam in ("1", "4"):
        first = translate(capsys, [trained_run], text, "--beam", beam)
        second = translate(capsys, [other_run], text, "--beam", beam)
        together = translate(capsys, [trained_run, other_run], text, "--beam", beam)
        assert len(together) == DEV_LINES
        assert together != first and together != second, beam


def test_an_ensemble_reports_attention_for_alignments(capsys, tmp_path, trained_run, other_run, source):
    text = few_lines(tmp_path, source)
    out = translate(capsys, [trained_run, other_run], text, "--beam", "2", "--alignments")
    assert len(out) == DEV_LINES
    for source_line, line in zip(lines_of(source), out):
        hypothesis, alignment = line.split(" ||| ")
        for pair in alignment.split():
            i, j = map(int, pair.split("-"))
            assert i < len(source_line.split()) and j < len(hypothesis.split())


def test_runs_with_different_tokenizers_are_one_line_naming_both(capsys, tmp_path, trained_run, source):
    other = Path(shutil.copytree(trained_run, tmp_path / "swapped"))
    vocab = fitted_dir(other) / "joint.vocab.json"
    payload = json.loads(vocab.read_text())
    tokens = payload["tokens"]
    tokens[4], tokens[5] = tokens[5], tokens[4]  # same size (the weights still load), other ids
    vocab.write_text(json.dumps(payload))
    assert translate(capsys, [other], few_lines(tmp_path, source))  # alone it translates
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "--run", other, "-i", source,
                             "--device", "cpu")
    assert code == 2 and out == ""
    [message] = error_lines(err)
    assert str(trained_run) in message and str(other) in message and "tokenizer" in message, message
    assert "token 4 is" in message


def test_runs_whose_files_differ_but_not_their_vocabulary_make_an_ensemble(capsys, tmp_path, trained_run, source):
    """sentencepiece writes other bytes for the same vocabulary each time: the pieces decide."""
    other = Path(shutil.copytree(trained_run, tmp_path / "reformatted"))
    vocab = fitted_dir(other) / "joint.vocab.json"
    vocab.write_text(json.dumps(json.loads(vocab.read_text()), indent=4))  # other bytes, same tokens
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "--run", other, "-i", source,
                             "--beam", "1", "--device", "cpu")
    assert code == 0, err
    assert out.splitlines() == translate(capsys, [trained_run], source, "--beam", "1")


def test_the_onnx_engine_refuses_several_runs(capsys, trained_run, source):
    code, out, err = run_cli(capsys, "translate", "--run", trained_run, "--run", trained_run, "-i", source,
                             "--engine", "onnx")
    assert code == 2 and out == ""
    [message] = error_lines(err)
    assert message.startswith("nmt: --engine:") and "--engine torch" in message, message
