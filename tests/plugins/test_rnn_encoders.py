"""Tests of the GRU and LSTM encoders: masking, packing, final-state layout and carried state."""
import importlib

import pydantic
import pytest
import torch

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
    states, final, mask = encoder(torch.randn(4, 7, 6), lengths)
    assert states.shape == (4, 7, 10) and encoder.output_size == 10
    assert torch.equal(mask, torch.arange(7)[None, :] < lengths[:, None])
    assert torch.all(states[~mask] == 0)
    assert torch.all(states[mask].abs().sum(-1) > 0)
    assert all(f.shape == (2, 4, 10) for f in as_tuple(final))


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_a_sequence_encodes_the_same_alone_or_batched_with_longer_ones(name):
    encoder = make(name, num_layers=2)
    x, lengths = torch.randn(3, 8, 6), torch.tensor([5, 8, 3])
    states, final, _ = encoder(x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone, alone_final, alone_mask = encoder(x[i : i + 1, :n], torch.tensor([n]))  # B=1, all lengths == S
        assert alone_mask.all()
        torch.testing.assert_close(alone[0], states[i, :n])
        torch.testing.assert_close(hidden(alone_final)[:, 0], hidden(final)[:, i])


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_final_concatenates_forward_last_and_backward_first_states(name):
    encoder = make(name)
    lengths = torch.tensor([3, 6])
    states, final, _ = encoder(torch.randn(2, 6, 6), lengths)
    top = hidden(final)[-1]  # [B, 2H]
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(top[i, :5], states[i, n - 1, :5])  # forward direction ends at the last token
        torch.testing.assert_close(top[i, 5:], states[i, 0, 5:])  # backward direction ends at the first token


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_final_state_round_trips_as_initial_state(name):
    encoder = make(name, num_layers=2, bidirectional=False)
    x, lengths = torch.randn(3, 10, 6), torch.full((3,), 10)
    whole, whole_final, _ = encoder(x, lengths)
    first, carried, _ = encoder(x[:, :4], torch.full((3,), 4))
    second, second_final, _ = encoder(x[:, 4:], torch.full((3,), 6), initial_state=carried)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    for a, b in zip(as_tuple(second_final), as_tuple(whole_final)):
        torch.testing.assert_close(a, b)


def test_bidirectional_initial_state_is_accepted_in_final_layout():
    encoder = make("gru", num_layers=2)
    x, lengths = torch.randn(2, 5, 6), torch.tensor([5, 2])
    _, final, _ = encoder(x, lengths)
    states, again, _ = encoder(x, lengths, initial_state=final)
    assert again.shape == final.shape and torch.all(states[1, 2:] == 0)


def test_config_rejects_unknown_and_invalid_options():
    with pytest.raises(pydantic.ValidationError):
        rnn_encoders.GRUEncoder.Config(hidden_size=4, hiden_size=4)
    with pytest.raises(pydantic.ValidationError):
        rnn_encoders.LSTMEncoder.Config(dropout=1.0)
    with pytest.raises(pydantic.ValidationError):
        rnn_encoders.LSTMEncoder.Config(hidden_size=0)
