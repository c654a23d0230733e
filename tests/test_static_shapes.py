"""Static shapes for compiled training steps (issue 13: CUDA graphs need few shapes).

``data.pad_lengths`` pads every training batch to one of a few shapes (lengths from the list, a multiple
of 8 rows); the padding changes no loss
and no gradient. ``model.compile: static`` compiles one graph per shape of the decoder step (on the
CPU here; CUDA graphs on a GPU), each once however many batches share it, and computes what the
eager step does. Both keys are recipe errors naming the key when they cannot work together."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import reverse_recipe, write_recipe
from nmt.cli import main
from nmt.contracts import EncoderOutput
from nmt.data.parallel import Pair, PairCollator
from test_compile import build_task

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
from test_rnn_decoder import E, V, make  # noqa: E402

PAD, BOS, EOS = 0, 1, 2


def test_padded_batches_take_the_next_listed_length_and_a_multiple_of_8_rows():
    pairs = [Pair(10, [5, 6], [7]), Pair(11, [5, 6, 7, 8, 9], [7, 8, 9, 10, 11, 12]), Pair(12, [5, 6, 7], [8, 9])]
    plain = PairCollator(PAD, BOS, EOS)(pairs)
    padded = PairCollator(PAD, BOS, EOS, pad_lengths=[4, 8, 16])(pairs)
    assert padded["src"].shape == (8, 8) and padded["tgt_in"].shape == padded["tgt_out"].shape == (8, 8)
    # the real rows are the unpadded batch, then padding
    for key in ("src", "tgt_in", "tgt_out"):
        width = plain[key].shape[1]
        assert torch.equal(padded[key][:3, :width], plain[key]) and (padded[key][:3, width:] == PAD).all()
    assert torch.equal(padded["src_len"][:3], plain["src_len"]) and padded["ntokens"] == plain["ntokens"] == 12
    # five filler rows: a one-token source, BOS then padding in, nothing out, no corpus line
    assert padded["ids"].tolist() == [10, 11, 12] + [-1] * 5 and (padded["src_len"][3:] == 1).all()
    for row in range(3, 8):
        assert padded["src"][row].tolist() == [EOS] + [PAD] * 7 and padded["tgt_in"][row].tolist() == [BOS] + [PAD] * 7
    assert (padded["tgt_out"][3:] == PAD).all()
    # a multiple of 8 rows stays as it is; too long for the last length is an error, not a silent cut
    assert PairCollator(PAD, BOS, EOS, pad_lengths=[8])(pairs[:2] * 4)["src"].shape == (8, 8)
    with pytest.raises(ValueError, match="longer than the last"):
        PairCollator(PAD, BOS, EOS, pad_lengths=[4, 6])(pairs)


def tiny_recipe(data, **model):
    return reverse_recipe(data, data={"max_length": 12, "pad_lengths": [8, 13]},
                          model={"embedding": {"size": 16}, "encoder": {"name": "gru", "hidden_size": 16},
                                 "decoder": {"name": "rnn", "hidden_size": 32}, **model})


def test_padding_changes_neither_the_loss_nor_the_gradients(tmp_path, reverse_data):
    task = build_task(tmp_path, tiny_recipe(reverse_data))
    module = task.make_datamodule()
    pairs = [module.train_set[i] for i in range(5)]
    padded = module.collator(pairs)
    assert padded["src"].shape[0] == 8 and padded["src"].shape[1] in (8, 13)  # 5 sentences and 3 filler rows
    task.eval()  # no dropout: the same numbers with or without the padding
    results = []
    for batch in (PairCollator(task.pad_id, task.bos_id, task.eos_id)(pairs), padded):
        task.zero_grad()
        total, ntokens = task.loss(batch, label_smoothing=0.1)
        total.backward()
        results.append((total.detach(), ntokens, {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}))
    (loss_a, n_a, grads_a), (loss_b, n_b, grads_b) = results
    assert n_a == n_b == int(padded["ntokens"])
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)
    # validation batches are not padded: every row is a dev sentence to score
    valid = next(iter(module.val_dataloader()))
    assert (valid["ids"] >= 0).all() and valid["src"].shape[1] == int(valid["src_len"].max())


def test_the_static_step_compiles_once_per_shape_and_computes_what_the_eager_step_does(one_thread):
    torch._dynamo.reset()
    counters.clear()
    eager, static = make("gru").train(), make("gru").train()  # the same weights (make seeds them)
    static.compile_step(static=True)
    assert static._compiled == "static"
    for rows, length in [(4, 8), (8, 8), (4, 8), (4, 13), (8, 8)]:  # (rows, source length): three distinct
        torch.manual_seed(rows * 100 + length)
        recurrent = torch.randn(2, rows, V)
        mask = torch.arange(length)[None, :] < torch.randint(1, length + 1, (rows,))[:, None]
        encoded = EncoderOutput(states=torch.randn(rows, length, V), mask=mask, pooled=recurrent[-1], recurrent=recurrent)
        targets = torch.randn(rows, 5, E)
        results = []
        for decoder in (eager, static):
            decoder.zero_grad()
            torch.manual_seed(3)  # the same dropout masks
            outputs, state, weights = decoder(targets, decoder.init_state(encoded), decoder.prepare_memory(encoded))
            (outputs.square().sum() + state[0].sum()).backward()
            results.append((outputs.detach(), weights.detach(), {n: p.grad.clone() for n, p in decoder.named_parameters()}))
        (out_a, w_a, grads_a), (out_b, w_b, grads_b) = results
        torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(w_b, w_a, rtol=1e-5, atol=1e-5)
        for name in grads_a:
            torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-5, msg=name)
    # two graphs per distinct shape (the first position, whose previous output is zeros without a gradient,
    # and the others), none again for a shape seen before, no graph break
    assert counters["stats"]["unique_graphs"] == 2 * 3, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_model_compile_static_compiles_the_static_step_for_training(tmp_path, reverse_data):
    task = build_task(tmp_path, tiny_recipe(reverse_data, compile="static"))
    task.setup("validate")
    assert not task.decoder._compiled
    task.setup("fit")
    assert task.decoder._compiled == "static"


@pytest.mark.parametrize("data, model, key, message", [
    ({}, {"compile": "static"}, "model.compile", "set data.pad_lengths too"),
    ({"max_length": 12, "pad_lengths": [8, 12]}, {}, "data.pad_lengths", "at least max_length + 1 = 13, got 12"),
    ({"pad_lengths": [16, 8, 101]}, {}, "data.pad_lengths", "increasing lengths"),
    ({"pad_lengths": []}, {}, "data.pad_lengths", "increasing lengths"),
    ({}, {"compile": "dynamic"}, "model.compile", ""),
])
def test_static_shape_keys_that_cannot_work_are_recipe_errors_naming_the_key(tmp_path, reverse_data, capsys,
                                                                             data, model, key, message):
    path = write_recipe(tmp_path / "r.yaml", reverse_recipe(reverse_data, data=data, model=model))
    assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert key in err and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_decoder_whose_compile_step_has_no_static_form_compiles_with_true_and_refuses_static_and_loop(tmp_path, reverse_data,
                                                                                             capsys):
    (tmp_path / "dynamic_only.py").write_text(
        "import importlib\n"
        "from nmt import register\n"
        "RNNDecoder = importlib.import_module('nmt_builtin.rnn_decoder').RNNDecoder\n"
        "@register('decoder', 'dynamic_only')\n"
        "class DynamicOnly(RNNDecoder):\n"
        "    '''A decoder with the older compile_step(enabled) and no static form.'''\n"
        "    def compile_step(self, enabled=True):\n"
        "        super().compile_step(enabled)\n")
    recipe = tiny_recipe(reverse_data, compile=True, decoder={"name": "dynamic_only", "hidden_size": 32})
    recipe["plugins"] = [str(tmp_path / "dynamic_only.py")]
    (tmp_path / "ok").mkdir()
    task = build_task(tmp_path / "ok", recipe)
    task.setup("fit")
    assert task.decoder._compiled == "step"
    for mode, what in (("static", "no static compiled step"), ("loop", "no compiled teacher-forced loop")):
        recipe["model"]["compile"] = mode
        path = write_recipe(tmp_path / "r.yaml", recipe)
        assert main(["train", str(path), "--run-dir", str(tmp_path / "run")]) != 0
        err = capsys.readouterr().err
        assert "model.compile" in err and what in err and "Traceback" not in err
        assert not (tmp_path / "run").exists()
