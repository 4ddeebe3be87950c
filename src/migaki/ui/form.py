"""The new-run form of `migaki ui`: what the page builds it from, and what becomes of the
values it sends back.

The form is drawn from the recipe schema itself (`Recipe.model_json_schema()`: types,
defaults, choices and each field's description), so a field added to a recipe section shows
up in the browser with no change here. The values come back as the nested recipe dict and go
through `build_recipe`'s own validation, every problem named by its dotted key. Data files
are named `ROOT/relative/path` (a data folder's name, then a path inside it) and become real
paths only through the caller's `data_file`, which refuses anything outside the data folders;
nothing sent back to the browser holds a data folder's real path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from migaki.config import Recipe, build_recipe, describe_error
from migaki.data.load import COMPRESSED_SUFFIXES, SUFFIXES
from migaki.doctor import diagnose
from migaki.errors import UserError
from migaki.estimate import estimate
from migaki.methods import METHODS
from migaki.models.bundled import BUNDLED
from migaki.rundir import recipe_text
from migaki.tasks import TASKS, task_for
from migaki.ui.jobs import new_name as new_name  # the page's default run name
from migaki.ui.paths import Roots, run_path
from migaki.ui.recipe_paths import PATH_KEYS, get_key, resolve_recipe_paths

DATA_KEYS = ("train", "val", "test")  # the data.* fields that name files in the data folders
MAX_DATA_FILES = 2000  # a page lists them all; a folder of millions would hang it
LEADING_KEY = re.compile(r"[A-Za-z_]\w*(?:\.\w+)*")


def schema_payload(data_roots: dict[str, Path]) -> dict[str, Any]:
    """What the page draws the form from: the recipe's JSON schema, its top-level keys in
    the schema's order, the bundled model aliases, the registered tasks and methods, and
    the data files under each data folder (`{"root": name, "path": relative, "size": bytes}`,
    at most MAX_DATA_FILES, with `data_files_note` saying so when there were more)."""
    schema = Recipe.model_json_schema()
    files, local_models, cut = data_files(data_roots)
    note = None
    if cut:
        note = f"only the first {MAX_DATA_FILES} data files are listed; type a path to use another"
    return {
        "schema": schema,
        "sections": list(schema["properties"]),
        "models": list(BUNDLED),
        "tasks": list(TASKS),
        "methods": list(METHODS),
        "data_files": files,
        "local_models": local_models,
        "data_files_note": note,
    }


def data_files(data_roots: dict[str, Path]) -> tuple[list[dict[str, Any]], list[str], bool]:
    """Under each data folder: the files a recipe can train on, by root name and relative
    path (hidden files and folders left out, symlinks leaving the folder too); the local
    models (a folder with config.json and weights, or a .gguf file) as `ROOT/relative`, whose
    own files are not data; and whether the listing stopped at MAX_DATA_FILES."""
    found: list[dict[str, Any]] = []
    models: list[str] = []
    for name, folder in data_roots.items():
        real_root = folder.resolve()
        for directory, subfolders, names in os.walk(folder):
            here = Path(directory)
            if here != folder and _is_model_folder(names):
                models.append(f"{name}/{here.relative_to(folder).as_posix()}")
                subfolders[:] = []
                continue
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for file_name in sorted(names):
                path = here / file_name
                if file_name.startswith(".") or not path.resolve().is_relative_to(real_root):
                    continue
                if path.suffix.lower() == ".gguf":
                    models.append(f"{name}/{path.relative_to(folder).as_posix()}")
                if not _is_data_file(path) or not path.is_file():
                    continue
                if len(found) == MAX_DATA_FILES:
                    return found, models, True
                relative = path.relative_to(folder).as_posix()
                found.append({"root": name, "path": relative, "size": path.stat().st_size})
    return found, models, False


def _is_model_folder(names: list[str]) -> bool:
    weights = any(n.endswith((".safetensors", ".bin")) for n in names)
    return "config.json" in names and weights


def recipe_from_form(values: dict[str, Any], roots: Roots) -> Recipe:
    """The Recipe the form's values describe, every key that names a file or model
    (`recipe_paths.PATH_KEYS`) turned into a real path through `roots`. Raises UserError
    naming the key for a path outside the folders, a data file that is not there, or a
    recipe that does not validate (every problem, each naming its key)."""
    resolved, problems = _resolve_paths(values, roots)
    if problems:
        raise UserError(f"{problems[0]['key']}: {problems[0]['message']}")
    return build_recipe(resolved)


def check(values: dict[str, Any], roots: Roots) -> dict[str, Any]:
    """`{"problems": [{"key": "train.lr", "message": ...}], "recipe_yaml": str | None}`:
    every problem of the form's recipe at once (paths, schema, combinations, what its task
    refuses), or none and the resolved recipe as YAML with paths written as sent."""
    resolved, problems = _resolve_paths(values, roots)
    try:
        recipe = Recipe.model_validate(resolved)
    except ValidationError as exc:
        problems += [_schema_problem(error) for error in exc.errors()]
        recipe = None
    if recipe is not None:
        problems += _task_problems(recipe)
    real = _real_to_sent(values, resolved)
    problems = _unique([_hide(problem, real) for problem in problems])
    if problems or recipe is None:
        return {"problems": problems, "recipe_yaml": None}
    return {"problems": [], "recipe_yaml": _hidden(recipe_text(recipe), real)}


def run_estimate(recipe: Recipe, workdir: Path) -> dict[str, Any]:
    """`migaki estimate`'s figures for the recipe (a short real training run in a fresh
    process), from its resolved YAML written into `workdir`. Raises UserError."""
    path = Path(workdir) / "recipe.yaml"
    path.write_text(recipe_text(recipe), encoding="utf-8")
    return estimate(path)


def run_doctor(recipe: Recipe) -> dict[str, Any]:
    """`migaki data doctor`'s report as plain text (loss tokens between ⟦ and ⟧, not
    coloured): `{"ok": no no-go finding, "text": ...}`. Raises UserError."""
    diagnosis = diagnose(recipe, color=False)
    return {"ok": not diagnosis.no_go, "text": "\n".join(diagnosis.lines)}


def _is_data_file(path: Path) -> bool:
    # as data.load reads a name: `train.jsonl.gz` is jsonl
    suffix = path.suffix.lower()
    if suffix in COMPRESSED_SUFFIXES:
        suffix = Path(path.stem).suffix.lower()
    return suffix in SUFFIXES


def _resolve_paths(
    values: dict[str, Any], roots: Roots
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The values with real paths, and a problem per refused path or missing data file."""
    resolved, problems = resolve_recipe_paths(
        values, roots.data_file, lambda name: run_path(roots.runs, name)
    )
    data = resolved.get("data") if isinstance(resolved.get("data"), dict) else {}
    refused = {problem["key"] for problem in problems}
    for key in DATA_KEYS:
        spec = data.get(key)
        if isinstance(spec, str) and f"data.{key}" not in refused and not Path(spec).is_file():
            sent = get_key(values, f"data.{key}")
            problems.append({"key": f"data.{key}", "message": f"no such data file {sent}"})
    return resolved, problems


def _real_to_sent(values: dict[str, Any], resolved: dict[str, Any]) -> dict[str, str]:
    """Each real path the browser's values became, mapped back to what was sent."""
    pairs: dict[str, str] = {}
    for key in PATH_KEYS:
        sent, real = get_key(values, key), get_key(resolved, key)
        sent_list = sent if isinstance(sent, list) else [sent]
        real_list = real if isinstance(real, list) else [real]
        for one_sent, one_real in zip(sent_list, real_list, strict=False):
            if isinstance(one_real, str) and one_real != one_sent:
                pairs[one_real] = str(one_sent)
    return pairs


def _hidden(text: str, real: dict[str, str]) -> str:
    for path, sent in sorted(real.items(), key=lambda pair: -len(pair[0])):
        text = text.replace(path, sent)
    return text


def _schema_problem(error: dict[str, Any]) -> dict[str, str]:
    """A pydantic error as config words it, under the recipe key it concerns."""
    message = describe_error(error)
    if not error["loc"]:  # a check across sections: its message starts with its key
        return _keyed(message)
    key = _field_key(error["loc"])
    written = ".".join(str(part) for part in error["loc"])
    return {"key": key, "message": message.removeprefix(f"{written}: ")}


def _task_problems(recipe: Recipe) -> list[dict[str, str]]:
    """What the recipe's task refuses (task_for lists each problem on a line of its own,
    after the recipe's source)."""
    try:
        task_for(recipe)
    except UserError as exc:
        lines = str(exc).splitlines()
        return [_keyed(line.removeprefix(f"{recipe.source}: ")) for line in lines]
    return []


def _keyed(message: str) -> dict[str, str]:
    """A message that starts with the key it names (`train.batch_size (8) must be...`,
    `method.name: ...`, `task: ...`); `recipe` when it names none."""
    match = LEADING_KEY.match(message)
    word = match.group(0) if match else ""
    rest = message[len(word) :]
    if "." not in word and not (word in Recipe.model_fields and rest.startswith(":")):
        return {"key": "recipe", "message": message}
    return {"key": word, "message": rest[2:] if rest.startswith(": ") else message}


def _field_key(loc: tuple[Any, ...]) -> str:
    """The recipe key a pydantic error location points at: the union branch pydantic
    appends past a field (`data.packing.bool`) and list positions are dropped; the keys of
    a mapping of sections stay (`sweep.space.train.lr`)."""
    kept: list[str] = []
    section: type[BaseModel] | None = Recipe
    in_mapping = False
    for part in loc:
        if section is None:  # past a field that holds no section
            break
        kept.append(str(part))
        if in_mapping:  # this part was a key of the mapping; its value is `section`
            in_mapping = False
            continue
        field = section.model_fields.get(str(part))
        if field is None:  # an unknown key
            break
        section, in_mapping = _nested_section(field.annotation)
    return ".".join(kept) or "recipe"


def _nested_section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section a field holds (`X`, `X | None`), or the section each value of a mapping
    holds (`dict[str, X]`, then True); None for a plain value."""
    for candidate in (annotation, *get_args(annotation)):
        if get_origin(candidate) is dict:
            value = get_args(candidate)[-1]
            if isinstance(value, type) and issubclass(value, BaseModel):
                return value, True
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate, False
    return None, False


def _hide(problem: dict[str, str], real: dict[str, str]) -> dict[str, str]:
    """The problem with each accepted path written as it was sent."""
    return {"key": problem["key"], "message": _hidden(problem["message"], real)}


def _unique(problems: list[dict[str, str]]) -> list[dict[str, str]]:
    seen: set[tuple[str, str]] = set()
    kept = []
    for problem in problems:
        if (problem["key"], problem["message"]) not in seen:
            seen.add((problem["key"], problem["message"]))
            kept.append(problem)
    return kept
