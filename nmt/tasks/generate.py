"""One-to-many generation: a single input vector to a sequence, the input fed at every step.

Follow one row: the C_in values of the current row are embedded by a Linear layer; the embedding,
plus a learned embedding of the step number, is the input at each of ``horizon`` steps of the
encoder plugin (run causally, unidirectional by default); a Linear head reads each state into the
C_out values of that future row. With ``relative`` the head predicts changes from the current values.
"""
from __future__ import annotations

from pathlib import Path
import torch
from pydantic import Field
from torch import nn

from nmt.contracts import build_encoder
from nmt.data.series import WindowShape
from nmt.errors import RecipeError
from nmt.recipe import EncoderSection, Recipe, Section
from nmt.registry import register
from nmt.tasks.limits import check_encoder_length
from nmt.tasks.series import MAX_WINDOW_ROWS, Loss, SeriesData, SeriesTask, format_value


class GenerateData(SeriesData):
    lookback: int = Field(1, gt=0, strict=True)  # one row in: must be 1
    horizon: int = Field(24, gt=0, le=MAX_WINDOW_ROWS, strict=True)  # rows generated after it


class GenerateModel(Section):
    encoder: EncoderSection = {"name": "gru", "bidirectional": False}
    embedding_size: int = Field(64, gt=0, le=65536)
    relative: bool = False  # predict changes from the current values of the targets
    loss: Loss = "mse"


@register("task", "generate")
class GenerateTask(SeriesTask):
    """One-to-many: the values of one row in, the next ``horizon`` rows of the targets out."""

    DataConfig = GenerateData
    ModelConfig = GenerateModel

    @classmethod
    def window_shape(cls, data) -> WindowShape:
        return WindowShape(1, 1, data.horizon)

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        super().check_recipe(recipe, check_data)
        path, data = recipe.path, recipe.data
        if data.lookback != 1:
            raise RecipeError(f"{path}: data.lookback", f"generate reads one row; expected 1, got {data.lookback}")
        if recipe.model.relative and any(t not in data.columns for t in (data.targets or data.columns)):
            raise RecipeError(f"{path}: model.relative", "needs every target among data.columns")
        check_encoder_length(recipe, "model.encoder", data.horizon, "data.horizon, the encoder's steps")

    def __init__(self, recipe: Recipe, run_dir: Path, scaler):
        super().__init__(recipe, run_dir, scaler)
        cfg = recipe.model
        self.input_embed = nn.Linear(len(self.columns), cfg.embedding_size)
        self.step_embed = nn.Embedding(recipe.data.horizon, cfg.embedding_size)
        self.encoder = build_encoder(recipe.components["model.encoder"], input_size=cfg.embedding_size)
        self.head = nn.Linear(self.encoder.output_size, len(self.targets))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """One row [B, 1, C_in] to the next rows [B, H, C_out]."""
        row = x[:, -1]  # [B, C_in]
        steps = self.step_embed.weight.unsqueeze(0)  # [1, H, E]
        inputs = self.input_embed(row).unsqueeze(1) + steps  # the same input at every step [B, H, E]
        lengths = torch.full((x.shape[0],), inputs.shape[1], dtype=torch.long)
        states = self.encoder(inputs, lengths).states  # [B, H, D]
        pred = self.head(states)  # [B, H, C_out]
        if self.recipe.model.relative:
            pred = pred + row[:, self.target_in_input].unsqueeze(1)
        return pred

    def predict_series(self, series, inputs: torch.Tensor):
        """A forecast from every input row: rows ``origin, step, targets...``."""
        pred = self.scaler.inverse(self.predict_windows(inputs.unsqueeze(1)).numpy(), self.targets)  # [N, H, C]
        rows = []
        for i, forecast in enumerate(pred):
            origin = series.times[i] or i
            rows.extend([origin, k + 1, *map(format_value, values)] for k, values in enumerate(forecast))
        return ["origin", "step", *self.targets], rows
