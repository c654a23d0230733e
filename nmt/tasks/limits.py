"""Limits the tasks' recipe sections share: batch sizes, DataLoader workers, and an encoder that reads a bounded
number of positions, checked against a task's longest input when a recipe is read.

A plugin declares its limit with ``max_input_length(config) -> (option, limit) | None`` (a static method): the
Transformer with learned positions answers ``("max_positions", N)``, one without a limit None. A task's
``check_recipe`` calls :func:`check_encoder_length` with the longest input its data section allows, so a recipe
that would fail at the first long batch is refused at once, naming the option to raise.
"""
from __future__ import annotations

from nmt.errors import RecipeError

#: Padded tokens in a batch: past 2**31 an index into the batch overflows int32, and no device holds such a batch.
MAX_BATCH_TOKENS = 2**31 - 1
#: Sentences (or windows) in a batch: past it a typo (2**63) broke a sampler's arithmetic instead of being named.
MAX_BATCH_SENTENCES = 1_000_000
#: DataLoader worker processes: each is a process with its own copy of the dataset, so a typo of a million was
#: the kernel killing the run while it started them; no machine nmt runs on has more cores than this.
MAX_WORKERS = 256


def check_encoder_length(recipe, key: str, length: int, what: str) -> None:
    """Refuse the encoder at ``key`` (e.g. ``model.encoder``) when it cannot read ``length`` positions, the
    longest input that ``what`` (e.g. ``data.max_length``) lets through."""
    component = recipe.components.get(key)
    limit = getattr(component.cls if component else None, "max_input_length", None)
    declared = limit(component.config) if callable(limit) else None
    if declared is None:
        return
    option, longest = declared
    if longest < length:
        raise RecipeError(f"{recipe.path}: {key}.{option}",
                          f"expected at least {length} ({what}), got {longest}")
