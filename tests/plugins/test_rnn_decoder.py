"""Tests of the attentional RNN decoder: step/forward agreement, state selection, memory preparation."""
import importlib
from functools import partial

import pytest
import torch

RNNDecoder = importlib.import_module("nmt_builtin.rnn_decoder").RNNDecoder
BahdanauAttention = importlib.import_module("nmt_builtin.bahdanau").BahdanauAttention
LuongAttention = importlib.import_module("nmt_builtin.luong").LuongAttention

B, S, T, E, V, F, H = 3, 6, 5, 4, 10, 7, 8  # batch, source, target, embedding, encoder states, encoder final, hidden


def make(cell: str = "gru", attention: type = BahdanauAttention, **options) -> RNNDecoder:
    assert RNNDecoder.registered_name == "rnn"
    torch.manual_seed(0)
    factory = partial(attention, attention.Config())
    config = RNNDecoder.Config(cell=cell, hidden_size=H, num_layers=2, **options)
    return RNNDecoder(config, E, V, F, factory).eval()


def inputs(cell: str):
    torch.manual_seed(1)
    h = torch.randn(2, B, F)
    final = (h, torch.randn(2, B, F)) if cell == "lstm" else h
    mask = torch.arange(S)[None, :] < torch.tensor([6, 2, 4])[:, None]
    return final, torch.randn(B, S, V), mask, torch.randn(B, T, E)


def as_list(state):
    hidden, prev_output = state
    return [*(hidden if isinstance(hidden, tuple) else (hidden,)), prev_output]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("attention", [BahdanauAttention, LuongAttention])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_forward_equals_repeated_steps(cell, attention, input_feeding):
    decoder = make(cell, attention, input_feeding=input_feeding)
    final, states, mask, targets = inputs(cell)
    state, memory = decoder.init_state(final, B), decoder.prepare_memory(states, mask)
    outputs, forward_state, attention_weights = decoder(targets, state, memory)
    assert outputs.shape == (B, T, H) and attention_weights.shape == (B, T, S) and decoder.output_size == H
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
    final, states, mask, targets = inputs(cell)
    state, memory = decoder.init_state(final, B), decoder.prepare_memory(states, mask)
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
    final, states, mask, targets = inputs("gru")
    memory = decoder.prepare_memory(states, mask)
    decoder(targets, decoder.init_state(final, B), memory)
    assert len(calls) == 1


def test_init_state_with_and_without_bridge():
    final, states, mask, targets = inputs("lstm")
    hidden, prev_output = make("lstm").init_state(final, B)
    assert hidden[0].shape == (2, B, H) and hidden[1].shape == (2, B, H)
    assert torch.all(prev_output == 0) and hidden[0].abs().sum() > 0
    hidden, prev_output = make("gru", bridge=False).init_state(None, B)
    assert hidden.shape == (2, B, H) and torch.all(hidden == 0) and prev_output.shape == (B, H)


def test_every_parameter_gets_a_gradient():
    decoder = make("lstm", LuongAttention).train()
    final, states, mask, targets = inputs("lstm")
    outputs, _, _ = decoder(targets, decoder.init_state(final, B), decoder.prepare_memory(states, mask))
    outputs.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.parameters())
