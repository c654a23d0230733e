"""``nmt translate --compile``: the search with each decoder's step through torch.compile translates as
the eager search does (greedy, beam, an ensemble), and where it cannot apply it is a one-line error
naming the option."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent / "reliability"))  # where the shared trained runs live
from reliability_support import error_lines, other_run, reliability_data, run_cli, trained_run  # noqa: E402,F401


@pytest.mark.parametrize("beam, runs", [(1, 1), (5, 1), (5, 2)])
def test_the_compiled_search_translates_as_the_eager_one(tmp_path, capsys, one_thread, trained_run, other_run,
                                                         reliability_data, beam, runs):
    torch._dynamo.reset()
    counters.clear()
    run_args = ["--run", trained_run, *(["--run", other_run] if runs == 2 else [])]
    outputs = {}
    for name, extra in (("eager", []), ("compiled", ["--compile"])):
        outputs[name] = tmp_path / f"{name}.txt"
        code, _, err = run_cli(capsys, "translate", *run_args, "--beam", beam, "-i", reliability_data / "test.src",
                               "-o", outputs[name], *extra)
        assert code == 0, err
    assert counters["stats"]["unique_graphs"] >= 1  # the step was compiled
    eager = outputs["eager"].read_text().splitlines()
    assert len(eager) > 20 and outputs["compiled"].read_text().splitlines() == eager


def test_compile_where_it_cannot_apply_is_an_error_naming_the_option(tmp_path, capsys, trained_run, reliability_data,
                                                                    monkeypatch):
    out = tmp_path / "out.txt"
    code, _, err = run_cli(capsys, "translate", "--run", trained_run, "--engine", "onnx", "--compile",
                           "-i", reliability_data / "test.src", "-o", out)
    assert code != 0 and "Traceback" not in err
    assert any("--compile" in line and "onnxruntime" in line for line in error_lines(err)), err
    decoder = importlib.import_module("nmt_builtin.rnn_decoder").RNNDecoder
    monkeypatch.setattr(decoder, "compile_step", None)  # a decoder plugin without one
    code, _, err = run_cli(capsys, "translate", "--run", trained_run, "--compile", "-i", reliability_data / "test.src",
                           "-o", out)
    assert code != 0 and "Traceback" not in err
    assert any("--compile" in line and "has no compile_step" in line for line in error_lines(err)), err
    assert not out.exists()
