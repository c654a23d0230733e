"""Self-attention encoder (Vaswani et al., 2017) from ``torch.nn.TransformerEncoder`` layers.

Follow one batch: the embedded inputs [B, S, E] are projected to the model size D (when E differs),
positions are added (sinusoidal, or learned up to ``max_positions``), and ``layers`` pre-norm
self-attention layers run over them with the padding masked out of every attention. The output
meets :class:`nmt.contracts.Encoder` with no recurrent state: ``pooled`` is the mean of the states
of the real positions, which the RNN decoder's bridge and a classifier's ``final`` pooling read.

Registered as a plugin like any third-party one (an entry point in ``pyproject.toml``), with no
edit to ``nmt/``: ``model.encoder={name: transformer, layers: 3, heads: 4, hidden_size: 256}``.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from nmt.contracts import EncoderOutput
from nmt.errors import DataError
from nmt.registry import register


def sinusoidal_positions(length: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The fixed position signal [S, D]: sin on even features, cos on odd ones, wavelengths 2pi .. 10000*2pi."""
    positions = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)  # [S, 1]
    rates = torch.exp(torch.arange(0, size, 2, device=device, dtype=torch.float32)
                      * (-math.log(10000.0) / size))  # [ceil(D/2)]
    table = torch.zeros(length, size, device=device, dtype=torch.float32)  # [S, D]
    table[:, 0::2] = torch.sin(positions * rates)
    table[:, 1::2] = torch.cos(positions * rates[: size // 2])
    return table.to(dtype)


@register("encoder", "transformer")
class TransformerEncoder(nn.Module):
    """Transformer encoder: self-attention layers over the padded batch; pooled summary = masked mean."""

    output_size: int  # D = hidden_size

    class Config(BaseModel):
        """Recipe options of the Transformer encoder (``model.encoder``)."""

        model_config = ConfigDict(extra="forbid")
        # Bounded so a typo (1e9) is a recipe error naming the key, not an allocation failure.
        hidden_size: int = Field(256, gt=0, le=65536)  # D, the model size; a multiple of heads
        layers: int = Field(3, gt=0, le=64)
        heads: int = Field(4, gt=0, le=256)
        feedforward_size: int | None = Field(None, gt=0, le=262144)  # None: 4 * hidden_size
        dropout: float = Field(0.1, ge=0, lt=1)  # on the inputs, attention weights and feed-forward outputs
        positions: Literal["sinusoidal", "learned"] = "sinusoidal"
        max_positions: int = Field(1024, gt=0, le=1_000_000)  # learned positions only: the longest input

        @model_validator(mode="after")
        def _heads_divide_the_size(self) -> "TransformerEncoder.Config":
            if self.hidden_size % self.heads:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of heads ({self.heads})")
            return self

    @staticmethod
    def max_input_length(config: Config) -> tuple[str, int] | None:
        """The option that bounds the positions this encoder reads and its value (see
        :mod:`nmt.tasks.limits`): learned positions stop at ``max_positions``, sinusoidal ones never."""
        return ("max_positions", config.max_positions) if config.positions == "learned" else None

    def __init__(self, config: Config, input_size: int) -> None:
        super().__init__()
        self.config = config
        self.output_size = config.hidden_size
        size = config.hidden_size
        self.input_projection = nn.Linear(input_size, size) if input_size != size else nn.Identity()
        self.position_embedding = nn.Embedding(config.max_positions, size) if config.positions == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        layer = nn.TransformerEncoderLayer(
            size, config.heads, dim_feedforward=config.feedforward_size or 4 * size, dropout=config.dropout,
            batch_first=True, norm_first=True)  # pre-norm: trains without a learning-rate warm-up
        # enable_nested_tensor only speeds up post-norm layers in eval mode; off, it warns about nothing.
        self.layers = nn.TransformerEncoder(layer, config.layers, norm=nn.LayerNorm(size), enable_nested_tensor=False)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        """Encode ``inputs`` [B, S, input_size] of ``lengths`` [B] into states [B, S, D], mask [B, S] and
        pooled [B, D] (the mean over real positions); no recurrent state."""
        length = inputs.shape[1]
        positions = torch.arange(length, device=inputs.device)  # [S]
        mask = positions.unsqueeze(0) < lengths.to(inputs.device).unsqueeze(1)  # [B, S], True at real positions
        x = self.input_projection(inputs)  # [B, S, D]
        x = x + self.positions(length, x)  # [B, S, D] + [S, D]
        states = self.layers(self.dropout(x), src_key_padding_mask=~mask)  # [B, S, D]
        weights = mask.unsqueeze(-1).to(states.dtype)  # [B, S, 1]
        states = states * weights  # padded positions exactly zero, as the RNN encoders leave them
        pooled = states.sum(1) / weights.sum(1).clamp(min=1)  # [B, D]
        return EncoderOutput(states=states, mask=mask, pooled=pooled, recurrent=None)

    def positions(self, length: int, like: torch.Tensor) -> torch.Tensor:
        """The position signal [S, D] for ``length`` positions, in the dtype and device of ``like``."""
        if self.position_embedding is None:
            return sinusoidal_positions(length, self.output_size, like.device, like.dtype)
        if length > self.config.max_positions:
            raise DataError(None, f"an input of {length} positions is longer than model.encoder.max_positions "
                                  f"({self.config.max_positions}) of the learned positions")
        return self.position_embedding.weight[:length]  # [S, D]

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, positions={self.config.positions}"
