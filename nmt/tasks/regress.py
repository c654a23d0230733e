"""Many-to-one (or per-step) regression over a window of a numeric series, with truncated BPTT.

Follow one window: inputs [B, L, C_in] go through the encoder plugin; ``output: last`` reads the
encoder's pooled summary (an RNN's top-layer final state) and a Linear head gives one vector
[B, 1, C_out] (the row ``offset`` rows after the window); ``output: every_step`` puts the head on
every state [B, L, C_out].

With ``model.tbptt_steps`` = k, a long window is cut into pieces of k steps: the encoder runs over
each piece from the previous piece's recurrent state (detached, so gradients stop at the piece border
while values flow on), and the optimiser steps once per piece (manual optimisation: Lightning 2.x
has no built-in TBPTT). Memory holds one piece's graph, whatever the window length.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
from pydantic import Field, PositiveInt
from torch import nn

from nmt.contracts import EncoderOutput, RecurrentState, build_encoder
from nmt.data.series import WindowShape
from nmt.errors import RecipeError
from nmt.recipe import EncoderSection, Recipe, Section
from nmt.registry import register
from nmt.tasks.limits import check_encoder_length
from nmt.tasks.series import MAX_WINDOW_ROWS, Loss, SeriesData, SeriesTask, format_value, last_state_detached

#: Rows per forward pass when ``nmt predict`` runs a recurrent encoder over a whole series (see
#: :meth:`RegressTask.every_step_predictions`): memory for one piece, whatever the length of the series.
PREDICT_PIECE_ROWS = 4096


class RegressData(SeriesData):
    offset: int = Field(1, ge=0, le=MAX_WINDOW_ROWS, strict=True)  # target row = last input row + offset (0: same row)
    output: Literal["last", "every_step"] = "last"


class RegressModel(Section):
    encoder: EncoderSection = {"name": "gru", "bidirectional": False}
    loss: Loss = "mse"
    relative: bool = False  # predict the change from the input value of each target column
    tbptt_steps: Optional[PositiveInt] = None  # truncated BPTT: optimiser steps per piece of this many steps
    clip_norm: Optional[float] = Field(1.0, gt=0, allow_inf_nan=False)  # gradient clipping under tbptt (trainer.gradient_clip_val otherwise)


@register("task", "regress")
class RegressTask(SeriesTask):
    """Regression from a window of a numeric series: one vector per window, or one per step (TBPTT-able)."""

    DataConfig = RegressData
    ModelConfig = RegressModel

    @classmethod
    def window_shape(cls, data) -> WindowShape:
        if data.output == "last":
            return WindowShape(data.lookback, data.offset, data.offset)
        return WindowShape(data.lookback, data.offset - data.lookback + 1, data.offset)

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        super().check_recipe(recipe, check_data)
        path, model = recipe.path, recipe.model
        encoder_cls, encoder_cfg = recipe.components["model.encoder"]
        targets = recipe.data.targets or recipe.data.columns
        if model.relative and any(t not in recipe.data.columns for t in targets):
            raise RecipeError(f"{path}: model.relative", "needs every target among data.columns")
        check_encoder_length(recipe, "model.encoder", recipe.data.lookback, "data.lookback, the encoder's steps")
        if model.tbptt_steps:
            if "initial_state" not in inspect.signature(encoder_cls.forward).parameters:
                raise RecipeError(f"{path}: model.encoder.name", "model.tbptt_steps needs an encoder that continues "
                                  "from a recurrent state (forward(inputs, lengths, initial_state), e.g. gru or lstm)")
            if getattr(encoder_cfg, "bidirectional", False):
                raise RecipeError(f"{path}: model.encoder.bidirectional",
                                  "must be false with model.tbptt_steps (a backward pass cannot be truncated)")
            for key in ("gradient_clip_val", "accumulate_grad_batches"):
                if key in recipe.spec.trainer:
                    raise RecipeError(f"{path}: trainer.{key}", "not supported with model.tbptt_steps "
                                      "(manual optimisation); use model.clip_norm")

    def __init__(self, recipe: Recipe, run_dir: Path, scaler):
        super().__init__(recipe, run_dir, scaler)
        cfg = recipe.model
        self.encoder = build_encoder(recipe.components["model.encoder"], input_size=len(self.columns))
        self.head = nn.Linear(self.encoder.output_size, len(self.targets))
        self.every_step = recipe.data.output == "every_step"
        if cfg.tbptt_steps:
            self.automatic_optimization = False

    # --- the model ------------------------------------------------------------------------

    def run(self, x: torch.Tensor, state: RecurrentState | None = None) -> tuple[torch.Tensor, RecurrentState | None]:
        """Inputs [B, S, C_in] from ``state`` to (predictions [B, T, C_out], the encoder's recurrent state)."""
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long)
        encoded: EncoderOutput = (self.encoder(x, lengths) if state is None
                                  else self.encoder(x, lengths, initial_state=state))  # states [B, S, D]
        if self.every_step:
            pred = self.head(encoded.states)  # [B, S, C_out]
            base = x[:, :, self.target_in_input] if self.recipe.model.relative else 0.0
        else:
            pred = self.head(encoded.pooled).unsqueeze(1)  # [B, D] (an RNN's forward end, backward start) -> [B, 1, C_out]
            base = x[:, -1:, self.target_in_input] if self.recipe.model.relative else 0.0
        return pred + base, encoded.recurrent

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(x)[0]

    # --- training: automatic, or truncated BPTT with manual optimisation -------------------

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        x, y = batch  # [B, S, C_in], [B, T, C_out]
        optimizer = self.optimizers()
        k, length = self.recipe.model.tbptt_steps, x.shape[1]
        state, losses = None, []
        for start in range(0, length, k):
            piece = x[:, start:start + k]  # [B, k, C_in]
            if not self.every_step and start + k < length:  # many-to-one: no loss before the last piece
                with torch.no_grad():
                    _, state = self.run(piece, state)
                continue
            pred, state = self.run(piece, state)
            target = y[:, start:start + k] if self.every_step else y
            loss = self.check_finite(self.loss(pred, target))
            optimizer.zero_grad()
            self.manual_backward(loss)
            if self.recipe.model.clip_norm:
                self.clip_gradients(optimizer, gradient_clip_val=self.recipe.model.clip_norm,
                                    gradient_clip_algorithm="norm")
            optimizer.step()
            self.step_schedule()
            state = last_state_detached(state)
            losses.append(loss.detach())
        loss = torch.stack(losses).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def step_schedule(self) -> None:
        """Advance the per-step schedule (warmup, inverse_sqrt, cosine) after an optimiser step under TBPTT.

        Lightning steps an ``interval: "step"`` scheduler after each automatic optimiser step only; under manual
        optimisation it never does, so the rate stayed at its first step's. Plateau is stepped by hand after each
        validation (``Task.step_plateau``) and is not among ``lr_schedulers()``."""
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def total_steps(self, cfg) -> int | None:
        """Optimiser steps the cosine schedule spans. Under TBPTT an ``every_step`` batch takes one optimiser step per
        piece, which Lightning's estimate (one per batch) does not know; ``trainer.max_steps`` counts optimiser steps."""
        total = super().total_steps(cfg)
        trainer, k = self.trainer, self.recipe.model.tbptt_steps
        if total is None or cfg.total_steps is not None or not k or trainer.max_epochs == -1:
            return total  # no cosine, the recipe's own length, no TBPTT, or max_steps alone (already optimiser steps)
        pieces = math.ceil(self.recipe.data.lookback / k) if self.every_step else 1  # see training_step
        by_epochs = int(trainer.num_training_batches) * max(trainer.max_epochs, 1) * pieces
        return by_epochs if trainer.max_steps == -1 else min(by_epochs, trainer.max_steps)

    # --- nmt predict ----------------------------------------------------------------------

    def predict_series(self, series, inputs: torch.Tensor):
        """``every_step``: a row per input row (:meth:`every_step_predictions`). ``last``: a row per window,
        dated by the window's last input row, predicting the row ``offset`` later."""
        offset = self.recipe.data.offset
        if self.every_step:
            pred = self.scaler.inverse(self.every_step_predictions(inputs), self.targets)  # [N, C_out]
            return (["time", "offset", *self.targets],
                    [[series.times[i] or i, offset, *map(format_value, row)] for i, row in enumerate(pred)])
        lookback = self.recipe.data.lookback
        windows = inputs.unfold(0, lookback, 1).transpose(1, 2)  # [W, L, C_in]
        pred = self.scaler.inverse(self.predict_windows(windows)[:, 0].numpy(), self.targets)  # [W, C_out]
        return (["time", "offset", *self.targets],
                [[series.times[lookback - 1 + w] or lookback - 1 + w, offset,
                  *map(format_value, row)] for w, row in enumerate(pred)])

    def every_step_predictions(self, inputs: torch.Tensor) -> np.ndarray:
        """A prediction [N, C_out] (z-scores) for each row of ``inputs`` [N, C_in], with bounded work per forward.

        A unidirectional recurrent encoder runs over pieces of ``PREDICT_PIECE_ROWS`` rows, each from the state
        the last one ended in: the same as one pass over the series, in memory for one piece. Any other encoder
        (a Transformer's cost grows with the square of the length; a backward pass cannot be cut) reads
        consecutive windows of ``data.lookback`` rows, the length it was trained on; the last window ends at
        the last row, and a row in two windows keeps the prediction with more context before it."""
        if self.carries_state():
            was_training = self.training
            self.eval()
            with torch.no_grad():
                state, pieces = None, []
                for start in range(0, len(inputs), PREDICT_PIECE_ROWS):
                    pred, state = self.run(inputs[start:start + PREDICT_PIECE_ROWS].unsqueeze(0).to(self.device), state)
                    pieces.append(pred[0].float().cpu())  # [piece, C_out]
            self.train(was_training)
            return torch.cat(pieces).numpy()
        lookback, rows = self.recipe.data.lookback, len(inputs)
        starts = list(range(0, rows - lookback + 1, lookback))
        if starts[-1] + lookback < rows:
            starts.append(rows - lookback)
        pred = self.predict_windows(torch.stack([inputs[s:s + lookback] for s in starts]))  # [W, L, C_out]
        out = torch.empty(rows, pred.shape[-1])
        for s, window in reversed(list(zip(starts, pred))):  # earlier windows overwrite the last one's overlap
            out[s:s + lookback] = window
        return out.numpy()

    def carries_state(self) -> bool:
        """Whether the encoder continues from a recurrent state and reads forward only (see check_recipe)."""
        encoder_cls, encoder_cfg = self.recipe.components["model.encoder"]
        return ("initial_state" in inspect.signature(encoder_cls.forward).parameters
                and not getattr(encoder_cfg, "bidirectional", False))
