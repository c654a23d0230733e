"""The run directory: a self-contained record of one training run, and loading a model back safely.

Layout::

    run.json            format version and the nmt version that wrote it
    recipe.yaml         the recipe with every override applied
    tokenizer/          tokenizer models (or scalers, label sets) fitted by the task
    checkpoints/        best.ckpt, last.ckpt (written to a temporary file, then renamed)
    logs/metrics.csv    and tb/ for TensorBoard
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
import yaml

import nmt
from nmt.errors import RecipeError, RunError, UserError
from nmt.io import atomic_write_text

RUN_FORMAT = 1


def is_run(run_dir: Path) -> bool:
    return (Path(run_dir) / "run.json").exists()


def check_run_info(run_dir: Path) -> dict:
    info_path = Path(run_dir) / "run.json"
    if not info_path.exists():
        raise RunError(run_dir, "not a run directory (no run.json); train one with nmt train")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(info_path, f"unreadable ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise RunError(info_path, f"run format {info.get('format') if isinstance(info, dict) else '?'} "
                                  f"(written by nmt {info.get('nmt_version', '?') if isinstance(info, dict) else '?'}) "
                                  f"is not supported by nmt {nmt.__version__} (format {RUN_FORMAT})")
    return info


def write_run(run_dir: Path, raw_recipe: dict) -> None:
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(raw_recipe, sort_keys=False, allow_unicode=True))
    if not is_run(run_dir):
        atomic_write_text(run_dir / "run.json", json.dumps({"format": RUN_FORMAT, "nmt_version": nmt.__version__}) + "\n")


def load_run_recipe(run_dir: Path):
    from nmt.recipe import validate_recipe

    check_run_info(run_dir)
    path = Path(run_dir) / "recipe.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise RunError(path, "not a recipe (expected a mapping)")
    # A run directory may come from someone else: it never imports code by itself. The plugins it
    # was trained with must be installed, or named again with --plugin (nmt train names them via
    # the recipe, which has loaded them already).
    plugins = raw.pop("plugins", None) or []
    try:
        return validate_recipe(raw, path, check_data=False)
    except UserError as exc:
        if not plugins:
            raise
        raise RunError(exc.where, f"{exc.what} (the run was trained with plugins {', '.join(map(str, plugins))}; "
                                  "a run directory does not load code by itself: pass nmt --plugin PATH)") from None


def checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    if checkpoint in ("best", "last"):
        path = Path(run_dir) / "checkpoints" / f"{checkpoint}.ckpt"
        if checkpoint == "best" and not path.exists():
            path = path.with_name("last.ckpt")  # no validation finished yet: the latest weights
    else:
        path = Path(checkpoint)
    if not path.exists():
        raise RunError(path, "checkpoint not found")
    return path


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data, never arbitrary code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        named = re.search(r"(?i)unsupported(?: global:)? GLOBAL ([\w.]+)", str(exc))
        what = f" ({named.group(1)})" if named else ""
        raise RunError(path, "refused to load: the checkpoint holds Python objects beyond weights and plain "
                             f"data{what}, which could run code; only load checkpoints you trust with "
                             "torch.load(weights_only=False) yourself") from None
    except (RuntimeError, EOFError, OSError) as exc:
        reason = str(exc).split(". ")[0].splitlines()[0][:100]
        raise RunError(path, f"unreadable checkpoint, truncated or not a checkpoint ({reason})") from None


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise RecipeError("--device", f"expected auto, cpu, cuda or cuda:N, got {device!r}") from exc


def load_run(run_dir: Path, checkpoint: str = "best", device: str = "auto"):
    """The task of a run with the weights of ``checkpoint``, in eval mode on ``device``."""
    recipe = load_run_recipe(run_dir)
    task = recipe.task_cls.from_run(recipe, Path(run_dir))
    state = load_checkpoint(checkpoint_path(run_dir, checkpoint))
    if "state_dict" not in state:
        raise RunError(checkpoint, "not an nmt checkpoint (no state_dict)")
    missing, unexpected = task.load_state_dict(state["state_dict"], strict=False)
    if missing or unexpected:
        raise RunError(checkpoint, f"weights do not fit the run's model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return task.to(pick_device(device)).eval()
