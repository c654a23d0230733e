"""Multiplicative attention (Luong et al., 2015): score(q, k) = q^T k ("dot") or q^T W k ("general")."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from nmt.errors import RecipeError
from nmt.registry import register

from .shared_weights import SharedBatchMatrix


@register("attention", "luong")
class LuongAttention(nn.Module):
    """Dot or bilinear ("general") attention; :meth:`prepare` applies W to the keys once per batch."""

    class Config(BaseModel):
        """Recipe options of multiplicative attention (``model.attention``)."""

        model_config = ConfigDict(extra="forbid")
        score: Literal["dot", "general"] = "general"

    def __init__(self, config: Config, query_size: int, key_size: int) -> None:
        super().__init__()
        self.config = config
        if config.score == "dot" and key_size != query_size:
            raise RecipeError(
                "model.attention.score",
                f"dot attention needs key size == decoder hidden size (got {key_size} vs {query_size}); "
                "use score: general",
            )
        self.key_layer = nn.Linear(key_size, query_size, bias=False) if config.score == "general" else None

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        """Bring the keys [B, S, K] into the query space [B, S, Q]; call once per batch."""
        return keys if self.key_layer is None else self.key_layer(keys)  # [B, S, Q]

    def forward(
        self, query: torch.Tensor, prepared_keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend with ``query`` [B, Q]; return (context [B, V], weights [B, S], exactly 0 where ``mask`` is False)."""
        scores = torch.bmm(prepared_keys, query.unsqueeze(2)).squeeze(2)  # [B, S, Q] x [B, Q, 1] -> [B, S]
        scores = scores.masked_fill(~mask, float("-inf"))  # every row has at least one real position
        weights = torch.softmax(scores, dim=-1)  # [B, S]
        context = torch.bmm(weights.unsqueeze(1), values).squeeze(1)  # [B, 1, S] x [B, S, V] -> [B, V]
        return context, weights

    def shared(self, prepared_keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor):
        """:meth:`forward` with this memory for every position of one teacher-forced pass (a function of
        the query [B, Q]), the gradients of the keys and the values computed once for all positions."""
        keys, context, padding = SharedBatchMatrix(prepared_keys), SharedBatchMatrix(values.transpose(1, 2)), ~mask

        def attend(query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            weights = torch.softmax(keys(query).masked_fill(padding, float("-inf")), dim=-1)  # [B, S]
            return context(weights), weights  # [B, V], [B, S]
        return attend
