"""Recurrent encoders (GRU, LSTM): embedded source tokens in, one state per position out.

They meet :class:`nmt.contracts.RecurrentEncoder`: the output's ``pooled`` summary is the top layer
of the final state (the forward direction's end beside the backward direction's start), and
``recurrent`` the final state of every layer, which a decoder may start from and truncated BPTT
carries on (``initial_state``).

Sequences are packed (``pack_padded_sequence``) so padding costs no computation and never leaks
into the states of real positions; the backward direction of a bidirectional encoder starts at
each sequence's own last token, not at the padding.
"""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.contracts import EncoderOutput, RecurrentState, top_layer
from nmt.registry import register

# GRU final state: a tensor [num_layers, B, output_size]; LSTM: a tuple (h, c) of such tensors.
RNNState = RecurrentState


class RNNEncoder(nn.Module):
    """A (bi)directional multi-layer RNN over padded batches; subclasses choose the cell."""

    rnn_class: type[nn.RNNBase]
    output_size: int  # D = hidden_size * directions

    class Config(BaseModel):
        """Recipe options of a recurrent encoder (``model.encoder``)."""

        model_config = ConfigDict(extra="forbid")
        # Bounded so a typo (1e9) is a recipe error naming the key, not an allocation failure.
        hidden_size: int = Field(256, gt=0, le=65536)  # per direction
        num_layers: int = Field(1, gt=0, le=64)
        dropout: float = Field(0.0, ge=0, lt=1)  # between layers and on the output states
        bidirectional: bool = True

    def __init__(self, config: Config, input_size: int) -> None:
        super().__init__()
        self.config = config
        self.num_layers = config.num_layers
        self.num_directions = 2 if config.bidirectional else 1
        self.hidden_size = config.hidden_size
        self.output_size = config.hidden_size * self.num_directions
        self.rnn = self.rnn_class(
            input_size,
            config.hidden_size,
            num_layers=config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, initial_state: RNNState | None = None
    ) -> EncoderOutput:
        """Encode ``x`` [B, S, input_size] (from ``initial_state`` [L, B, D], if given) into states [B, S, D],
        mask [B, S], pooled [B, D] (the top layer's final state) and the final state [L, B, D] of every layer."""
        max_len = x.shape[1]
        positions = torch.arange(max_len, device=x.device)  # [S]
        mask = positions.unsqueeze(0) < lengths.to(x.device).unsqueeze(1)  # [B, S], True at real tokens
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        hx = None if initial_state is None else _map(initial_state, self._to_torch_layout)
        # packed RNNs take and return hx in the caller's batch order (they permute internally)
        packed_states, hn = self.rnn(packed, hx)
        states, _ = pad_packed_sequence(packed_states, batch_first=True, total_length=max_len)  # [B, S, D*H]
        states = self.dropout(states)  # padded positions stay exactly zero
        final = _map(hn, self._from_torch_layout)  # [L, B, D*H] (or a tuple of two)
        return EncoderOutput(states=states, mask=mask, pooled=top_layer(final), recurrent=final)  # pooled [B, D*H]

    def _from_torch_layout(self, h: torch.Tensor) -> torch.Tensor:
        """[L*D, B, H] (PyTorch's layout) -> [L, B, D*H] (forward and backward concatenated)."""
        batch_size = h.shape[1]
        h = h.view(self.num_layers, self.num_directions, batch_size, self.hidden_size)  # [L, D, B, H]
        return h.transpose(1, 2).reshape(self.num_layers, batch_size, self.output_size)  # [L, B, D*H]

    def _to_torch_layout(self, h: torch.Tensor) -> torch.Tensor:
        """[L, B, D*H] -> [L*D, B, H], the inverse of :meth:`_from_torch_layout`."""
        batch_size = h.shape[1]
        h = h.view(self.num_layers, batch_size, self.num_directions, self.hidden_size)  # [L, B, D, H]
        return h.transpose(1, 2).reshape(self.num_layers * self.num_directions, batch_size, self.hidden_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _map(state: RNNState, fn) -> RNNState:
    """Apply ``fn`` to a GRU state tensor or to both tensors of an LSTM (h, c) state."""
    if isinstance(state, tuple):
        return tuple(fn(s.contiguous()) for s in state)
    return fn(state.contiguous())


@register("encoder", "gru")
class GRUEncoder(RNNEncoder):
    """Bidirectional (by default) GRU encoder; its recurrent state is a tensor [num_layers, B, output_size]."""

    rnn_class = nn.GRU


@register("encoder", "lstm")
class LSTMEncoder(RNNEncoder):
    """Bidirectional (by default) LSTM encoder; its recurrent state is a tuple (h, c) of [num_layers, B, output_size]."""

    rnn_class = nn.LSTM
