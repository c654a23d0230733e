"""The base of every task: a LightningModule built from a validated recipe and a run directory.

A task owns its model and its loss; the data module owns reading and batching; the Trainer owns
the loop. Subclasses declare ``DataConfig`` and ``ModelConfig`` (pydantic sections) and register
themselves with ``@nmt.register("task", name)``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from pydantic import BaseModel

from nmt.errors import DataError, RecipeError, TrainingDiverged, UserError
from nmt.recipe import Recipe


class Task(pl.LightningModule):
    """A trainable model for one task shape, built from a recipe and the artifacts in its run dir."""

    DataConfig: ClassVar[type[BaseModel]]
    ModelConfig: ClassVar[type[BaseModel]]
    monitor: ClassVar[str] = "val/loss"  # the metric that picks the best checkpoint
    monitor_mode: ClassVar[str] = "min"
    label_probabilities: ClassVar[bool] = False  # nmt predict --probabilities: each label's probability

    def __init__(self, recipe: Recipe, run_dir: Path):
        super().__init__()
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self._plateau = None

    # --- recipe and run directory ---------------------------------------------------------

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        """Validate what pydantic alone cannot (plugin sections, data files); raise RecipeError."""

    @classmethod
    def prepare_run(cls, recipe: Recipe, run_dir: Path) -> None:
        """Fit what must be fitted before training (tokenizers, scalers) and save it in run_dir.

        Called on rank 0 only; must be idempotent (a resumed run keeps its artifacts)."""

    @classmethod
    def from_run(cls, recipe: Recipe, run_dir: Path) -> "Task":
        """Build the model from the recipe and the artifacts saved in ``run_dir``."""
        return cls(recipe, run_dir)

    def make_datamodule(self) -> pl.LightningDataModule:
        raise NotImplementedError

    def no_training_example(self) -> UserError:
        """The error for a data module left with no training example: which file, how many lines, why.

        Assumes the usual data section (``train`` with ``src``/``tgt`` or ``path``, ``max_length``);
        a task that filters otherwise overrides it."""
        from nmt.data.text import no_usable_example
        from nmt.recipe import resolve_data_path

        data = self.recipe.data
        train = data.train
        names = [getattr(train, side) for side in ("src", "tgt") if isinstance(getattr(train, side, None), str)]
        names = names or [train if isinstance(train, str) else getattr(train, "path", None)]
        if None in names:
            return DataError(None, "no usable training example (every one was dropped)")
        return no_usable_example([resolve_data_path(name, data.root) for name in names],
                                 getattr(data, "max_length", None), getattr(data, "encoding_errors", "strict"))

    def predict_file(self, input_path, output_path, **options) -> None:
        translates = hasattr(self, "decode_step")  # a translation run, the commonest mix-up
        raise UserError(f"task '{self.recipe.spec.task}'", "does not support nmt predict" +
                        ("; it translates: use nmt translate" if translates else ""))

    # --- optimisation ---------------------------------------------------------------------

    def configure_optimizers(self):
        cfg = self.recipe.spec.optim
        params = [p for p in self.parameters() if p.requires_grad]
        if cfg.name == "sgd":
            optimizer = torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)
        else:
            factory = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
            optimizer = factory(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.scheduler == "plateau":
            # Stepped by hand after each validation, which may happen every N steps, not per epoch.
            self._plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=self.monitor_mode, factor=cfg.plateau_factor,
                patience=cfg.plateau_patience, min_lr=cfg.min_lr)
        if cfg.scheduler in ("warmup", "inverse_sqrt", "cosine"):
            # Lightning steps it after every optimiser step and keeps its state in the checkpoint.
            scheduler = step_schedule(optimizer, cfg, self.total_steps(cfg))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return optimizer

    def total_steps(self, cfg) -> int | None:
        """Optimiser steps the cosine schedule spans: optim.total_steps, else what the trainer will run."""
        if cfg.scheduler != "cosine":
            return None
        if cfg.total_steps is not None:
            return cfg.total_steps
        estimated = self.trainer.estimated_stepping_batches
        if not math.isfinite(estimated):
            raise RecipeError(f"{self.recipe.path}: optim.total_steps",
                              "required by the cosine schedule when the trainer has no max_steps or max_epochs")
        return int(estimated)

    def step_plateau(self, value: float) -> None:
        if self._plateau is not None and not self.trainer.sanity_checking:
            self._plateau.step(value)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._plateau is not None:
            checkpoint["nmt_plateau"] = self._plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_plateau = checkpoint.get("nmt_plateau")

    def on_train_start(self) -> None:
        pending = getattr(self, "_pending_plateau", None)
        if pending is not None and self._plateau is not None:
            self._plateau.load_state_dict(pending)

    def check_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop at the first NaN or infinite loss, naming the step; the last good checkpoint stays."""
        if not torch.isfinite(loss.detach()).all():
            last = self.run_dir / "checkpoints" / "last.ckpt"
            # a first start that fails before its first checkpoint is undone, its run directory with it
            kept = (f"the last good checkpoint is kept in {last.parent}" if last.exists()
                    else "no checkpoint was written yet")
            raise TrainingDiverged(
                f"training diverged: loss is {loss.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}); {kept}; try a lower optim.lr or trainer.gradient_clip_val, "
                "or check the model's plugins")
        return loss


def step_schedule(optimizer: torch.optim.Optimizer, cfg, total: int | None) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-step schedules of ``optim.scheduler``: a factor of ``optim.lr`` at each step, from
    ``torch.optim.lr_scheduler`` (LambdaLR for warm-up and inverse square root, CosineAnnealingLR after
    a LinearLR warm-up for cosine)."""
    warmup = cfg.warmup_steps
    if cfg.scheduler == "cosine":
        floor = min(cfg.min_lr / cfg.lr, 1.0)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1), eta_min=cfg.min_lr)
        if not warmup:
            return cosine
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=max(1 / warmup, floor), total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])

    def factor(step: int) -> float:  # step 0 is the first optimiser step's learning rate
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "inverse_sqrt":
            return math.sqrt(max(warmup, 1) / (step + 1))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
