"""``model.compile``: the decoder step through torch.compile (inductor, on the CPU here) computes and
trains what the eager step does; the recipe key turns it on for training only, and a decoder that
cannot compile is a recipe error naming the key."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import reverse_recipe, write_recipe, write_reverse_corpus
from nmt.cli import main
from nmt.recipe import load_recipe
from nmt.runs import write_run

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
from test_rnn_decoder import inputs, make  # noqa: E402


def assert_trains_alike(eager, compiled, cell: str = "gru") -> None:
    """Teacher forcing through ``eager`` and ``compiled`` (the same weights) gives the same outputs, attention,
    final state and gradients of every parameter."""
    encoded, targets = inputs(cell)  # 5 positions
    results = []
    for decoder in (eager, compiled):
        torch.manual_seed(5)
        outputs, state, weights = decoder(targets, decoder.init_state(encoded), decoder.prepare_memory(encoded))
        hidden = state[0][0] if cell == "lstm" else state[0]
        (outputs.square().sum() + hidden.sum() + state[1].sum()).backward()
        results.append((outputs, weights, hidden, {n: p.grad for n, p in decoder.named_parameters()}))
    (out_a, w_a, h_a, grads_a), (out_b, w_b, h_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w_b, w_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_b, h_a, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_compiled_step_computes_and_trains_what_the_eager_step_does(one_thread):
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = make("gru").train(), make("gru").train()
    compiled.compile_step()
    assert_trains_alike(eager, compiled)
    assert compiled._compiled and not eager._compiled
    # the whole step compiled: no graph break (reading the nn.GRU's weights once broke it at every step)
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_the_compiled_loop_computes_and_trains_what_the_eager_forward_does(one_thread, cell):
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = make(cell).train(), make(cell).train()
    compiled.compile_step(loop=True)
    assert_trains_alike(eager, compiled, cell)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2  # one graph per chunk length met: 5 positions, chunks 4 and 1


@pytest.mark.parametrize("bf16", [False, True])
def test_the_compiled_loop_compiles_one_graph_per_chunk_length_wherever_the_chunk_falls(one_thread, bf16):
    """A chunk first (from the start state: zeros without a gradient, and under autocast the bridge's bf16)
    or after another, and a chunk that is the whole target (a view of it, were it not copied): one graph."""
    torch._dynamo.reset()
    counters.clear()
    decoder = make("gru").train()
    decoder.compile_step(loop=True)
    encoded, targets = inputs("gru")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for positions in (4, 5, 1):  # 4, the whole target; chunks 4 (first) and 1 (after it); 1 (first)
            outputs, _, _ = decoder(targets[:, :positions].clone(), decoder.init_state(encoded), decoder.prepare_memory(encoded))
            outputs.float().sum().backward()
            assert outputs.shape[1] == positions and torch.isfinite(outputs).all()
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_the_compiled_loop_runs_in_chunks_in_training_and_search_stays_eager(monkeypatch):
    module = importlib.import_module("nmt_builtin.rnn_decoder")
    chunks = []

    def recording(decoder, inputs, state, memory):  # the loop as compiled, run eagerly, its chunks recorded
        chunks.append(inputs.size(1))
        return module._written_loop(decoder, inputs, state, memory)
    monkeypatch.setattr(module, "_compiled_loop", lambda: recording)
    decoder = make("gru").train()
    encoded = inputs("gru")[0]
    targets = torch.randn(3, 15, 4)
    memory = decoder.prepare_memory(encoded)
    eager_outputs, _, eager_weights = decoder(targets, decoder.init_state(encoded), memory)
    decoder.compile_step(loop=True)
    outputs, _, weights = decoder(targets, decoder.init_state(encoded), memory)
    assert chunks == [8, 4, 2, 1]  # 15 positions, longest chunks first
    torch.testing.assert_close(outputs, eager_outputs)
    torch.testing.assert_close(weights, eager_weights)
    decoder.eval()  # evaluation's teacher forcing and search's steps: eager, nothing more to compile
    decoder(targets, decoder.init_state(encoded), memory)
    decoder.step(targets[:, 0], decoder.init_state(encoded), memory)
    assert chunks == [8, 4, 2, 1]


def build_task(tmp_path: Path, recipe: dict):
    loaded = load_recipe(write_recipe(tmp_path / "r.yaml", recipe))
    run_dir = tmp_path / "run"
    write_run(run_dir, loaded.raw)
    loaded.task_cls.prepare_run(loaded, run_dir)
    return loaded.task_cls.from_run(loaded, run_dir)


@pytest.mark.parametrize("compile_, mode", [(True, "step"), ("loop", "loop"), (False, None)])
def test_model_compile_compiles_the_step_for_training_only(tmp_path, reverse_data, compile_, mode):
    task = build_task(tmp_path, reverse_recipe(reverse_data, model={"compile": compile_}))
    task.setup("validate")
    assert not task.decoder._compiled  # translation and validation-only starts stay eager
    task.setup("fit")
    assert task.decoder._compiled == mode


def test_a_decoder_without_compile_step_is_a_recipe_error_naming_the_key(tmp_path, reverse_data, capsys):
    (tmp_path / "plain_decoder.py").write_text(
        "import importlib\n"
        "from nmt import register\n"
        "RNNDecoder = importlib.import_module('nmt_builtin.rnn_decoder').RNNDecoder\n"
        "@register('decoder', 'no_compile_step')\n"
        "class Plain(RNNDecoder):\n"
        "    '''A decoder that opts out of compile_step.'''\n"
        "    compile_step = None\n")
    recipe = reverse_recipe(reverse_data, model={"compile": True, "decoder": {"name": "no_compile_step"}})
    recipe["plugins"] = ["plain_decoder.py"]
    path = write_recipe(tmp_path / "r.yaml", recipe)
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "model.compile" in err and "no_compile_step" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_training_with_the_compiled_loop_learns(tmp_path, one_thread):
    """`nmt train` with model.compile: loop learns the reverse task to the bar of the eager trainings
    (tests/test_bf16_cpu.py: 0.7 exact match), and its run translates eagerly."""
    torch._dynamo.reset()
    counters.clear()
    data = write_reverse_corpus(tmp_path / "data", n_train=2500)
    trainer = {"max_epochs": 6, "accelerator": "cpu", "devices": 1}
    recipe = write_recipe(tmp_path / "reverse.yaml", reverse_recipe(data, trainer=trainer, optim={"lr": 0.005},
                                                                    model={"compile": "loop"}))
    assert main(["train", str(recipe), "--run-dir", str(tmp_path / "run")]) == 0
    assert 1 <= counters["stats"]["unique_graphs"] <= 4  # the loop compiled: a graph per chunk length met
    out = tmp_path / "hyp.txt"
    assert main(["translate", "--run", str(tmp_path / "run"), "--beam", "5", "-i", str(data / "test.src"), "-o", str(out)]) == 0
    refs = (data / "test.tgt").read_text().splitlines()
    hyps = out.read_text().splitlines()
    assert sum(h == r for h, r in zip(hyps, refs)) / len(refs) >= 0.7
