"""Messages that say what happened: one line naming the file, key or option, exit code 2.

Checkpoints that are not checkpoints, weights that do not fit the recipe, a corrupt tokenizer model,
empty or mismatched files for ``nmt evaluate``, closed standard streams and a device that is not there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from reliability_support import (NMT, check, error_lines, record, reliability_data, run_cli,  # noqa: F401
                                 trained_run)


@pytest.fixture
def workdir(tmp_path, monkeypatch, trained_run):
    """cwd with ``run/`` (a copy of the trained run) and ``in.txt``."""
    shutil.copytree(trained_run, tmp_path / "run")
    (tmp_path / "in.txt").write_text("ab cd\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def translate_argv(*extra) -> list[str]:
    return ["translate", "--run", "run", "-i", "in.txt", "--beam", "1", "--device", "cpu", *extra]


def test_random_bytes_are_not_a_checkpoint(workdir, capsys):
    (workdir / "x.ckpt").write_bytes(bytes(range(256)) * 40)
    message = check(capsys, "checkpoint that is random bytes", *translate_argv("--checkpoint", "x.ckpt"))
    assert message == "nmt: x.ckpt: not a PyTorch checkpoint (not a zip archive)"


@pytest.mark.parametrize("content, reason", [(b"epoch: 3\nloss: 0.1\n", "not a zip archive"), (b"", "empty file")])
def test_text_or_empty_file_is_not_a_checkpoint(workdir, capsys, content, reason):
    (workdir / "x.ckpt").write_bytes(content)
    code, out, err = run_cli(capsys, *translate_argv("--checkpoint", "x.ckpt"))
    assert code == 2 and error_lines(err) == [f"nmt: x.ckpt: not a PyTorch checkpoint ({reason})"], err


def test_device_file_is_refused_without_reading_it(workdir, capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    message = check(capsys, "checkpoint that is a device (/dev/zero)", *translate_argv("--checkpoint", "/dev/zero"))
    assert message == "nmt: /dev/zero: not a regular file, expected a checkpoint file"


def test_checkpoint_that_does_not_fit_the_recipe(workdir, capsys):
    recipe_path = workdir / "run" / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["model"]["decoder"]["hidden_size"] = 96
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    message = check(capsys, "checkpoint whose shapes do not fit the recipe (edited hidden_size)", *translate_argv())
    assert message.startswith("nmt: run/checkpoints/best.ckpt: weights do not fit the run's model: ")
    assert "is [384, 192] in the checkpoint, [288, 160] in the model" in message  # 3 x 128 gates, 3 x 96
    assert "more parameters differ" in message


def test_corrupt_sentencepiece_model_in_a_run(workdir, capsys):
    """A run whose tokenizer is sentencepiece, with its model file truncated or empty."""
    from plugins.nmt_builtin.sentencepiece_tokenizer import SentencePieceTokenizer

    directory = workdir / "sp"
    texts = [" ".join("abcdefgh"[(i + j) % 8] * 2 for j in range(5)) for i in range(200)]
    SentencePieceTokenizer.train(SentencePieceTokenizer.Config(vocab_size=30), texts, directory, "joint")
    model = (directory / "joint.model").read_bytes()
    recipe_path = workdir / "run" / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe["data"]["tokenizer"] = {"name": "sentencepiece", "vocab_size": 30}
    recipe["data"]["joint_vocab"] = True
    recipe_path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    target = workdir / "run" / "fitted" / "joint.model"
    target.write_bytes(model[: len(model) // 3])
    message = check(capsys, "truncated sentencepiece model in a run directory", *translate_argv())
    assert message.startswith("nmt: run/fitted/joint.model: not a sentencepiece model, truncated or corrupt")
    target.write_bytes(b"")
    code, out, err = run_cli(capsys, *translate_argv())
    assert code == 2 and error_lines(err) == ["nmt: run/fitted/joint.model: not a sentencepiece model, truncated "
                                              "or corrupt (empty file); copy the run's fitted/ directory again or "
                                              "retrain"], err


def test_cuda_device_without_cuda(workdir, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same row on machines with CUDA
    message = check(capsys, "--device cuda on a machine without CUDA",
                    "translate", "--run", "run", "-i", "in.txt", "--device", "cuda")
    assert message == "nmt: --device: cuda: CUDA is not available on this machine; use --device cpu or auto"


def test_evaluate_empty_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("hyp.txt").write_text("")
    Path("ref.txt").write_text("")
    message = check(capsys, "nmt evaluate on empty files", "evaluate", "--hyp", "hyp.txt", "--ref", "ref.txt")
    assert message == "nmt: hyp.txt: file is empty"


def test_evaluate_line_counts_differ(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("hyp.txt").write_text("a b\nc d\n")
    Path("ref.txt").write_text("a b\n")
    message = check(capsys, "nmt evaluate, hypothesis and reference line counts differ",
                    "evaluate", "--hyp", "hyp.txt", "--ref", "ref.txt")
    assert message == "nmt: ref.txt: line count differs from hyp.txt (1 vs 2)"


@pytest.mark.parametrize("side", ["--hyp", "--ref"])
def test_evaluate_refuses_a_line_over_max_line_bytes_by_file_and_line(tmp_path, capsys, monkeypatch, side):
    """A file without newlines (binary, or a whole corpus on one line) is not held whole: the first
    line over --max-line-bytes (1 MiB by default) names its file and line; at the cap it is scored."""
    monkeypatch.chdir(tmp_path)
    Path("short.txt").write_text("a b\nc d\n")
    Path("long.txt").write_bytes(b"a b\n" + b"x" * 2_000_000 + b"\n")
    files = {"--hyp": "long.txt", "--ref": "short.txt"} if side == "--hyp" else {"--hyp": "short.txt", "--ref": "long.txt"}
    argv = ["evaluate", "--hyp", files["--hyp"], "--ref", files["--ref"], "--metrics", "chrf"]
    message = check(capsys, f"nmt evaluate, a 2 MB line in the {side[2:]} file", *argv)
    assert message == "nmt: long.txt:2: line is longer than 1048576 bytes; raise --max-line-bytes to read it"
    Path("long.txt").write_text("a b\n" + "x" * 10 + "\n")  # 10 bytes, its newline not counted
    code, out, err = run_cli(capsys, *argv, "--max-line-bytes", "10")
    assert code == 0 and out.startswith("chrF2 = "), err
    code, _, err = run_cli(capsys, *argv, "--max-line-bytes", "9")
    assert code == 2 and "long.txt:2: line is longer than 9 bytes" in err


def _close(fd: int):
    return lambda: os.close(fd)


def test_translate_with_stdin_closed(workdir):
    argv = ["translate", "--run", "run", "--beam", "1", "--device", "cpu"]
    proc = subprocess.run([*NMT, *argv], capture_output=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, preexec_fn=_close(0), timeout=300)
    message = record("standard input closed (nmt translate <&-)", argv + ["<&-"], proc.returncode, proc.stderr)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [message], proc.stderr[-2000:]
    assert message == "nmt: <stdin>: standard input is closed; pass the input with -i FILE"


def test_predict_with_stdin_closed(workdir):
    proc = subprocess.run([*NMT, "predict", "--run", "run", "--device", "cpu"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, preexec_fn=_close(0), timeout=300)
    assert proc.returncode == 2 and error_lines(proc.stderr) == [
        "nmt: <stdin>: standard input is closed; pass the input with -i FILE"], proc.stderr[-2000:]


@pytest.mark.parametrize("command", [["translate", "--run", "run", "-i", "in.txt", "--beam", "1", "--device", "cpu"],
                                     ["evaluate", "--hyp", "in.txt", "--ref", "in.txt"]])
def test_stdout_closed(workdir, command):
    proc = subprocess.run([*NMT, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=_close(1), timeout=300)
    assert proc.returncode == 2 and error_lines(proc.stderr) == ["nmt: <stdout>: standard output is closed"], \
        proc.stderr[-2000:]


def test_error_with_stderr_closed_still_exits_2(workdir):
    proc = subprocess.run([*NMT, "translate", "--run", "missing", "-i", "in.txt"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_close(2), timeout=300)
    assert proc.returncode == 2 and proc.stdout == b""


def test_predict_with_a_translation_run_points_to_translate(workdir, capsys):
    message = check(capsys, "nmt predict with a translation run", "predict", "--run", "run", "-i", "in.txt")
    assert message == "nmt: task 'seq2seq': does not support nmt predict; it translates: use nmt translate"


def test_what_plugin_code_prints_does_not_go_between_the_translations(workdir, capsys, monkeypatch):
    """A plugin's print() inside the command went into standard output, between the lines that answer the input."""
    import nmt.translate

    monkeypatch.setattr(nmt.translate, "translate_lines", nmt.translate.translate_lines)  # put back after the test
    (workdir / "noisy.py").write_text(
        "import nmt.translate\n\n_translate_lines = nmt.translate.translate_lines\n\n\n"
        "def translate_lines(*args, **kwargs):\n    print('plugin says hello')\n"
        "    return _translate_lines(*args, **kwargs)\n\n\nnmt.translate.translate_lines = translate_lines\n")
    (workdir / "in.txt").write_text("ab cd\nef\n")
    code, out, err = run_cli(capsys, "--plugin", "noisy.py", *translate_argv())
    assert code == 0, err
    assert len(out.splitlines()) == 2 and "plugin says hello" not in out, out
    assert "plugin says hello" in err
