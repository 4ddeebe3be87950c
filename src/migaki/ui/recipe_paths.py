"""The recipe keys that name something on disk, as the browser may give them.

A recipe from a file may name any path; a recipe from the browser must not, or the form
would open files of the requester's choosing (a model folder runs its code with
trust_remote_code, a data file's rows come back in reports). So each such key takes a name
that opens nothing of the requester's choosing (a bundled model, a named chat template, a
run in --runs) or `ROOT/relative`, a file inside a data folder the server was given, and
`paths.Roots` resolves it. tests/test_ui_paths_keys.py checks that every schema field that
speaks of files is listed here."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from migaki.models.bundled import BUNDLED
from migaki.models.templates import TEMPLATES
from migaki.ui.paths import PathRefused

RUN_PREFIX = "run:"  # `run:NAME`, a run folder inside --runs

# key -> the plain names it also takes, besides ROOT/relative (and run:NAME where noted)
PATH_KEYS: dict[str, tuple[str, ...]] = {
    "model.base": tuple(BUNDLED),
    "model.chat_template": tuple(TEMPLATES),
    "data.train": (),
    "data.val": (),
    "data.test": (),
    "data.clean.filter.blocklist": (),
    "data.augment.synonyms": (),
    "train.init_from": (RUN_PREFIX,),
    "train.replay.data": (),
    "train.forgetting.data": (),
    "distill.teacher": (*BUNDLED, RUN_PREFIX),
    "eval.format": ("text", "json"),
    "eval.judge.model": (*BUNDLED, RUN_PREFIX),
    "compare.documents": (),
}


def resolve_recipe_paths(
    values: dict[str, Any],
    data_file: Callable[[str], Path],
    run_folder: Callable[[str], Path],
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """`values` (the browser's nested recipe) with every path key's value made a real path,
    and the problems: [{"key", "message"}] for a value that is neither a name it takes nor a
    path inside a data folder (or run:NAME inside --runs). `values` itself is not changed."""
    resolved = copy.deepcopy(values)
    problems = []
    for key, names in PATH_KEYS.items():
        value = get_key(resolved, key)
        if value is None:
            continue
        try:
            if isinstance(value, list):
                real = [_one(item, names, data_file, run_folder) for item in value]
            else:
                real = _one(value, names, data_file, run_folder)
        except PathRefused as exc:
            problems.append({"key": key, "message": str(exc)})
            continue
        _set(resolved, key, real)
    return resolved, problems


def _one(value: Any, names: tuple[str, ...], data_file, run_folder) -> str:
    if not isinstance(value, str) or not value:
        raise PathRefused("give a name or a file inside a data folder, as text")
    if value in names:
        return value
    if value.startswith(RUN_PREFIX):
        if RUN_PREFIX not in names:
            raise PathRefused("a run cannot be named here")
        return str(run_folder(value[len(RUN_PREFIX) :]))
    return str(data_file(value))


def get_key(values: dict, dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(values: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = values
    for part in parents:
        node = node[part]
    node[last] = value
