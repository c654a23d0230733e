"""Fitting and loading the tokenizer plugins of a run (joint or one per side), kept in its fitted folder."""
from __future__ import annotations

from pathlib import Path

from nmt.recipe import Recipe
from nmt.runs import READY, fitted_dir


def train_tokenizers(recipe: Recipe, run_dir: Path, src: list[str], tgt: list[str] | None, joint: bool) -> None:
    """Fit the recipe's tokenizer(s) on training text unless the run already has them."""
    directory = fitted_dir(run_dir)
    if (directory / READY).exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    cls, config = recipe.components["data.tokenizer"]
    if tgt is None:
        cls.train(config, src, directory, "src")
    elif joint:
        cls.train(config, src + tgt, directory, "joint")
    else:
        cls.train(config, src, directory, "src")
        cls.train(config, tgt, directory, "tgt")


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
