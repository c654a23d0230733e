"""What the numeric-series tasks share: the data section, the scaler in the run directory, windows, the loss,
validation, and ``nmt predict`` from a CSV to a CSV.

Follow one window: ``prepare_run`` reads the training rows and saves a z-score scaler in
``run_dir/fitted/scaler.json``; ``windows`` scales the whole series with it and cuts the windows of
each split (:mod:`nmt.data.series`); the subclass (``regress``, ``forecast``, ``generate``) maps inputs
[B, L, C_in] to predictions [B, T, C_out] in z-score units; ``predict_file`` inverts the scaling so a
user sees original units. Subclasses declare ``window_shape`` and ``forward``.
"""
from __future__ import annotations

import csv
import datetime
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, FiniteFloat, StrictInt, field_validator
from pydantic_core import PydanticCustomError

from nmt.data.scaling import Scaler
from nmt.data.series import SPLITS, Series, WindowDataModule, WindowDataset, WindowShape, parse_time_bound, \
    read_header, read_series, split_rows, window_origins
from nmt.errors import DataError, RecipeError
from nmt.recipe import Recipe, Section, resolve_data_path
from nmt.runs import fitted_dir
from nmt.tasks.base import Task
from nmt.tasks.limits import MAX_BATCH_SENTENCES, MAX_WORKERS

Size = Union[StrictInt, FiniteFloat]  # NaN would pass the range check below; true is no row count
SCALER_FILE = "scaler.json"  # in the run's fitted folder
#: The most rows of a lookback window or a horizon. A year of hourly rows (8760) fits, and the long-horizon
#: benchmarks stop at 720; every batch holds batch_size windows of this many rows, generate embeds each of its
#: horizon steps and forecast's highway holds lookback x horizon weights (at most 10^8, 400 MB), so a typo of a
#: few more zeros is a recipe error rather than tens of gigabytes asked of the device.
MAX_WINDOW_ROWS = 10_000


class SplitSizes(Section):
    """Consecutive splits in time order: a row count (int) or a fraction of the rows (float)."""

    train: Size
    valid: Size = 0
    test: Size = 0

    @field_validator("train", "valid", "test", mode="before")
    @classmethod
    def _not_boolean(cls, value):
        if isinstance(value, bool):  # YAML's true would count as 1 row
            raise PydanticCustomError("split_size", "expected a row count or a fraction between 0 and 1")
        return value

    @field_validator("train", "valid", "test")
    @classmethod
    def _non_negative(cls, value):
        if value < 0 or (isinstance(value, float) and value > 1):
            raise ValueError("expected a row count or a fraction between 0 and 1")
        return value


class SeriesData(Section):
    root: Optional[str] = None  # default: $NMT_DATA, else ../shared/data
    path: str  # a CSV with a header row
    time_column: Optional[str] = None
    columns: list[str] = Field(min_length=1)  # model inputs
    targets: Optional[list[str]] = None  # predicted columns; default (null): the inputs
    means: dict[str, list[str]] = {}  # derived columns: name -> columns averaged per row
    # keep rows with start <= time < end (needs time_column): numbers, or dates such as 2020-01-03 or 2020-01-03 12:00
    start: Optional[str] = None
    end: Optional[str] = None
    split: SplitSizes = SplitSizes(train=0.7, valid=0.1, test=0.2)
    lookback: int = Field(24, gt=0, le=MAX_WINDOW_ROWS, strict=True)  # input rows per window
    stride: int = Field(1, gt=0, le=MAX_WINDOW_ROWS, strict=True)  # between training windows
    scale: bool = True  # z-scores fitted on the training rows
    batch_size: int = Field(64, gt=0, le=MAX_BATCH_SENTENCES, strict=True)  # windows per training batch
    valid_batch_size: int = Field(256, gt=0, le=MAX_BATCH_SENTENCES, strict=True)
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS, strict=True)  # DataLoader processes, each a copy of the data
    encoding_errors: str = Field("strict", pattern="^(strict|replace)$")

    @field_validator("columns", "targets")
    @classmethod
    def _distinct(cls, names: Optional[list[str]]) -> Optional[list[str]]:
        if names == []:  # was taken for "every input column", which leaving the key out says
            raise PydanticCustomError("no_columns", "expected at least one column (leave the key out for the default)")
        twice = sorted({name for name in names or () if names.count(name) > 1})
        if twice:  # the model would read (or predict) the same column twice, under two input positions
            raise PydanticCustomError("duplicate_column", f"expected distinct column names; "
                                                          f"{', '.join(map(repr, twice))} appears more than once")
        return names

    @field_validator("start", "end", mode="before")
    @classmethod
    def _time_as_text(cls, value):
        """YAML reads an unquoted 2020-01-03 as a date and 2020 as a number: both are times as written."""
        if isinstance(value, (datetime.date, int, float)) and not isinstance(value, bool):
            return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else \
                value.isoformat() if isinstance(value, datetime.date) else str(value)
        return value

    @field_validator("start", "end")
    @classmethod
    def _time(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            try:
                parse_time_bound(value)
            except ValueError as exc:  # compared as text, 2020-1-3 kept every row and notadate none
                raise PydanticCustomError("time_bound", str(exc).partition(", got")[0]) from None
        return value


Loss = Literal["mse", "mae", "huber"]


def regression_loss(name: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "mae":
        return F.l1_loss(pred, target)
    if name == "huber":
        return F.huber_loss(pred, target, delta=1.0)
    return F.mse_loss(pred, target)


class SeriesTask(Task):
    """Base of the series tasks: windows of a scaled CSV in, real values out (z-scores inside, units outside)."""

    DataConfig = SeriesData

    def __init__(self, recipe: Recipe, run_dir: Path, scaler: Scaler):
        super().__init__(recipe, run_dir)
        self.scaler = scaler
        data = recipe.data
        self.columns = list(data.columns)
        self.targets = list(data.targets or data.columns)
        self.all_columns = self.columns + [c for c in self.targets if c not in self.columns]
        self.input_idx = [self.all_columns.index(c) for c in self.columns]
        self.target_idx = [self.all_columns.index(c) for c in self.targets]
        # where each target sits among the inputs (-1: not an input), for models that predict changes
        self.target_in_input = [self.columns.index(c) if c in self.columns else -1 for c in self.targets]

    # --- what a subclass declares ---------------------------------------------------------

    @classmethod
    def window_shape(cls, data) -> WindowShape:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Inputs [B, L, C_in] (and teacher targets [B, T, C_out] when training) to predictions [B, T, C_out]."""
        raise NotImplementedError

    # --- recipe and run directory ---------------------------------------------------------

    @classmethod
    def check_recipe(cls, recipe: Recipe, check_data: bool = True) -> None:
        data, path = recipe.data, recipe.path
        for name, cols in data.means.items():
            if not cols:
                raise RecipeError(f"{path}: data.means.{name}", "expected a list of columns to average")
        if (data.start or data.end) and not data.time_column:
            raise RecipeError(f"{path}: data.start" if data.start else f"{path}: data.end", "needs data.time_column")
        if data.start and data.end:
            start, end = parse_time_bound(data.start), parse_time_bound(data.end)
            for a, b in ((start.number, end.number), (start.date, end.date)):
                if a is not None and b is not None and a >= b:
                    raise RecipeError(f"{path}: data.end", f"expected a time after data.start ({data.start}), "
                                                           f"got {data.end}: no row would be kept")
        if check_data:
            source = resolve_data_path(data.path, data.root)
            header = read_header(source, {}, [], None, data.encoding_errors) if data.means else []
            for name in data.means:
                if name in header:  # the mean would silently stand in for the file's own column of that name
                    raise RecipeError(f"{path}: data.means.{name}", f"'{name}' is a column of {data.path} already; "
                                                                    "give the derived column another name")

    @classmethod
    def read(cls, recipe: Recipe, path=None, stream=None, filter_time: bool = True) -> Series:
        data = recipe.data
        columns = list(data.columns) + [c for c in (data.targets or []) if c not in data.columns]
        return read_series(path or resolve_data_path(data.path, data.root), columns, data.time_column,
                           means=data.means, start=data.start if filter_time else None,
                           end=data.end if filter_time else None, encoding_errors=data.encoding_errors,
                           stream=stream)

    @classmethod
    def prepare_run(cls, recipe: Recipe, run_dir: Path) -> None:
        """Fit the z-score scaler on the training rows only and save it (kept when a run resumes)."""
        target = fitted_dir(run_dir) / SCALER_FILE
        if target.exists():
            return
        series = cls.read(recipe)
        lo, hi = split_rows(len(series), recipe.data.split.model_dump(), f"{recipe.path}: data.split")["train"]
        target.parent.mkdir(parents=True, exist_ok=True)
        Scaler.fit(series.values[lo:hi], series.columns, enabled=recipe.data.scale).save(target)

    @classmethod
    def from_run(cls, recipe: Recipe, run_dir: Path) -> "SeriesTask":
        return cls(recipe, run_dir, Scaler.load(fitted_dir(run_dir) / SCALER_FILE))

    def windows(self, series: Series | None = None, stride: int | None = None) -> dict[str, WindowDataset]:
        """The windows of each split of ``series`` (default: the recipe's data), scaled with the run's scaler."""
        data = self.recipe.data
        series = series if series is not None else self.read(self.recipe)
        bounds = split_rows(len(series), data.split.model_dump(), f"{self.recipe.path}: data.split")
        values = self.scaler.transform(series.values, series.columns)
        shape = self.window_shape(data)
        out = {}
        for name in SPLITS:
            origins = window_origins(bounds[name], shape, stride=(stride or data.stride) if name == "train" else 1,
                                     inputs_within=name == "train")
            out[name] = WindowDataset(values, self.input_idx, self.target_idx, shape, origins)
        if not len(out["train"]):
            raise DataError(series.path, f"no training window fits in {bounds['train'][1]} training rows "
                                         f"(lookback {shape.lookback}, targets up to {shape.last} rows ahead)")
        return out

    def make_datamodule(self) -> WindowDataModule:
        data = self.recipe.data
        sets = self.windows()
        if not len(sets["valid"]):
            raise DataError(self.recipe.data.path, "no validation window: give data.split.valid enough rows "
                                                   f"for {self.window_shape(data).target_length} target rows")
        return WindowDataModule(sets["train"], sets["valid"], data.batch_size, data.valid_batch_size,
                                seed=self.recipe.spec.seed, num_workers=data.num_workers)

    # --- training and validation ----------------------------------------------------------

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return regression_loss(self.recipe.model.loss, pred.float(), target.float())

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.check_finite(self.loss(self(x, y), y))
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        pred = self(x).float()
        values = {"val/loss": self.loss(pred, y), "val/mse": F.mse_loss(pred, y), "val/mae": F.l1_loss(pred, y)}
        self.log_dict(values, prog_bar=True, batch_size=x.shape[0], on_epoch=True)

    def on_validation_epoch_end(self):
        value = self.trainer.callback_metrics.get(self.monitor)
        if value is not None:
            self.step_plateau(float(value))

    @torch.no_grad()
    def predict_windows(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predictions [W, T, C_out] (z-scores) for inputs [W, L, C_in], in eval mode, on the model's device."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        outputs = [self(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return torch.cat(outputs) if outputs else torch.zeros(0, self.window_shape(self.recipe.data).target_length,
                                                             len(self.targets))

    # --- nmt predict ----------------------------------------------------------------------

    def predict_file(self, input_path, output_path, encoding_errors: str = "strict", **options) -> None:
        """A series CSV (with the model's input columns) in; a CSV of predictions in original units out.

        Rows before the recipe's ``data.start`` are dropped, as in training: the model never saw that
        era (MSFT's 1986 prices are a hundredth of its 2012 ones). ``data.end`` is not applied: what
        comes after the data the model was trained on is what a prediction is for."""
        from nmt.io import open_output
        from nmt.translate import standard_input

        name = str(input_path) if input_path else "<stdin>"
        stream = None if input_path else standard_input()  # bytes: decoded line by line, as for a file
        data = self.recipe.data
        # Only the model's inputs: targets that are not inputs are what the user wants predicted.
        means = {k: v for k, v in data.means.items() if k in self.columns}
        series = read_series(input_path or name, self.columns, data.time_column, means=means,
                             start=getattr(data, "start", None), encoding_errors=encoding_errors, stream=stream)
        needed = self.rows_needed()
        if len(series) < needed:
            raise DataError(series.where(len(series) - 1),
                            f"series too short: {len(series)} rows, the model needs at least {needed}")
        scaled = torch.as_tensor(self.scaler.transform(series.values, series.columns), dtype=torch.float32)
        header, rows = self.predict_series(series, scaled)  # [N, C_in]
        with open_output(output_path) as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)

    def rows_needed(self) -> int:
        return self.window_shape(self.recipe.data).lookback

    def predict_series(self, series: Series, inputs: torch.Tensor) -> tuple[list[str], list[list]]:
        """Default: one forecast from the end of the series, rows ``origin, step, targets...``."""
        lookback = self.window_shape(self.recipe.data).lookback
        pred = self.predict_windows(inputs[-lookback:].unsqueeze(0))[0].numpy()  # [T, C_out]
        pred = self.scaler.inverse(pred, self.targets)
        origin = series.times[-1] if series.times[-1] else str(len(series) - 1)
        rows = [[origin, k + 1, *map(format_value, row)] for k, row in enumerate(pred)]
        return ["origin", "step", *self.targets], rows


def format_value(value: float) -> str:
    """A predicted value as written to a CSV: six significant digits."""
    return f"{float(value):.6g}"


def last_state_detached(state):
    """A recurrent state (a tensor or an (h, c) tuple) cut from the graph: TBPTT carries values, not gradients."""
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
