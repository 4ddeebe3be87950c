"""Every shipped recipe loads and trains a step (on the tiny model), so examples never rot."""

from pathlib import Path

import pytest

from migaki.config import load_recipe
from migaki.quickstart import recipe_path
from migaki.train import train

ROOT = Path(__file__).resolve().parent.parent
RECIPES = [*sorted((ROOT / "examples").glob("*.yaml")), recipe_path()]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_trains_a_step(path, tiny_model, tmp_path):
    recipe = load_recipe(
        path,
        [
            f"model.base={tiny_model}",
            "train.max_steps=1",
            "data.max_length=64",
            "train.precision=fp32",
        ],
    )
    run = train(recipe, out=tmp_path / "run")
    assert (run / "final").is_dir()
