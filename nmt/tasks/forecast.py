"""Multi-step forecasting as sequence to sequence: a lookback window in, a horizon out, through attention.

Follow one window: the lookback [B, L, C] is cut into segments of ``segment`` rows, each embedded by a
Linear layer, and the encoder plugin runs over the L/segment segment embeddings. The attentional
decoder plugin then produces the horizon one segment per step, attending over the encoder states; the
input of each step is the previous segment's values (the last observed one first, then its own
prediction, or the true one with probability ``teacher_forcing``) through a Linear "embedding".

Two options follow what makes RNNs competitive with linear models on long-horizon benchmarks
(SegRNN, Lin et al. 2023; NLinear, Zeng et al. 2023): ``segment`` > 1 shortens the recurrences
(336 hours are 14 steps of 24), and ``relative`` subtracts each channel's last observed value from
the window and adds it back to the forecast, so a level shift between training and test years costs
nothing. ``channel_independent`` runs one shared model per variable (with a learned channel
embedding), as PatchTST and SegRNN do.
"""
from __future__ import annotations

from pathlib import Path
import torch
from pydantic import Field
from torch import nn

from nmt.contracts import EncoderDecoderBuilder
from nmt.data.series import WindowShape
from nmt.errors import RecipeError
from nmt.recipe import AttentionSection, DecoderSection, EncoderSection, Recipe, Section
from nmt.registry import register
from nmt.tasks.limits import check_encoder_length
from nmt.tasks.series import MAX_WINDOW_ROWS, Loss, SeriesData, SeriesTask


class ForecastData(SeriesData):
    horizon: int = Field(24, gt=0, le=MAX_WINDOW_ROWS, strict=True)  # rows forecast after the lookback window


class ForecastModel(Section):
    encoder: EncoderSection = {"name": "gru", "bidirectional": False}
    attention: AttentionSection = {"name": "bahdanau"}
    decoder: DecoderSection = {"name": "rnn"}
    embedding_size: int = Field(64, gt=0, le=65536)  # the Linear embedding of input segments and of fed-back predictions
    segment: int = Field(1, gt=0, le=MAX_WINDOW_ROWS, strict=True)  # rows per encoder, decoder step; divides lookback, horizon
    channel_independent: bool = False  # one shared univariate model per column (needs targets == columns)
    relative: bool = True  # work relative to each channel's last observed value
    teacher_forcing: float = Field(0.0, ge=0.0, le=1.0)  # chance of feeding the true previous segment in training
    highway: bool = False  # add a linear lookback -> horizon forecast per variable (LSTNet's AR component)
    loss: Loss = "mse"


@register("task", "forecast")
class ForecastTask(SeriesTask):
    """Multi-step forecasting: a lookback window through an encoder, the horizon from an attentional decoder."""

    DataConfig = ForecastData
    ModelConfig = ForecastModel

    @classmethod
    def window_shape(cls, data) -> WindowShape:
        return WindowShape(data.lookback, 1, data.horizon)

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        super().check_recipe(recipe, check_data)
        path, data, model = recipe.path, recipe.data, recipe.model
        targets = data.targets or data.columns
        if any(t not in data.columns for t in targets):
            raise RecipeError(f"{path}: data.targets", "every target must also be an input column "
                                                       "(the decoder is fed the previous values)")
        if model.channel_independent and list(targets) != list(data.columns):
            raise RecipeError(f"{path}: model.channel_independent", "needs data.targets equal to data.columns")
        for key in ("lookback", "horizon"):
            if getattr(data, key) % model.segment:
                raise RecipeError(f"{path}: model.segment",
                                  f"must divide data.{key} ({getattr(data, key)} % {model.segment} != 0)")
        check_encoder_length(recipe, "model.encoder", data.lookback // model.segment,
                             "data.lookback / model.segment, the encoder's steps")

    def __init__(self, recipe: Recipe, run_dir: Path, scaler):
        super().__init__(recipe, run_dir, scaler)
        cfg = recipe.model
        builder = EncoderDecoderBuilder.from_recipe(recipe)
        self.independent = cfg.channel_independent
        c_in, c_out = (1, 1) if self.independent else (len(self.columns), len(self.targets))
        size, seg = cfg.embedding_size, cfg.segment
        self.input_embed = nn.Linear(seg * c_in, size)
        self.output_embed = nn.Linear(seg * c_out, size)  # the previous segment's values -> decoder input
        self.channel_embed = nn.Embedding(len(self.columns), size) if self.independent else None
        self.encoder = builder.build_encoder(input_size=size)
        self.decoder = builder.build_decoder(input_size=size, encoder=self.encoder)
        self.project = nn.Linear(self.decoder.output_size, seg * c_out)
        self.highway = nn.Linear(recipe.data.lookback, recipe.data.horizon) if cfg.highway else None
        if self.highway is not None:  # start from the recurrent forecast alone, not from random noise added to it
            nn.init.zeros_(self.highway.weight)
            nn.init.zeros_(self.highway.bias)

    def _flat(self, v: torch.Tensor) -> torch.Tensor:
        """[B, T, C] -> [B*C, T, 1] when channel-independent (each column its own sequence), else unchanged."""
        if not self.independent:
            return v
        return v.permute(0, 2, 1).reshape(-1, v.shape[1], 1)

    def _unflat(self, v: torch.Tensor, batch: int) -> torch.Tensor:
        if not self.independent:
            return v
        return v.reshape(batch, -1, v.shape[1]).permute(0, 2, 1)  # [B*C, T, 1] -> [B, T, C]

    def _embed(self, layer: nn.Linear, v: torch.Tensor) -> torch.Tensor:
        out = layer(v)  # [B', ..., E]
        if self.channel_embed is not None:
            channels = torch.arange(len(self.columns), device=v.device).repeat(v.shape[0] // len(self.columns))
            emb = self.channel_embed(channels)  # [B', E]
            out = out + (emb.unsqueeze(1) if out.dim() == 3 else emb)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Lookback [B, L, C_in] (and true horizon [B, H, C_out] for teacher forcing) to forecasts [B, H, C_out]."""
        batch, seg, horizon = x.shape[0], self.recipe.model.segment, self.recipe.data.horizon
        base = x[:, -1:, :] if self.recipe.model.relative else torch.zeros_like(x[:, -1:, :])  # [B, 1, C_in]
        x = x - base
        history = self._flat(x)  # [B', L, c_in]
        segments = history.reshape(history.shape[0], -1, seg * history.shape[2])  # [B', L/s, s*c_in]
        embedded = self._embed(self.input_embed, segments)  # [B', L/s, E]
        lengths = torch.full((embedded.shape[0],), embedded.shape[1], dtype=torch.long)
        encoded = self.encoder(embedded, lengths)  # states [B', L/s, D], mask [B', L/s], pooled [B', D]
        memory = self.decoder.prepare_memory(encoded)
        state = self.decoder.init_state(encoded)
        targets_in_x = x[:, :, self.target_in_input]  # [B, L, C_out]
        prev = self._flat(targets_in_x[:, -seg:]).flatten(1)  # last observed segment [B', s*c_out]
        teacher = None
        if y is not None and self.training and self.recipe.model.teacher_forcing > 0:
            flat = self._flat(y - base[:, :, self.target_in_input])  # [B', H, c_out]
            teacher = flat.reshape(flat.shape[0], horizon // seg, -1)  # [B', H/s, s*c_out]
        outputs = []
        for step in range(horizon // seg):
            output, state, _ = self.decoder.step(self._embed(self.output_embed, prev), state, memory)  # [B', H_dec]
            pred = self.project(output)  # [B', s*c_out]
            outputs.append(pred)
            use_teacher = teacher is not None and torch.rand(()) < self.recipe.model.teacher_forcing
            prev = teacher[:, step] if use_teacher else pred
        pred = torch.stack(outputs, dim=1).reshape(outputs[0].shape[0], horizon, -1)  # [B', H, c_out]
        pred = self._unflat(pred, batch)  # [B, H, C_out]
        if self.highway is not None:  # the same linear map over each target's lookback: [B, C_out, L] -> [B, C_out, H]
            pred = pred + self.highway(targets_in_x.transpose(1, 2)).transpose(1, 2)
        return pred + base[:, :, self.target_in_input]  # [B, H, C_out]
