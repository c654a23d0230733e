"""Tests of the GRU and LSTM encoders: masking, packing, pooled and recurrent state layout, carried state."""
import importlib

import pydantic
import pytest
import torch

from nmt.contracts import Encoder, EncoderOutput

rnn_encoders = importlib.import_module("nmt_builtin.rnn_encoders")  # registers encoder/gru and encoder/lstm
CELLS = {"gru": rnn_encoders.GRUEncoder, "lstm": rnn_encoders.LSTMEncoder}


def make(name: str, input_size: int = 6, **options) -> torch.nn.Module:
    cls = CELLS[name]
    assert cls.registered_name == name
    torch.manual_seed(0)
    return cls(cls.Config(hidden_size=5, **options), input_size).eval()


def hidden(final):
    return final[0] if isinstance(final, tuple) else final


def as_tuple(final):
    return final if isinstance(final, tuple) else (final,)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_padding_is_zero_and_mask_marks_real_positions(name):
    encoder = make(name, num_layers=2)
    lengths = torch.tensor([4, 7, 1, 5])
    out = encoder(torch.randn(4, 7, 6), lengths)
    assert isinstance(out, EncoderOutput) and isinstance(encoder, Encoder)
    states, final, mask = out.states, out.recurrent, out.mask
    assert states.shape == (4, 7, 10) and encoder.output_size == 10 and out.pooled.shape == (4, 10)
    assert torch.equal(mask, torch.arange(7)[None, :] < lengths[:, None])
    assert torch.all(states[~mask] == 0)
    assert torch.all(states[mask].abs().sum(-1) > 0)
    assert all(f.shape == (2, 4, 10) for f in as_tuple(final))


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_a_sequence_encodes_the_same_alone_or_batched_with_longer_ones(name):
    encoder = make(name, num_layers=2)
    x, lengths = torch.randn(3, 8, 6), torch.tensor([5, 8, 3])
    batched = encoder(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = encoder(x[i : i + 1, :n], torch.tensor([n]))  # B=1, all lengths == S
        assert alone.mask.all()
        torch.testing.assert_close(alone.states[0], batched.states[i, :n])
        torch.testing.assert_close(hidden(alone.recurrent)[:, 0], hidden(batched.recurrent)[:, i])
        torch.testing.assert_close(alone.pooled[0], batched.pooled[i])


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_pooled_is_the_top_layer_final_state_forward_last_and_backward_first(name):
    encoder = make(name, num_layers=2)
    lengths = torch.tensor([3, 6])
    out = encoder(torch.randn(2, 6, 6), lengths)
    states, top = out.states, out.pooled  # [B, 2H]
    torch.testing.assert_close(top, hidden(out.recurrent)[-1])
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(top[i, :5], states[i, n - 1, :5])  # forward direction ends at the last token
        torch.testing.assert_close(top[i, 5:], states[i, 0, 5:])  # backward direction ends at the first token


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_final_state_round_trips_as_initial_state(name):
    encoder = make(name, num_layers=2, bidirectional=False)
    x, lengths = torch.randn(3, 10, 6), torch.full((3,), 10)
    whole = encoder(x, lengths)
    first = encoder(x[:, :4], torch.full((3,), 4))
    second = encoder(x[:, 4:], torch.full((3,), 6), initial_state=first.recurrent)
    torch.testing.assert_close(torch.cat([first.states, second.states], dim=1), whole.states)
    for a, b in zip(as_tuple(second.recurrent), as_tuple(whole.recurrent)):
        torch.testing.assert_close(a, b)


def test_bidirectional_initial_state_is_accepted_in_final_layout():
    encoder = make("gru", num_layers=2)
    x, lengths = torch.randn(2, 5, 6), torch.tensor([5, 2])
    final = encoder(x, lengths).recurrent
    again = encoder(x, lengths, initial_state=final)
    assert again.recurrent.shape == final.shape and torch.all(again.states[1, 2:] == 0)


def test_config_rejects_unknown_and_invalid_options():
    with pytest.raises(pydantic.ValidationError):
        rnn_encoders.GRUEncoder.Config(hidden_size=4, hiden_size=4)
    with pytest.raises(pydantic.ValidationError):
        rnn_encoders.LSTMEncoder.Config(dropout=1.0)
    with pytest.raises(pydantic.ValidationError):
        rnn_encoders.LSTMEncoder.Config(hidden_size=0)
