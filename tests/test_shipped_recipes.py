"""Every recipe shipped in recipes/ validates: its keys, its plugin sections and its trainer arguments
(the data files are not needed here)."""
from __future__ import annotations

from pathlib import Path

import pytest

from nmt.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/*/*.yaml"))


def test_recipes_are_found():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}/{p.name}")
def test_shipped_recipe_validates(path: Path):
    recipe = load_recipe(path, check_data=False)
    assert recipe.name and recipe.task_cls is not None
