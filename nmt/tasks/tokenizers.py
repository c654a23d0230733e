"""Fitting and loading the tokenizer plugins of a run (joint or one per side), kept in its fitted folder."""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

from nmt.errors import RecipeError
from nmt.recipe import Recipe
from nmt.runs import READY, fitted_dir


def train_tokenizers(recipe: Recipe, run_dir: Path, src: Iterable[str], tgt: Iterable[str] | None, joint: bool) -> None:
    """Fit the recipe's tokenizer(s) on training text unless the run already has them.

    The texts may be streams read once (a corpus larger than memory); a joint tokenizer reads the
    source lines, then the target lines."""
    directory = fitted_dir(run_dir)
    if (directory / READY).exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    cls, config = recipe.components["data.tokenizer"]
    if tgt is None:
        cls.train(config, src, directory, "src")
    elif joint:
        cls.train(config, itertools.chain(src, tgt), directory, "joint")
    else:
        cls.train(config, src, directory, "src")
        cls.train(config, tgt, directory, "tgt")


def refuse_sampling(recipe: Recipe) -> None:
    """For a task that encodes its training text once: ``data.tokenizer.sampling`` is an error, not ignored."""
    tokenizer = recipe.components.get("data.tokenizer")
    if tokenizer is not None and getattr(tokenizer.config, "sampling", None) is not None:
        raise RecipeError(f"{recipe.path}: data.tokenizer.sampling", f"task '{recipe.spec.task}' encodes its training "
                                                                     "text once; subword sampling is for seq2seq")


def load_tokenizers(recipe: Recipe, run_dir: Path, joint: bool, target: bool = True):
    """(source tokenizer, target tokenizer); the same object twice for a joint vocabulary."""
    cls = recipe.components["data.tokenizer"].cls
    directory = fitted_dir(run_dir)
    if not target:
        return cls.load(directory, "src"), None
    if joint:
        tok = cls.load(directory, "joint")
        return tok, tok
    return cls.load(directory, "src"), cls.load(directory, "tgt")
