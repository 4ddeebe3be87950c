"""Every shipped recipe loads and trains a step (on the tiny model), so examples never rot."""

import json
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from migaki.config import Recipe, load_recipe
from migaki.quickstart import recipe_path
from migaki.train import train

ROOT = Path(__file__).resolve().parent.parent
RECIPES = [*sorted((ROOT / "examples").glob("*.yaml")), recipe_path()]


def small_copies(path: Path, tmp_path: Path) -> list[str]:
    """Benchmark recipes read ../shared/data, which tests must not need: point their data
    at a few rows of the same layout."""
    recipe = load_recipe(path)
    if recipe.task == "dpo":
        rows = [
            {"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No idea."}
            for i in range(24)
        ]
        (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return [f"data.train={tmp_path / 'pairs.jsonl'}"]
    if "jcommonsenseqa" in recipe.data.train:
        questions = [f"Which is {i}?" if i % 2 else f"{i}はどれ？" for i in range(24)]
        rows = [
            {"question": q, "choice0": "cat", "choice1": "猫", "choice2": "dog", "label": i % 3}
            for i, q in enumerate(questions)
        ]
        (tmp_path / "choices.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8"
        )
        return [f"data.train={tmp_path / 'choices.jsonl'}"]
    if recipe.task != "classification":
        return []
    words = {"train": ("good kettle", "bad fan"), "val": ("great toaster", "awful lamp")}
    overrides = []
    for split in ("train", "val"):
        if getattr(recipe.data, split):
            pairs = [(f"{words[split][i % 2]} number {i}", i % 2) for i in range(24)]
            body = "".join(f"{text}\t{label}\n" for text, label in pairs)
            (tmp_path / f"{split}.tsv").write_text("sentence\tlabel\n" + body)
            overrides.append(f"data.{split}={tmp_path / f'{split}.tsv'}")
    return overrides


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads_and_trains_a_step(path, tiny_model, tmp_path):
    recipe = load_recipe(
        path,
        [
            f"model.base={tiny_model}",
            "train.max_steps=1",
            "data.max_length=64",
            "train.precision=fp32",
            *small_copies(path, tmp_path),
        ],
    )
    run = train(recipe, out=tmp_path / "run")
    assert (run / "final").is_dir()


def _sections(annotation) -> list[type[BaseModel]]:
    """The recipe sections a field's type names (`CleanConfig | None` names CleanConfig)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [s for arg in get_args(annotation) for s in _sections(arg)]


def _missing_keys(section: type[BaseModel], written: dict, prefix: str = "") -> list[str]:
    missing = []
    for name, field in section.model_fields.items():
        if name not in written:
            missing.append(prefix + name)
        elif isinstance(written[name], dict):
            for inner in _sections(field.annotation):
                missing += _missing_keys(inner, written[name], f"{prefix}{name}.")
    return missing


def test_the_reference_recipe_writes_out_every_key():
    written = yaml.safe_load((ROOT / "examples" / "faq-lora.yaml").read_text("utf-8"))
    assert _missing_keys(Recipe, written) == []
    # the check itself sees what is absent, also inside nested sections
    assert "data.clean.dedup" in _missing_keys(Recipe, {"data": {"clean": {}}})
