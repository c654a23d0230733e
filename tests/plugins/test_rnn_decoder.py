"""Tests of the attentional RNN decoder: step/forward agreement, state selection, memory preparation,
starting from an encoder's recurrent state or from its pooled summary."""
import dataclasses
import importlib
from functools import partial

import pytest
import torch

from nmt.contracts import Decoder, EncoderOutput

RNNDecoder = importlib.import_module("nmt_builtin.rnn_decoder").RNNDecoder
BahdanauAttention = importlib.import_module("nmt_builtin.bahdanau").BahdanauAttention
LuongAttention = importlib.import_module("nmt_builtin.luong").LuongAttention

B, S, T, E, V, H = 3, 6, 5, 4, 10, 8  # batch, source, target, embedding, encoder states, hidden


def make(cell: str = "gru", attention: type = BahdanauAttention, **options) -> RNNDecoder:
    assert RNNDecoder.registered_name == "rnn"
    torch.manual_seed(0)
    factory = partial(attention, attention.Config())
    config = RNNDecoder.Config(cell=cell, hidden_size=H, num_layers=2, **options)
    return RNNDecoder(config, E, V, factory).eval()


def inputs(cell: str):
    """(encoder output with a recurrent state [2, B, V] (or (h, c)), target embeddings [B, T, E])."""
    torch.manual_seed(1)
    h = torch.randn(2, B, V)
    final = (h, torch.randn(2, B, V)) if cell == "lstm" else h
    mask = torch.arange(S)[None, :] < torch.tensor([6, 2, 4])[:, None]
    encoded = EncoderOutput(states=torch.randn(B, S, V), mask=mask, pooled=h[-1], recurrent=final)
    return encoded, torch.randn(B, T, E)


def as_list(state):
    hidden, prev_output = state
    return [*(hidden if isinstance(hidden, tuple) else (hidden,)), prev_output]


@pytest.fixture
def teacher_forcing(monkeypatch):
    """Set how RNNDecoder's teacher forcing runs on the CPU for one test."""
    return lambda mode: monkeypatch.setattr(RNNDecoder, "TEACHER_FORCING", {"cpu": mode})


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", [BahdanauAttention, LuongAttention])
@pytest.mark.parametrize("input_feeding", [True, False])
@pytest.mark.parametrize("mode", ["stepwise", "hoisted", "shared"])
def test_forward_equals_repeated_steps(cell, attention, input_feeding, mode, teacher_forcing):
    """Teacher forcing, either way, computes what step() computes position by position (step() runs
    the torch module's cell)."""
    teacher_forcing(mode)
    decoder = make(cell, attention, input_feeding=input_feeding)
    encoded, targets = inputs(cell)
    mask = encoded.mask
    state, memory = decoder.init_state(encoded), decoder.prepare_memory(encoded)
    outputs, forward_state, attention_weights = decoder(targets, state, memory)
    assert outputs.shape == (B, T, H) and attention_weights.shape == (B, T, S) and decoder.output_size == H
    assert isinstance(decoder, Decoder)
    assert torch.all(attention_weights.masked_select(~mask[:, None, :].expand(B, T, S)) == 0)
    for t in range(T):
        output, state, weights = decoder.step(targets[:, t], state, memory)
        torch.testing.assert_close(output, outputs[:, t])
        torch.testing.assert_close(weights, attention_weights[:, t])
    for a, b in zip(as_list(state), as_list(forward_state)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_select_state_and_memory_expand_the_batch(cell):
    decoder = make(cell)
    encoded, targets = inputs(cell)
    state, memory = decoder.init_state(encoded), decoder.prepare_memory(encoded)
    _, state, _ = decoder(targets[:, :2], state, memory)
    index = torch.tensor([0, 0, 2, 1, 1, 1])
    expanded, expanded_memory = RNNDecoder.select_state(state, index), RNNDecoder.select_memory(memory, index)
    for new, old in zip(as_list(expanded), as_list(state)):
        batch_dim = 0 if new.dim() == 2 else 1
        assert new.shape[batch_dim] == 6
        torch.testing.assert_close(new, old.index_select(batch_dim, index))
    assert all(m.shape[0] == 6 for m in expanded_memory)
    output, _, _ = decoder.step(targets[index, 2], expanded, expanded_memory)
    reference, _, _ = decoder.step(targets[:, 2], state, memory)
    torch.testing.assert_close(output, reference[index])


def test_bahdanau_keys_are_projected_once_per_batch():
    decoder = make("gru", BahdanauAttention)
    calls = []
    decoder.attention.key_layer.register_forward_hook(lambda *args: calls.append(1))
    encoded, targets = inputs("gru")
    memory = decoder.prepare_memory(encoded)
    decoder(targets, decoder.init_state(encoded), memory)
    assert len(calls) == 1


def test_init_state_with_and_without_bridge():
    encoded, targets = inputs("lstm")
    hidden, prev_output = make("lstm").init_state(encoded)
    assert hidden[0].shape == (2, B, H) and hidden[1].shape == (2, B, H)
    assert torch.all(prev_output == 0) and hidden[0].abs().sum() > 0
    hidden, prev_output = make("gru", bridge=False).init_state(encoded)
    assert hidden.shape == (2, B, H) and torch.all(hidden == 0) and prev_output.shape == (B, H)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_starts_from_the_recurrent_top_layer_else_from_the_pooled_summary(cell):
    decoder = make(cell)
    encoded, _ = inputs(cell)
    hidden = decoder.init_state(encoded)[0]
    h0 = hidden[0] if isinstance(hidden, tuple) else hidden  # [2, B, H]
    top = (encoded.recurrent[0] if cell == "lstm" else encoded.recurrent)[-1]  # [B, V]
    torch.testing.assert_close(h0[0], torch.tanh(decoder.bridge(top)))
    torch.testing.assert_close(h0[1], h0[0])  # every decoder layer starts alike
    # without a recurrent state (a Transformer encoder): the pooled summary
    summary = torch.randn(B, V)
    pooled_only = EncoderOutput(states=encoded.states, mask=encoded.mask, pooled=summary)
    hidden = decoder.init_state(pooled_only)[0]
    h0 = hidden[0] if isinstance(hidden, tuple) else hidden
    torch.testing.assert_close(h0[0], torch.tanh(decoder.bridge(summary)))


def test_every_parameter_gets_a_gradient():
    decoder = make("lstm", LuongAttention).train()
    encoded, targets = inputs("lstm")
    outputs, _, _ = decoder(targets, decoder.init_state(encoded), decoder.prepare_memory(encoded))
    outputs.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())



def written_forward(decoder: RNNDecoder, targets, state, memory):
    """Teacher forcing through the written-out cell (what model.compile compiles), eagerly."""
    outputs = []
    for t in range(targets.size(1)):
        output, state, weights = decoder._step(targets[:, t], state, memory, decoder._written_cell)
        outputs.append((output, weights))
    return outputs, state


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_the_written_out_cell_computes_what_the_torch_recurrent_module_computes(cell, input_feeding, teacher_forcing):
    teacher_forcing("stepwise")  # the module's cell at every position
    decoder = make(cell, input_feeding=input_feeding)  # two layers
    encoded, targets = inputs(cell)
    memory = decoder.prepare_memory(encoded)
    outputs, final, weights = decoder(targets, decoder.init_state(encoded), memory)
    written, written_final = written_forward(decoder, targets, decoder.init_state(encoded), memory)
    for t, (output, step_weights) in enumerate(written):
        torch.testing.assert_close(output, outputs[:, t])
        torch.testing.assert_close(step_weights, weights[:, t])
    for a, b in zip(as_list(written_final), as_list(final)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_under_bf16_autocast_the_recurrent_state_stays_float32(cell, monkeypatch, teacher_forcing):
    """AUTOCAST_CELL "written" writes the cell under autocast out from the module's weights and the
    module never runs; "float32" (CUDA's default) runs the module with autocast off on float32 inputs
    and state; "autocast" (the CPU's default) lets autocast reach the module (its state bf16). Both float32 states stay
    within bf16 product error of the float32 run over 40 positions; the attentional output follows
    autocast in every mode. Hoisted teacher forcing runs the written cell under autocast whatever
    AUTOCAST_CELL says: its state stays float32 too."""
    teacher_forcing("stepwise")
    decoder = make(cell)
    encoded, targets = inputs(cell)
    long_targets = targets.repeat(1, 8, 1)  # 40 positions
    _, exact, _ = decoder(long_targets, decoder.init_state(encoded), decoder.prepare_memory(encoded))
    assert RNNDecoder.AUTOCAST_CELL == {"cpu": "autocast", "cuda": "float32"}
    seen = []
    decoder.rnn.register_forward_pre_hook(lambda module, args: seen.append((torch.is_autocast_enabled("cpu"), args[0].dtype)))
    states = {}
    for mode in ("written", "float32", "autocast"):
        monkeypatch.setattr(RNNDecoder, "AUTOCAST_CELL", {"cpu": mode})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs, states[mode], _ = decoder(long_targets, decoder.init_state(encoded), decoder.prepare_memory(encoded))
        assert outputs.dtype == torch.bfloat16  # the attentional output follows autocast
        calls, seen[:] = list(seen), []
        if mode == "written":
            assert calls == []
        elif mode == "float32":
            assert calls == [(False, torch.float32)] * 40
        else:
            assert len(calls) == 40 and all(enabled for enabled, _ in calls)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, written = written_forward(decoder, long_targets, decoder.init_state(encoded), decoder.prepare_memory(encoded))
    for a, b in zip(as_list(states["written"]), as_list(written)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # "written" is the written cell, exactly
    for state in (states["written"], states["float32"]):
        for a, b in zip(as_list(state)[:-1], as_list(exact)[:-1]):
            assert a.dtype == torch.float32
            assert (a - b).abs().max() < 0.05
    assert as_list(states["autocast"])[0].dtype == torch.bfloat16
    teacher_forcing("hoisted")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs, hoisted, _ = decoder(long_targets, decoder.init_state(encoded), decoder.prepare_memory(encoded))
    assert outputs.dtype == torch.bfloat16 and seen == []
    for a, b in zip(as_list(hoisted)[:-1], as_list(exact)[:-1]):
        assert a.dtype == torch.float32
        assert (a - b).abs().max() < 0.05


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", [BahdanauAttention, LuongAttention])
@pytest.mark.parametrize("input_feeding", [True, False])
@pytest.mark.parametrize("mode", ["hoisted", "shared"])
def test_hoisted_teacher_forcing_gives_the_gradients_of_stepwise(cell, attention, input_feeding, mode, teacher_forcing):
    """Computing the first layer's input products of all positions at once changes no gradient: of
    every weight (the input weights' embedding and fed-back columns included), and of the inputs and
    the encoder's states; nor does (shared) computing every other weight's gradient once for all
    positions (SharedLinear), the attention's weights', keys' and values' included (its shared())."""
    decoder = make(cell, attention, input_feeding=input_feeding).train()  # dropout 0: the same function in both
    encoded, targets = inputs(cell)
    grads = {}
    for way in ("stepwise", mode):
        teacher_forcing(way)
        decoder.zero_grad()
        x, states = targets.clone().requires_grad_(), encoded.states.clone().requires_grad_()
        memory = decoder.prepare_memory(dataclasses.replace(encoded, states=states))
        outputs, final, weights = decoder(x, decoder.init_state(encoded), memory)
        (outputs.square().sum() + sum(s.sum() for s in as_list(final)) + weights.square().sum()).backward()
        grads[way] = [x.grad, states.grad] + [p.grad.clone() for p in decoder.parameters()]
    assert len(grads[mode]) > 8 and all(g is not None for g in grads[mode])
    for a, b in zip(grads["stepwise"], grads[mode]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("attention,fewer", [(BahdanauAttention, 6), (LuongAttention, 5)])
def test_shared_teacher_forcing_shares_the_attentions_gradients_where_it_offers_shared(attention, fewer, monkeypatch,
                                                                                       teacher_forcing):
    """Teacher forcing shared runs the attention through its shared(): fewer operations a position than
    its forward at each position (Bahdanau: the query and energy layers' weight gradients, two products
    and two additions, the values' a product and an addition, the mask's negation, less one reshape;
    Luong: the keys' and the values' products and additions, the negation), the same outputs."""
    Ops = importlib.import_module("test_shared_weights").Ops
    teacher_forcing("shared")
    encoded, _ = inputs("gru")

    def run(positions):
        decoder = make("gru", attention).train()
        torch.manual_seed(2)
        x, states = torch.randn(B, positions, E, requires_grad=True), encoded.states.clone().requires_grad_()
        with Ops() as ops:
            memory = decoder.prepare_memory(dataclasses.replace(encoded, states=states))
            outputs, _, weights = decoder(x, decoder.init_state(encoded), memory)
            outputs.sum().backward()
        return len(ops.names), outputs.detach(), weights.detach()

    def per_position():
        (short, *_), (long, outputs, weights) = run(T), run(2 * T)
        return (long - short) / T, outputs, weights
    with_shared, outputs, weights = per_position()
    monkeypatch.setattr(attention, "shared", None)  # as a plugin without it: forward at each position
    without, exact_outputs, exact_weights = per_position()
    assert without - with_shared == fewer
    torch.testing.assert_close(outputs, exact_outputs)
    torch.testing.assert_close(weights, exact_weights)


def test_the_recipe_key_chooses_the_way_over_the_devices_default(monkeypatch, teacher_forcing):
    """model.decoder.teacher_forcing: null runs the device's default (TEACHER_FORCING); a way named there
    runs that way on any device, in training; evaluation never shares gradients it does not compute."""
    module = importlib.import_module("nmt_builtin.rnn_decoder")
    made, shared_linear = [], importlib.import_module("nmt_builtin.shared_weights").SharedLinear
    monkeypatch.setattr(module, "SharedLinear", lambda *args: made.append(1) or shared_linear(*args))
    encoded, targets = inputs("gru")

    def run(key, default, train=True):
        teacher_forcing(default)
        made.clear()
        decoder = make("gru", teacher_forcing=key).train(train)
        with torch.set_grad_enabled(train):
            decoder(targets, decoder.init_state(encoded), decoder.prepare_memory(encoded))
        return len(made)
    assert run(None, "stepwise") == 0 and run(None, "shared") > 0
    assert run("shared", "stepwise") > 0 and run("hoisted", "shared") == 0 and run("stepwise", "shared") == 0
    assert run("shared", "stepwise", train=False) == 0
