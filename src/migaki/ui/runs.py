"""Run directories as the UI shows them: the RunSummary and RunDetail of docs/ui.md, the
records of metrics.jsonl (all of them, or the lines written since a byte offset) and a
comparison of 2 to 5 runs.

A run's status is its manifest's, told apart where the manifest cannot know: a `running`
run whose process is gone was killed; one written on another host is `running` only while
its files still change. Everything returned is ready for JSON (no NaN) and holds no real
path of this machine: paths are shown as `ROOT/relative` or a file name (`Roots.shown`).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from migaki import rundir
from migaki.config import Recipe
from migaki.errors import UserError
from migaki.train.checkpoint import latest_checkpoint
from migaki.ui.paths import Roots, is_run_name, run_path

STALE_S = 600  # a run on another host that wrote nothing for this long is not called running
RESUMABLE = ("interrupted", "killed", "failed")
# eval.json figures shown first, in this order, where the evaluation wrote them
HEADLINE = (
    "fact_accuracy",
    "char_f1",
    "exact_match",
    "accuracy",
    "f1_macro",
    "choice_accuracy",
    "pref_accuracy",
    "likelihood_win_rate",
    "loss",
    "perplexity",
)
MAX_METRICS = 6
NOT_FIGURES = ("step", "epoch", "time")  # a record's coordinates
SHOWN_SUFFIXES = (".html", ".json", ".csv", ".md", ".txt")
# big or internal folders: weights, and the trackers' own stores of many small files
NOT_LISTED = ("checkpoints", "final", "tensorboard", "mlruns", "wandb")
MIN_COMPARED, MAX_COMPARED = 2, 5
# an absolute path inside text (a command line): after a space or at the start, not `a/b`
PATH_IN_TEXT = re.compile(r"(?<![\w.:/~-])~?/[^\s\"'<>|;,()\[\]{}]+")
SUMMARY_KEYS = (
    "name",
    "status",
    "base_model",
    "method",
    "task",
    "data",
    "started",
    "finished",
    "wall_s",
    "cost",
    "step",
    "total_steps",
    "best_val_loss",
    "best_step",
    "metrics",
    "train_minutes",
    "tokens_per_s",
    "peak_memory_mb",
    "can_stop",
    "can_resume",
)


def list_runs(root: Path, launched: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A RunSummary of every run folder directly inside `root`, newest first (by the
    manifest's `started`, else the folder's time). `launched` maps the runs this server
    started and whose manifest is not written yet to their status (`starting`); those show
    even before their folder exists. A run that cannot be read is shown with status
    `unknown` and an `error`, never left out."""
    root, launched = Path(root), launched or {}
    roots = Roots(root)
    found: dict[str, tuple[float, dict[str, Any]]] = {}
    for folder in _folders(root):
        if rundir.is_run(folder):
            summary = _readable_summary(folder, roots, launched.get(folder.name))
        elif folder.name in launched:
            summary = _blank(folder.name, launched[folder.name])
        else:
            continue
        found[folder.name] = (_timestamp(summary["started"]) or _mtime(folder), summary)
    for name, status in launched.items():
        if name not in found:
            found[name] = (time.time(), _blank(name, status))
    ordered = sorted(found.values(), key=lambda item: item[0], reverse=True)
    return [summary for _, summary in ordered]


def run_summary(
    run: Path, roots: Roots | None = None, launched_status: str | None = None
) -> dict[str, Any]:
    """The RunSummary of the run folder `run`. `roots` says how paths are shown (default:
    the folder holding the run is the runs folder); `launched_status` (`starting`) wins over
    the manifest while this server's process has not rewritten it yet."""
    run = Path(run)
    roots = roots or Roots(run.parent)
    manifest = _manifest(run)
    recipe, error = _recipe(run)
    if manifest is None:
        error = error or "manifest.json cannot be read (not valid JSON)"
        manifest = {}
    records = read_records(run)
    status = launched_status or ("unknown" if error else _status(run, manifest))
    wall_s = _wall_s(manifest, status, records)
    summary = {
        **_blank(run.name, status),
        "base_model": _base_model(recipe, manifest, roots),
        "method": recipe.method.name if recipe else manifest.get("method"),
        "task": recipe.task if recipe else None,
        "data": Path(recipe.data.train).name if recipe else None,
        "started": manifest.get("started"),
        "finished": manifest.get("finished"),
        "wall_s": wall_s,
        "step": _step(manifest, records),
        "total_steps": _total_steps(manifest, records),
        **_best(manifest, records),
        "metrics": _eval_figures(run) or _last_validation(records),
        "train_minutes": round(wall_s / 60, 1) if wall_s is not None else None,
        "cost": _cost(recipe, wall_s),
        "tokens_per_s": _last(records, "train").get("tokens_per_s"),
        "peak_memory_mb": manifest.get("peak_memory_mb"),
        "can_stop": status == "running",
        "can_resume": error is None and status in RESUMABLE and _has_checkpoint(run),
    }
    if error:
        summary["error"] = error
    return _clean(summary, roots)


def run_status(run: Path, launched_status: str | None = None) -> str:
    """Only the status of a RunSummary (as `run_summary` tells it), cheap enough to ask
    every second: no records, eval.json or checkpoints are read."""
    if launched_status:
        return launched_status
    run = Path(run)
    manifest = _manifest(run)
    _, error = _recipe(run)
    return "unknown" if manifest is None or error else _status(run, manifest)


def run_detail(roots: Roots, name: str) -> dict[str, Any]:
    """The RunDetail of the run `name` in `roots.runs`; `doctor` and `log_tail` are left
    None for the caller to fill. Raises PathRefused for a name that is no run there."""
    run = run_path(roots.runs, name)
    recipe, recipe_yaml = _recipe_shown(run, roots)
    return {
        "summary": run_summary(run, roots),
        "recipe": recipe,
        "recipe_yaml": recipe_yaml,
        "manifest": _clean(_manifest(run) or {}, roots, in_text=True),
        "data_report": _clean(_read_json(run / "data" / "prepare_report.json"), roots),
        "doctor": None,
        "eval": _clean(_read_json(run / "eval.json"), roots),
        "compare": _clean(_read_json(run / "compare.json"), roots),
        "files": _shown_files(run),
        "exports": _exports(run, roots),
        "log_tail": None,
    }


def read_records(run: Path) -> list[dict[str, Any]]:
    """Every record of the run's metrics.jsonl ([] without one). A last line still being
    written is left out; NaN and infinite numbers become None."""
    records, _ = follow_records(run, 0)
    return records


def follow_records(run: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The records of metrics.jsonl written from byte `offset` on, and the offset to ask
    from next time. A line not yet whole stays for the next call. An offset past the end
    (the file was rewritten, as a resume cuts what a killed run logged past its checkpoint)
    reads the file again from the start."""
    try:
        with open(Path(run) / "metrics.jsonl", "rb") as handle:
            if offset > os.fstat(handle.fileno()).st_size:
                offset = 0
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:
        return [], 0
    records, used = _whole_records(chunk)
    return records, offset + used


def compare_runs(root: Path, names: list[str]) -> dict[str, Any]:
    """2 to 5 runs side by side: their summaries, their records as curves, the recipe keys
    (dotted, `train.lr`) whose values differ, and their figures (the summaries' metrics and
    best_val_loss). Raises ValueError for too few or too many runs or a run named twice,
    PathRefused for a name that is no run in `root`."""
    if not MIN_COMPARED <= len(names) <= MAX_COMPARED:
        raise ValueError(
            f"Compare {MIN_COMPARED} to {MAX_COMPARED} runs at once (got {len(names)}): "
            "give run=NAME for each"
        )
    if len(set(names)) != len(names):
        raise ValueError("Give each run to compare once")
    roots = Roots(root)
    runs = [run_path(root, name) for name in names]
    summaries = [run_summary(run, roots) for run in runs]
    recipes = [_flat(_recipe_dict(run)) for run in runs]
    return {
        "runs": summaries,
        "curves": {run.name: read_records(run) for run in runs},
        "recipe_diff": _clean(_differences(recipes), roots),
        "metrics": _figure_rows(summaries),
    }


# --- status -------------------------------------------------------------------------------


def _status(run: Path, manifest: dict[str, Any]) -> str:
    status = manifest.get("status")
    if not isinstance(status, str) or not status:
        return "unknown"
    if status != "running":
        return status
    alive = rundir.process_alive(manifest)
    if alive is None:  # another host: its files are the only sign of life
        return "running" if _written_lately(run) else "unknown"
    return "running" if alive else "killed"


def _written_lately(run: Path) -> bool:
    times = [_mtime(run / name) for name in ("metrics.jsonl", "manifest.json")]
    return time.time() - max(times) < STALE_S


def _has_checkpoint(run: Path) -> bool:
    if not any((run / "checkpoints").glob("step-*")):
        return False
    return latest_checkpoint(run) is not None


# --- the summary's figures ----------------------------------------------------------------


def _readable_summary(run: Path, roots: Roots, launched_status: str | None) -> dict[str, Any]:
    """run_summary, or a blank one naming the problem: one odd run never hides the others."""
    try:
        summary = run_summary(run, roots, launched_status)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        summary = {**_blank(run.name, "unknown"), "error": f"cannot be read ({type(exc).__name__})"}
    if not is_run_name(run.name):
        summary["error"] = (
            "the UI opens runs whose folder name holds only letters, digits, '.', '_' and '-': "
            "rename the folder to open it here"
        )
    return summary


def _blank(name: str, status: str) -> dict[str, Any]:
    summary: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    summary |= {"name": name, "status": status, "metrics": {}}
    summary |= {"can_stop": status == "running", "can_resume": False}
    return summary


def _base_model(recipe: Recipe | None, manifest: dict[str, Any], roots: Roots) -> str | None:
    base = recipe.model.base if recipe else (manifest.get("base_model") or {}).get("name")
    if isinstance(base, str) and base.startswith(("/", "~", ".")):  # a folder, not an alias
        return roots.shown(base)
    return base


def _cost(recipe: Recipe | None, wall_s: float | None) -> float | None:
    """The wall time at the recipe's `estimate.price_per_hour` (what `migaki estimate`
    prices with), or None without a price."""
    price = recipe.estimate.price_per_hour if recipe is not None else None
    if price is None or wall_s is None:
        return None
    return round(price * wall_s / 3600, 4)


def _wall_s(manifest: dict[str, Any], status: str, records: list[dict]) -> float | None:
    started = _timestamp(manifest.get("started"))
    if started is None:
        return None
    end = _timestamp(manifest.get("finished"))
    if end is None and status == "running":
        end = time.time()
    elif end is None and records:  # ended without a word (killed): its last record says when
        end = records[-1].get("time")
    if not isinstance(end, int | float) or end < started:
        return None
    return round(end - started, 1)


def _step(manifest: dict[str, Any], records: list[dict]) -> int | None:
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    if isinstance(manifest.get("steps"), int):
        steps.append(manifest["steps"])
    return max(steps, default=None)


def _total_steps(manifest: dict[str, Any], records: list[dict]) -> int | None:
    budgets = [r["steps"] for r in records if r.get("event") == "time_budget" and "steps" in r]
    if budgets:  # train.max_minutes chose a step count of its own
        return budgets[-1]
    budget = manifest.get("time_budget") or {}
    return budget.get("steps") or (manifest.get("plan") or {}).get("total_steps")


def _best(manifest: dict[str, Any], records: list[dict]) -> dict[str, Any]:
    if manifest.get("best_val_loss") is not None:
        return {"best_val_loss": manifest["best_val_loss"], "best_step": manifest.get("best_step")}
    # while training: the step-0 baseline is no candidate, as the loop decides
    scored = [
        r
        for r in records
        if r.get("split") == "val" and isinstance(r.get("loss"), int | float) and r.get("step")
    ]
    best = min(scored, key=lambda r: r["loss"], default={})
    return {"best_val_loss": best.get("loss"), "best_step": best.get("step")}


def _eval_figures(run: Path) -> dict[str, float]:
    """The headline figures of eval.json: the tuned system's, those of HEADLINE first."""
    found = _read_json(run / "eval.json")
    if not isinstance(found, dict):
        return {}
    systems = found.get("systems")
    tuned = systems.get("tuned") if isinstance(systems, dict) else None
    figures = _numbers(tuned if isinstance(tuned, dict) else found)
    keys = [key for key in HEADLINE if key in figures] or list(figures)
    return {key: figures[key] for key in keys[:MAX_METRICS]}


def _last_validation(records: list[dict]) -> dict[str, float]:
    last = _last(records, "val")
    return {k: v for k, v in _numbers(last).items() if k not in NOT_FIGURES}


def _last(records: list[dict], split: str) -> dict[str, Any]:
    return next((r for r in reversed(records) if r.get("split") == split), {})


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {
        k: v
        for k, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


# --- the detail's parts -------------------------------------------------------------------


def _recipe(run: Path) -> tuple[Recipe | None, str | None]:
    """The run's recipe, or None and why it cannot be read (a real path still in it)."""
    try:
        return rundir.load_run_recipe(run), None
    except (UserError, yaml.YAMLError, OSError, ValueError) as exc:
        return None, f"recipe.yaml cannot be read: {exc}"


def _recipe_dict(run: Path) -> dict[str, Any]:
    recipe, _ = _recipe(run)
    return recipe.to_dict() if recipe else {}


def _recipe_shown(run: Path, roots: Roots) -> tuple[dict[str, Any] | None, str | None]:
    """The recipe and its YAML with paths shown; an invalid one as its text alone."""
    recipe, _ = _recipe(run)
    if recipe is None:
        try:
            text = (run / "recipe.yaml").read_text(encoding="utf-8")
            return None, _clean(text, roots, in_text=True)
        except (OSError, ValueError):
            return None, None
    shown = _clean(recipe.to_dict(), roots)
    return shown, yaml.safe_dump(shown, sort_keys=False, allow_unicode=True)


def _shown_files(run: Path) -> list[str]:
    """Relative paths of the files a page may open; not weights, trackers or hidden files."""
    found = []
    for folder, subfolders, files in os.walk(run):
        here = Path(folder).relative_to(run)
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".") and not (here == Path(".") and name in NOT_LISTED)
        ]
        for name in files:
            path = Path(folder) / name
            if name.startswith(".") or path.is_symlink():
                continue
            if path.suffix.lower() in SHOWN_SUFFIXES:
                found.append((here / name).as_posix())
    return sorted(found)


def _exports(run: Path, roots: Roots) -> list[dict[str, Any]]:
    folder = run / "exports"
    found = []
    for export in sorted(folder.iterdir()) if folder.is_dir() else []:
        record = _read_json(export / "migaki-export.json")
        if isinstance(record, dict):
            found.append(
                {
                    "path": f"exports/{export.name}",
                    "format": record.get("format"),
                    "type": record.get("type"),
                    "verification": _clean(record.get("verifications") or [], roots),
                }
            )
    return found


# --- comparison ---------------------------------------------------------------------------


def _flat(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(recipes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = dict.fromkeys(key for recipe in recipes for key in recipe)
    rows = []
    for key in keys:
        values = [recipe.get(key) for recipe in recipes]
        if any(value != values[0] for value in values[1:]):
            rows.append({"key": key, "values": values})
    return rows


def _figure_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = dict.fromkeys(key for summary in summaries for key in summary["metrics"])
    rows = [{"key": key, "values": [s["metrics"].get(key) for s in summaries]} for key in keys]
    rows.append({"key": "best_val_loss", "values": [s["best_val_loss"] for s in summaries]})
    return rows


# --- files and paths ----------------------------------------------------------------------


def _manifest(run: Path) -> dict[str, Any] | None:
    """The manifest ({} before it is written), or None when it cannot be read."""
    try:
        manifest = rundir.read_manifest(run)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _read_json(path: Path) -> Any:
    """A JSON file (NaN and infinities as None), or None when missing or unreadable."""
    try:
        return json.loads(path.read_bytes(), parse_constant=_no_number)
    except (OSError, ValueError):
        return None


def _whole_records(chunk: bytes) -> tuple[list[dict[str, Any]], int]:
    """The records of the whole lines in `chunk` and how many bytes they take. The last
    line, without its newline yet, counts only when it is a whole JSON object already (a
    record's line is complete only once its closing brace is written)."""
    *lines, tail = chunk.split(b"\n")
    records = [record for line in lines if (record := _record(line)) is not None]
    used = len(chunk) - len(tail)
    last = _record(tail)
    if last is not None:
        records.append(last)
        used = len(chunk)
    return records, used


def _record(line: bytes) -> dict[str, Any] | None:
    # a damaged line (a disk that filled up mid-write) is passed over: the rest still plots
    if not line.strip():
        return None
    try:
        record = json.loads(line, parse_constant=_no_number)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _no_number(_: str) -> None:
    return None  # NaN and infinities: not JSON a browser can read


def _clean(value: Any, roots: Roots, in_text: bool = False) -> Any:
    """`value` with every path shown as `Roots.shown` shows it and NaN as None: a string
    that is a path whole, and the known folders (and the home folder) inside any text;
    with `in_text`, every absolute path inside text too (for machine-written text such as
    the manifest's command line, not answers a model wrote)."""
    patterns = _folder_patterns(roots)

    def clean(item: Any) -> Any:
        if isinstance(item, dict):
            # keys too: data hashes are keyed by the file's path
            return {clean(key): clean(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [clean(inner) for inner in item]
        if isinstance(item, float) and not math.isfinite(item):
            return None
        return _clean_text(item, roots, patterns, in_text) if isinstance(item, str) else item

    return clean(value)


def _clean_text(
    text: str, roots: Roots, patterns: list[tuple[re.Pattern[str], str]], in_text: bool
) -> str:
    if _is_path(text):
        return roots.shown(text)
    for pattern, name in patterns:
        text = pattern.sub(name, text)
    if in_text:
        text = PATH_IN_TEXT.sub(lambda match: roots.shown(match.group()), text)
    return text


def _is_path(text: str) -> bool:
    """Whether the whole text is one absolute path: without spaces, or with a folder that
    exists here (a command line or a sentence has none)."""
    if not text.startswith(("/", "~/")) or "\n" in text or "\x00" in text:
        return False
    return not any(c.isspace() for c in text) or Path(text).expanduser().parent.is_dir()


def _folder_patterns(roots: Roots) -> list[tuple[re.Pattern[str], str]]:
    """Each known folder as written in text (real and as given), the longest first, with
    the name it is shown as."""
    runs = Path(roots.runs)
    folders = [(runs, runs.resolve().name)] + [(path, name) for name, path in roots.data.items()]
    spelled: dict[str, str] = {}
    for folder, name in folders:
        spelled[str(folder.resolve())] = name
        spelled[str(folder.absolute())] = name
    home = os.path.expanduser("~")
    if home not in ("~", "/"):
        spelled.setdefault(home, "~")
    return [
        (re.compile(re.escape(text) + r"(?![\w.-])"), name)
        for text, name in sorted(spelled.items(), key=lambda item: -len(item[0]))
    ]


def _timestamp(text: Any) -> float | None:
    """Seconds since the epoch of a manifest time (`2026-12-05T09:00:00+0000`), or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _folders(root: Path) -> list[Path]:
    """The folders directly inside `root`, not hidden (the UI's own .ui) and not symlinks
    that lead elsewhere (`run_path` would not open them either)."""
    if not root.is_dir():
        return []
    base = root.resolve()
    return [
        path
        for path in root.iterdir()
        if path.is_dir() and not path.name.startswith(".") and path.resolve().parent == base
    ]
