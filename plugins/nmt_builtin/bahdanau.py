"""Additive attention (Bahdanau et al., 2015): score(q, k) = v^T tanh(W_q q + W_k k)."""
from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from nmt.registry import register

from .shared_weights import SharedBatchMatrix, SharedLinear


@register("attention", "bahdanau")
class BahdanauAttention(nn.Module):
    """Additive (MLP) attention. Keys are projected once per batch by :meth:`prepare`, never per step."""

    class Config(BaseModel):
        """Recipe options of additive attention (``model.attention``)."""

        model_config = ConfigDict(extra="forbid")
        # size of the scoring MLP; None: the query size. Bounded so a typo (1e9) is a recipe error, not an allocation
        hidden_size: int | None = Field(None, gt=0, le=65536)

    def __init__(self, config: Config, query_size: int, key_size: int) -> None:
        super().__init__()
        self.config = config
        attention_size = config.hidden_size or query_size
        self.key_layer = nn.Linear(key_size, attention_size, bias=False)
        self.query_layer = nn.Linear(query_size, attention_size, bias=False)
        self.energy_layer = nn.Linear(attention_size, 1, bias=False)

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        """Project the keys [B, S, K] -> [B, S, A]; call once per batch and pass to every step."""
        return self.key_layer(keys)  # [B, S, A]

    def forward(
        self, query: torch.Tensor, prepared_keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend with ``query`` [B, Q]; return (context [B, V], weights [B, S], exactly 0 where ``mask`` is False)."""
        query = self.query_layer(query).unsqueeze(1)  # [B, 1, A]
        scores = self.energy_layer(torch.tanh(query + prepared_keys)).squeeze(2)  # [B, S]
        scores = scores.masked_fill(~mask, float("-inf"))  # every row has at least one real position
        weights = torch.softmax(scores, dim=-1)  # [B, S]
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # [B, 1, S] x [B, S, V] -> [B, V]
        return context, weights

    def shared(self, prepared_keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor):
        """:meth:`forward` with this memory for every position of one teacher-forced pass (a function of
        the query [B, Q]), the gradients of what every position uses (the query and energy layers'
        weights, the values) computed once for all positions."""
        query_layer, energy_layer = SharedLinear(self.query_layer.weight), SharedLinear(self.energy_layer.weight)
        context, padding = SharedBatchMatrix(values.transpose(1, 2)), ~mask  # [B, V, S]; [B, S], once

        def attend(query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scores = energy_layer(torch.tanh(query_layer(query).unsqueeze(1) + prepared_keys)).squeeze(2)  # [B, S]
            weights = torch.softmax(scores.masked_fill(padding, float("-inf")), dim=-1)  # [B, S]
            return context(weights), weights  # [B, V], [B, S]
        return attend
