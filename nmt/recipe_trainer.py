"""A recipe's ``trainer:`` section, checked against Lightning's ``Trainer`` before it is built: names it
accepts, values of the types its annotations declare, and the bounds Lightning leaves to a crash."""
from __future__ import annotations

import collections.abc
import datetime
import functools
import inspect
import math
import os
import types
import typing
from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError

from nmt.errors import RecipeError, closest, quote, shorten

OWNED_TRAINER_ARGS = {"logger", "callbacks", "default_root_dir", "enable_checkpointing", "plugins"}


def check_trainer_args(trainer: dict, where: Callable[[str], str]) -> None:
    """The ``trainer:`` section goes to Lightning's Trainer: reject names it would not accept and values
    of the wrong type (checked against ``Trainer.__init__``'s annotations), before a run directory exists.
    ``where(key)`` names a key for an error: the recipe file, or the override that set it."""
    accepted = trainer_arg_types()
    for key, value in trainer.items():
        at = where(f"trainer.{shorten(key)}")
        if key in OWNED_TRAINER_ARGS:
            raise RecipeError(at, "set by nmt from the run directory; remove it")
        if key not in accepted:
            close = closest(key, accepted)
            hint = f"; did you mean '{close}'?" if close else ""
            raise RecipeError(at, f"unknown Trainer argument{hint}")
        adapter = _trainer_arg_adapter(key)
        if adapter is None:
            continue
        try:  # strict: Lightning gets the value as written, so "3" is no integer here either
            adapter.validate_python(value, strict=True)
        except ValidationError:
            raise RecipeError(at, f"expected {_describe_type(accepted[key])}, got {quote(value)}") from None
        check_trainer_value(key, value, at)
    check_cpu_processes(trainer, where)


# Trainer arguments that Lightning takes as any number and then divides by (a ZeroDivisionError mid-training)
POSITIVE_TRAINER_ARGS = frozenset({"val_check_interval", "log_every_n_steps", "accumulate_grad_batches",
                                   "check_val_every_n_epoch"})
# ... and as any number where a negative one silently does nothing (clipping off) or means nothing
NON_NEGATIVE_TRAINER_ARGS = frozenset({"gradient_clip_val", "min_epochs", "min_steps"})
# Counts Lightning takes as any integer: 2**63 batches accumulated made every update about zero
MAX_TRAINER_COUNTS = {"accumulate_grad_batches": 1_000_000}
DURATION_TRAINER_ARGS = frozenset({"max_time", "val_check_interval"})  # as a mapping or DD:HH:MM:SS string
MAX_DURATION = datetime.timedelta(days=100_000)  # timedelta's own limit is 999,999,999 days


def check_trainer_value(key: str, value: Any, at: str) -> None:
    """The bounds Lightning leaves to a crash mid-training or to silence, for a value of the right type."""
    if isinstance(value, bool):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise RecipeError(at, f"expected a finite number, got {quote(value)}")
    if isinstance(value, (int, float)):
        if key in POSITIVE_TRAINER_ARGS and value <= 0:
            raise RecipeError(at, f"expected a positive number, got {quote(value)}")
        if key in NON_NEGATIVE_TRAINER_ARGS and value < 0:
            raise RecipeError(at, f"expected a number >= 0, got {quote(value)}")
        if key in MAX_TRAINER_COUNTS and value > MAX_TRAINER_COUNTS[key]:
            raise RecipeError(at, f"expected at most {MAX_TRAINER_COUNTS[key]}, got {quote(value)}")
    if key in DURATION_TRAINER_ARGS and isinstance(value, (dict, str)):
        check_duration(value, at)


def check_duration(value: dict | str, at: str) -> None:
    """A duration as Lightning reads one (``DD:HH:MM:SS``, or a mapping of timedelta's keywords): positive
    (00:00:00:00 trained no step and said 'finished'), and within MAX_DURATION (an OverflowError)."""
    expected = "a duration: DD:HH:MM:SS or a mapping of days, hours, minutes, seconds"
    try:
        if isinstance(value, str):
            days, hours, minutes, seconds = (int(part) for part in value.split(":"))
            duration = datetime.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
        else:
            duration = datetime.timedelta(**value)
    except OverflowError:
        raise RecipeError(at, f"expected a duration of at most {MAX_DURATION.days:,} days, got {quote(value)}") from None
    except (TypeError, ValueError):
        raise RecipeError(at, f"expected {expected}, got {quote(value)}") from None
    if duration > MAX_DURATION:
        raise RecipeError(at, f"expected a duration of at most {MAX_DURATION.days:,} days, got {quote(value)}")
    if duration <= datetime.timedelta(0):
        raise RecipeError(at, f"expected a positive duration, got {quote(value)}")


def check_cpu_processes(trainer: dict, where: Callable[[str], str]) -> None:
    """``trainer.devices: N`` on the CPU starts N training processes: at most one a core (and 2 anywhere,
    so that a distributed run can be tried on a one-core machine)."""
    devices, accelerator = trainer.get("devices"), trainer.get("accelerator", "auto")
    if not isinstance(devices, int) or isinstance(devices, bool):
        return
    import torch

    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if devices > max(2, cores):
            raise RecipeError(where("trainer.devices"),
                              f"{devices} training processes on a CPU with {cores} cores; at most {max(2, cores)}")


@functools.cache
def trainer_arg_types() -> dict[str, Any]:
    """Each ``Trainer.__init__`` parameter and its annotation (None where it cannot be resolved)."""
    import pytorch_lightning as pl

    try:
        hints = typing.get_type_hints(pl.Trainer.__init__)
    except Exception:  # unresolvable annotations in some Lightning version: check the names only
        hints = {}
    return {name: hints.get(name) for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self"}


@functools.cache
def _trainer_arg_adapter(name: str) -> TypeAdapter | None:
    """A validator for one Trainer argument, built on first use (all of them take seconds)."""
    annotation = trainer_arg_types().get(name)
    if annotation is None:
        return None
    try:  # Lightning's own classes (an Accelerator object) match by isinstance
        return TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
    except Exception:  # an annotation pydantic cannot check
        return None


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "a boolean",
               type(None): "null", datetime.timedelta: "a duration"}


def _describe_type(annotation) -> str:
    """``Optional[int]`` as 'an integer or null', for a recipe writer rather than a Python programmer."""
    parts: list[str] = []

    def walk(tp) -> None:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is typing.Annotated:  # a bounded number inside Optional[...]: the number
            walk(args[0])
        elif origin in (typing.Union, types.UnionType):
            for arg in args:
                walk(arg)
        elif origin is typing.Literal:
            parts.extend(repr(a) for a in args)
        elif origin in (list, collections.abc.Iterable):
            parts.append("a list")
        elif origin is dict:
            parts.append("a mapping")
        elif tp in _TYPE_NAMES:
            parts.append(_TYPE_NAMES[tp])
        # Lightning's classes (Accelerator, Strategy ...) cannot be written in YAML: not listed

    walk(annotation)
    parts = list(dict.fromkeys(parts))
    if "a number" in parts and "an integer" in parts:  # an integer is a number
        parts.remove("an integer")
    return " or ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1 else (parts[0] if parts else "another type")
