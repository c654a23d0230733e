"""Z-scores fitted on the training data alone: one scaler for numeric series and for feature vectors.

A series task fits it on the training rows of its CSV and scales whole series in float64
(:meth:`Scaler.transform`), then turns predictions back into the user's units (:meth:`Scaler.inverse`).
A classifier of feature vectors fits it on every time step of the training sequences and scales
each input sequence in float32, the precision the model reads (:meth:`Scaler.scale_steps`).
Either way it is saved as JSON in the run's fitted folder, so prediction scales as training did.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from nmt.errors import RunError
from nmt.io import atomic_write_text


class Scaler:
    """Per-column ``(x - mean) / std``; ``columns`` names the columns of a series (None for feature vectors)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], columns: Sequence[str] | None = None):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.columns = list(columns) if columns is not None else None

    @property
    def dim(self) -> int:
        """The number of columns (features per time step)."""
        return len(self.mean)

    @classmethod
    def fit(cls, values: np.ndarray, columns: Sequence[str] | None = None, enabled: bool = True,
            min_std: float = 1e-12) -> "Scaler":
        """Fitted on training rows ``values`` [N, C]; a column whose std is below ``min_std`` is
        constant and stays put (std 1), as does every column when not ``enabled``."""
        width = values.shape[1]
        if not enabled:
            return cls(np.zeros(width), np.ones(width), columns)
        std = values.std(axis=0)
        return cls(values.mean(axis=0), np.where(std > min_std, std, 1.0), columns)

    # --- series: float64 arrays, columns by name -------------------------------------------

    def transform(self, values: np.ndarray, columns: Sequence[str] | None = None) -> np.ndarray:
        mean, std = self._select(columns)
        return (values - mean) / std

    def inverse(self, values: np.ndarray, columns: Sequence[str] | None = None) -> np.ndarray:
        """Back to original units; ``columns`` names the last axis of ``values`` (default: all)."""
        mean, std = self._select(columns)
        return values * std + mean

    def _select(self, columns):
        if columns is None:
            return self.mean, self.std
        idx = [self.columns.index(c) for c in columns]
        return self.mean[idx], self.std[idx]

    # --- feature vectors: one sequence of steps at a time, in float32 ----------------------

    def scale_steps(self, steps: list[list[float]]) -> list[list[float]]:
        """A sequence of feature vectors [S][F], scaled in float32 (the model's precision)."""
        if not steps:
            return []
        mean, std = self.mean.astype(np.float32), self.std.astype(np.float32)
        return ((np.asarray(steps, dtype=np.float32) - mean) / std).tolist()

    # --- the file in the run directory -----------------------------------------------------

    def to_json(self) -> str:
        payload = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.columns is not None:
            payload = {"columns": self.columns, **payload}
        return json.dumps(payload, indent=1)

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> "Scaler":
        """A saved scaler; also the ``features.json`` of classification runs written before this class
        (``dim``, ``mean`` and ``scale``, the std under another name)."""
        path = Path(path)
        if not path.is_file():
            raise RunError(path, "scaler not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            std = data["std"] if "std" in data else data["scale"]
            if len(data["mean"]) != len(std):
                raise ValueError(f"{len(data['mean'])} means for {len(std)} deviations")
            return cls(data["mean"], std, data.get("columns"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(path, f"unreadable scaler ({exc})") from None
