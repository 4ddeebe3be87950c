"""The browser's recipe keys that name files: every schema field that speaks of files,
folders or models on disk is in `recipe_paths.PATH_KEYS`, and each takes only names or
paths inside the folders the UI was given."""

from pathlib import Path

import pytest

from migaki.config import Recipe
from migaki.ui.paths import PathRefused
from migaki.ui.recipe_paths import PATH_KEYS, resolve_recipe_paths

WORDS = ("file", "folder", "directory", "run directory", "model migaki loads", "local model")
NOT_PATHS = {"data.format", "data.columns", "data.text_unit"}  # speak of files, name none


def _leaves(schema: dict, defs: dict, prefix: str = ""):
    for key, field in schema["properties"].items():
        refs = [field.get("$ref")] + [a.get("$ref") for a in field.get("anyOf", [])]
        ref = next((r for r in refs if r), None)
        if ref:
            yield from _leaves(defs[ref.rsplit("/", 1)[1]], defs, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", field.get("description", "")


def test_every_key_that_names_a_file_is_listed():
    schema = Recipe.model_json_schema()
    speaking = {
        key
        for key, description in _leaves(schema, schema["$defs"])
        if any(word in description.lower() for word in WORDS)
    }
    assert speaking - NOT_PATHS <= set(PATH_KEYS), speaking - NOT_PATHS - set(PATH_KEYS)


def _data_file(spec: str) -> Path:
    if not spec.startswith("data/") or ".." in spec:
        raise PathRefused(f"{spec}: not inside a data folder")
    return Path("/srv/data") / spec[5:]


def _run_folder(name: str) -> Path:
    if "/" in name:
        raise PathRefused("a run's folder name")
    return Path("/srv/runs") / name


def test_names_stay_paths_resolve_and_others_are_problems():
    values = {
        "model": {"base": "gemma3-270m", "chat_template": "/etc/passwd"},
        "data": {"train": "data/faq.jsonl", "test": "../x.jsonl"},
        "train": {"init_from": "run:faq", "replay": {"data": "run:faq"}},
        "compare": {"documents": ["data/manual.md", "data/faq.md"]},
        "eval": {"format": "json"},
    }
    resolved, problems = resolve_recipe_paths(values, _data_file, _run_folder)
    assert resolved["model"]["base"] == "gemma3-270m"
    assert resolved["data"]["train"] == "/srv/data/faq.jsonl"
    assert resolved["train"]["init_from"] == "/srv/runs/faq"
    assert resolved["compare"]["documents"] == ["/srv/data/manual.md", "/srv/data/faq.md"]
    assert resolved["eval"]["format"] == "json"
    assert {p["key"] for p in problems} == {
        "model.chat_template",
        "data.test",
        "train.replay.data",
    }
    assert values["data"]["train"] == "data/faq.jsonl"  # the browser's values are not changed


@pytest.mark.parametrize("value", ["", 3, None])
def test_odd_values(value):
    _, problems = resolve_recipe_paths({"data": {"train": value}}, _data_file, _run_folder)
    assert (value is None and not problems) or problems[0]["key"] == "data.train"
