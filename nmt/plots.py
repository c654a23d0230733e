"""Learning curves from a run's ``logs/metrics.csv``: ``nmt plot RUN_DIR [METRIC ...]``.

Each metric (default: every one the run logged) becomes ``RUN_DIR/<metric>.png`` (``val/bleu`` ->
``val_bleu.png``) with two panels, against training steps and against wall-clock minutes of
training, and its points are printed as a table, so the figure and its numbers come from the same
command. Wall time is logged at each validation (``val/wall_minutes``, kept across resumes); a row
logged between validations (``train/loss``) gets its minutes by linear interpolation over steps.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from nmt.errors import DataError, RunError, UserError, quote

WALL = "val/wall_minutes"
NOT_METRICS = {"epoch", "step", WALL}
INTEGER_COLUMNS = {"epoch", "step"}
MAX_LINE_BYTES = 1 << 16  # a row of metrics.csv is a few hundred bytes; a longer one is not a row


@dataclass
class Curve:
    metric: str
    steps: list[int]
    minutes: list[float]
    values: list[float]


def decoded_lines(path: Path):
    """The lines of ``path`` as text, each checked to be UTF-8 and at most MAX_LINE_BYTES long."""
    with open(path, "rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(f"{path}:{number}", f"line longer than {MAX_LINE_BYTES} bytes: the file is damaged")
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}", f"invalid UTF-8 (byte 0x{raw[exc.start]:02x}): "
                                                    "the file is damaged") from None


def check_row(path: Path, line: int, header: list[str], fields: list[str]) -> dict[str, str]:
    """One row as {column: value}, every value a number (an integer for epoch and step) or empty."""
    if len(fields) != len(header):
        raise DataError(f"{path}:{line}", f"expected {len(header)} fields as in the header, got {len(fields)}")
    for name, value in zip(header, fields):
        if not value:
            continue
        try:
            int(value) if name in INTEGER_COLUMNS else float(value)
        except ValueError:
            kind = "an integer" if name in INTEGER_COLUMNS else "a number"
            raise DataError(f"{path}:{line}", f"column {quote(name)}: expected {kind}, got {quote(value)}") from None
    return dict(zip(header, fields))


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of ``RUN_DIR/logs/metrics.csv``, checked: a damaged file is a DataError naming its line."""
    path = Path(run_dir) / "logs" / "metrics.csv"
    if not path.is_file():
        raise RunError(path, "no metrics logged yet (is this a run directory that has trained?)")
    reader = csv.reader(decoded_lines(path))
    rows = []
    try:
        header = next(reader, None)
        if header is not None and "step" not in header:
            raise DataError(f"{path}:1", f"no 'step' column in the header {quote(','.join(header))}: "
                                         "not the metrics.csv of nmt train")
        for fields in reader:
            if not fields:  # a blank line
                continue
            rows.append(check_row(path, reader.line_num, header, fields))
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}", f"not CSV ({exc})") from None
    if not rows:
        raise RunError(run_dir, f"the run has logged no metrics yet ({path} holds no rows)")
    return rows


def logged_metrics(rows: list[dict[str, str]]) -> list[str]:
    """Every column with at least one value, in the order of the file's header."""
    names = list(rows[0]) if rows else []
    return [n for n in names if n not in NOT_METRICS and any(r.get(n) for r in rows)]


def minutes_at(rows: list[dict[str, str]]) -> callable:
    """step -> wall minutes, interpolated between validations (and from step 0 at minute 0); past the
    last validation, extrapolated at the last known rate."""
    known = sorted({(int(r["step"]), float(r[WALL])) for r in rows if r.get(WALL) and r.get("step")})
    points = [(0, 0.0)] + [p for p in known if p[0] > 0]

    def at(step: int) -> float:
        for (s0, m0), (s1, m1) in zip(points, points[1:]):
            if step <= s1:
                return m0 + (m1 - m0) * (step - s0) / max(s1 - s0, 1)
        if len(points) < 2:
            return 0.0
        (s0, m0), (s1, m1) = points[-2], points[-1]
        return m1 + (m1 - m0) / max(s1 - s0, 1) * (step - s1)

    return at


def read_curve(run_dir: Path, metric: str, rows: list[dict[str, str]] | None = None) -> Curve:
    rows = read_rows(run_dir) if rows is None else rows
    if metric not in logged_metrics(rows):
        known = ", ".join(logged_metrics(rows)) or "none"
        raise UserError(f"metric {quote(metric)}", f"not logged by {run_dir}; logged: {known}")
    at = minutes_at(rows)
    points = [(int(r["step"]), float(r[metric])) for r in rows if r.get(metric) and r.get("step")]
    return Curve(metric, [s for s, _ in points], [at(s) for s, _ in points], [v for _, v in points])


def plot_curve(run_dir: Path, curve: Curve) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(run_dir) / f"{curve.metric.replace('/', '_')}.png"
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 3.5), sharey=True)
    marker = "o" if len(curve.values) <= 60 else None
    by_step.plot(curve.steps, curve.values, marker=marker)
    by_step.set_xlabel("training step")
    by_step.set_ylabel(curve.metric)
    by_time.plot(curve.minutes, curve.values, marker=marker, color="tab:orange")
    by_time.set_xlabel("training wall time (minutes)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{Path(run_dir).resolve().name}: {curve.metric}")
    fig.tight_layout()
    from nmt.io import atomic_open

    with atomic_open(out, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return out


def plot_run(run_dir: Path, metrics: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Plot ``metrics`` (default: all logged) of ``run_dir``, print each one's points; the PNG paths."""
    rows = read_rows(run_dir)
    if not metrics and not logged_metrics(rows):
        raise RunError(run_dir, f"the run has logged no metrics yet ({Path(run_dir) / 'logs' / 'metrics.csv'} "
                                "holds no values)")
    curves = [read_curve(run_dir, m, rows) for m in (metrics or logged_metrics(rows))]
    written = []
    for curve in curves:
        path = plot_curve(run_dir, curve)
        print(f"{'minutes':>8} {'step':>7} {curve.metric:>12}")
        for minutes, step, value in zip(curve.minutes, curve.steps, curve.values):
            print(f"{minutes:8.1f} {step:7d} {value:12.4g}")
        print(f"wrote {path}")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m nmt.plots RUN_DIR [METRIC ...], as before `nmt plot`
    plot_run(Path(sys.argv[1]), sys.argv[2:])
