"""``nmt average``: one checkpoint whose weights are the element-wise mean of several kept ones.

Averaging the weights of the last checkpoints of a run (Vaswani et al. 2017, Junczys-Dowmunt et al.
2016) smooths out the noise of the last updates. A run keeps what it needs with the recipe's
``checkpoint.keep: N``: its N latest validations as ``checkpoints/step-<step>.ckpt`` and its N best by
the monitored score as ``checkpoints/best-<step>.ckpt``. The averaged checkpoint holds weights only
(no optimiser state): ``nmt translate --checkpoint`` reads it, training does not resume from it.
"""
from __future__ import annotations

import os
from pathlib import Path

import click
import torch

from nmt import runs
from nmt.errors import RunError
from nmt.io import atomic_open, refuse_same_file, same_file

PREFIXES = {"last": "step-", "best": "best-"}  # which kept checkpoints: the file names they have
KEEP_KEY = "checkpoint.keep"


def kept_files(run_dir: Path, which: str) -> list[tuple[int, Path]]:
    """(step, path) of the run's ``step-<step>.ckpt`` (``which="last"``) or ``best-<step>.ckpt``
    (``"best"``) files, oldest first."""
    prefix = PREFIXES[which]
    found = []
    for path in (Path(run_dir) / "checkpoints").glob(f"{prefix}*.ckpt"):
        step = path.stem[len(prefix):]
        if step.isdigit():
            found.append((int(step), path))
    return sorted(found)


def pick_checkpoints(run_dir: Path, which: str, n: int) -> list[Path]:
    """The ``n`` latest (``which="last"``) or ``n`` best (``"best"``) kept checkpoints, oldest first;
    a :class:`RunError` naming what exists and the recipe key when there are fewer."""
    found = kept_files(run_dir, which)
    if len(found) < n:
        names = ", ".join(path.name for _, path in found) or "none"
        kind = "latest validations (step-<step>.ckpt)" if which == "last" else "best (best-<step>.ckpt)"
        raise RunError(Path(run_dir) / "checkpoints", f"--{which} {n} needs the {n} {kind}, found {len(found)} "
                                                      f"({names}); train with {KEEP_KEY}={n} or more to keep them")
    if which == "best" and len(found) > n:
        mode = runs.load_run_recipe(run_dir).task_cls.monitor_mode
        scored = [(monitored_score(path), step, path) for step, path in found]
        scored.sort(key=lambda item: item[0], reverse=mode == "max")
        found = sorted((step, path) for _, step, path in scored[:n])
    return [path for _, path in found[-n:]]


def monitored_score(path: Path) -> float:
    """The score a ``best-<step>.ckpt`` was kept for, as its checkpoint callback recorded it when saving
    (``best_k_models``: every kept file and its score, this one included)."""
    state = runs.load_checkpoint(path)
    for callback in (state.get("callbacks") or {}).values():
        kept = callback.get("best_k_models") if isinstance(callback, dict) else None
        for name, score in (kept or {}).items():
            if os.path.basename(str(name)) == path.name:
                return float(score)
    raise RunError(path, "holds no monitored score; average by --last instead")


def average_checkpoints(paths: list[Path]) -> dict:
    """The checkpoint whose ``state_dict`` is the element-wise mean of the floating tensors of ``paths``'
    state dicts (summed in float64, stored in their own dtype); integer buffers and anything else come
    from the newest (highest ``global_step``). One checkpoint is in memory at a time, beside the sums."""
    sums: dict[str, torch.Tensor] = {}
    newest, newest_step, first = None, -1, None
    for path in paths:
        state = runs.load_checkpoint(path)
        weights = state.get("state_dict")
        if not isinstance(weights, dict):
            raise RunError(path, "not an nmt checkpoint (no state_dict)")
        if first is None:
            first = (path, {name: tuple(value.shape) for name, value in weights.items() if torch.is_tensor(value)})
        check_same_weights(first, path, weights)
        for name, value in weights.items():
            if torch.is_tensor(value) and value.is_floating_point():
                sums[name] = sums.get(name, 0) + value.detach().to(torch.float64)
        if int(state.get("global_step", -1)) >= newest_step:
            newest, newest_step = state, int(state.get("global_step", -1))
    average = {name: (sums[name] / len(paths)).to(value.dtype) if name in sums else value
               for name, value in newest["state_dict"].items()}
    return {"state_dict": average, "global_step": newest.get("global_step"), "epoch": newest.get("epoch"),
            "averaged_from": [path.name for path in paths]}


def check_same_weights(first: tuple[Path, dict], path: Path, weights: dict) -> None:
    """Refuse to average checkpoints of different models, naming the first parameter that differs."""
    first_path, shapes = first
    names = {name for name, value in weights.items() if torch.is_tensor(value)}
    differ = sorted(names ^ shapes.keys())
    if differ:
        only_in = path if differ[0] in names else first_path
        raise RunError(path, f"{differ[0]} is only in {only_in.name}; it and {first_path.name} are not of one model")
    for name in sorted(names):
        if tuple(weights[name].shape) != shapes[name]:
            raise RunError(path, f"{name} is {list(weights[name].shape)}, {list(shapes[name])} in {first_path.name}; "
                                 "they are not of one model")


def average_run(run_dir: Path, which: str, n: int, output: Path | None = None) -> Path:
    """Average the ``n`` latest or best kept checkpoints of ``run_dir`` into ``output`` [default:
    ``run_dir/checkpoints/averaged.ckpt``], written atomically; returns its path."""
    run_dir = Path(run_dir)
    runs.check_run_info(run_dir)
    paths = pick_checkpoints(run_dir, which, n)
    output = Path(output) if output is not None else run_dir / "checkpoints" / "averaged.ckpt"
    refuse_same_file(output, *paths)
    for name in ("last.ckpt", "best.ckpt"):  # training resumes from one, translates with the other
        if same_file(output, run_dir / "checkpoints" / name):
            raise RunError(output, f"is the run's {name}; write the average to another file")
    if os.path.realpath(output) != os.path.realpath(run_dir / "checkpoints" / "averaged.ckpt"):
        runs.refuse_run_files(output, [run_dir])  # the run's other files (run.json, a kept step-N.ckpt ...)
    averaged = average_checkpoints(paths)
    with atomic_open(output, "wb") as f:
        torch.save(averaged, f)
    click.echo(f"nmt: averaged {', '.join(path.name for path in paths)} into {output}", err=True)
    return output
