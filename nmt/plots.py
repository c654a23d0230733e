"""Curves from a run's ``logs/metrics.csv``: ``python -m nmt.plots RUN_DIR [METRIC ...]``.

Writes ``RUN_DIR/<metric>.png`` (e.g. ``val_bleu.png``) against wall-clock minutes of training and
prints the points as a table, so the figure and its numbers come from the same command.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path


def read_curve(run_dir: Path, metric: str, x: str = "val/wall_minutes") -> list[tuple[float, float, int]]:
    """(minutes, value, step) for every row of metrics.csv that logged ``metric``."""
    with open(Path(run_dir) / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        return [(float(row[x]), float(row[metric]), int(row["step"]))
                for row in csv.DictReader(f) if row.get(metric) and row.get(x)]


def plot_curve(run_dir: Path, metric: str = "val/bleu") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = read_curve(run_dir, metric)
    out = Path(run_dir) / f"{metric.replace('/', '_')}.png"
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_ylabel(metric)
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    print(f"{'minutes':>8} {'step':>7} {metric:>10}")
    for minutes, value, step in points:
        print(f"{minutes:8.1f} {step:7d} {value:10.2f}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    run = Path(sys.argv[1])
    for name in sys.argv[2:] or ["val/bleu"]:
        plot_curve(run, name)
