"""`migaki compare`: was fine-tuning the right tool? The base model zero-shot, few-shot
prompting (k training examples chosen by similarity to the question), RAG (k passages
retrieved from `compare.documents` or the training answers), the fine-tuned run and the run
with RAG, scored on the same test rows by the same functions `migaki eval` uses, with what one
call costs (prompt tokens, seconds) and the training cost once; then a recommendation that
follows from those numbers (`evaluate.recommend`).

A recipe rather than a run compares the untrained systems only: whether fine-tuning is
worth trying at all."""

from __future__ import annotations

import gc
import json
import logging
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from migaki import rundir
from migaki.config import COMPARE_SYSTEMS, Recipe, load_recipe
from migaki.data import Example, load_splits, read_records
from migaki.data.formats import convert_records
from migaki.errors import UserError
from migaki.evaluate.answers import score_system_rows
from migaki.evaluate.compare_labels import compare_labels
from migaki.evaluate.evaluation import conversation_examples
from migaki.evaluate.generation import load_for_generation
from migaki.evaluate.prompting import prompt_tokens, question_of, with_passages, with_shots
from migaki.evaluate.recommend import TRAINED, System, recommend
from migaki.evaluate.report import write_report
from migaki.evaluate.retrieval import Passage, Retriever, load_documents, nearest_examples
from migaki.models.inference import LoadedModel
from migaki.tasks import task_for

log = logging.getLogger(__name__)

DESCRIPTIONS = {
    "base": "base model, zero-shot, the training rendering and system prompt",
    "few_shot": "base model, {k} training examples nearest to the question as earlier turns",
    "rag": "base model, {k} passages retrieved ({retrieval}) from {documents} above the question",
    "tuned": "the fine-tuned run",
    "tuned_rag": "the fine-tuned run with the RAG prompt",
}
# Rows long enough for k examples or passages: the loss pass must not cut a row's answer off.
COMPARE_MAX_LENGTH = 8192
SAMPLES = 20


def compare(
    target: str | Path,
    data: str | Path | None = None,
    systems: list[str] | None = None,
    k: int | None = None,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    metric: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Score each system on the same rows and recommend one. `target` is a run directory (its
    test split unless `data` is given; all five systems) or a recipe (its split's test rows;
    the untrained systems). Returns the result that compare.json holds; writes compare.json
    and report.html into a run."""
    run, recipe = _target(target, overrides or [])
    if k is not None:
        recipe.compare.k = k
    chosen = _systems(systems or recipe.compare.systems, run)
    task = task_for(recipe)
    if task.evaluation == "classification":
        if run is None:
            raise UserError(f"{target}: compare a classification recipe once it has a run")
        scored, per_row, tests, notes = compare_labels(run, recipe, data, chosen, limit)
        return _result(target, data, run, recipe, tests, scored, per_row, metric, notes)
    if task.evaluation != "answers":
        raise UserError(
            f"{target}: migaki compare scores answers, choices and labels; a {recipe.task} "
            "run is scored by migaki eval"
        )
    tests, pool = _rows(target, run, recipe, data)
    tests = tests[:limit]
    contexts = _contexts(recipe, tests, pool, chosen)
    scored: dict[str, dict[str, Any]] = {}
    per_row: dict[str, dict[int, dict]] = {}
    loaded: LoadedModel | None = None
    loaded_tuned: bool | None = None
    for name in chosen:
        tuned = name in TRAINED
        if loaded is None or loaded_tuned != tuned:
            loaded = None  # the base model goes before the run's model loads
            gc.collect()
            loaded, loaded_tuned = _load(run, recipe, tuned), tuned
        rows = _prompted(name, tests, contexts)
        start = time.perf_counter()
        metrics, answers, row_scores = score_system_rows(loaded, rows, True, max_new_tokens)
        seconds = time.perf_counter() - start
        system_prompt = recipe.data.system_prompt
        scored[name] = {
            "metrics": metrics,
            "latency_s": seconds / max(len(rows), 1),
            "prompt_tokens": prompt_tokens(loaded.tokenizer, rows, system_prompt),
            "description": DESCRIPTIONS[name].format(**_described(recipe)),
            "answers": answers,
        }
        per_row[name] = row_scores
        log.info(
            "%s: %s, %.2f s per row, %.0f prompt tokens",
            name,
            {key: round(value, 4) for key, value in metrics.items() if isinstance(value, float)},
            scored[name]["latency_s"],
            scored[name]["prompt_tokens"],
        )
    return _result(target, data, run, recipe, tests, scored, per_row, metric, [])


def _result(
    target: str | Path,
    data: str | Path | None,
    run: Path | None,
    recipe: Recipe,
    tests: list[Example],
    scored: dict[str, dict[str, Any]],
    per_row: dict[str, dict[int, dict]],
    metric: str | None,
    notes: list[str],
) -> dict[str, Any]:
    primary = metric or primary_metric(next(iter(scored.values()))["metrics"])
    training = training_cost(run) if run is not None else None
    systems = [
        System(
            name,
            float(entry["metrics"].get(primary, 0.0)),
            row_values(per_row[name], primary, len(tests)),
            entry["prompt_tokens"],
            entry["latency_s"],
        )
        for name, entry in scored.items()
    ]
    answers = {name: entry.pop("answers", {}) for name, entry in scored.items()}
    result = {
        "target": str(target),
        "data": str(data) if data else "test split",
        "rows": len(tests),
        "k": recipe.compare.k,
        "primary": primary,
        "systems": scored,
        "training": training,
        "notes": notes,
        "recommendation": recommend(systems, primary, training and training.get("minutes")),
        "samples": [
            {
                "prompt": question_of(example) if example.messages else example.text,
                "reference": example.reference if example.messages else example.label,
                **{name: texts.get(index, "") for name, texts in answers.items()},
            }
            for index, example in enumerate(tests[:SAMPLES])
        ],
    }
    if run is not None:
        (run / "compare.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
        write_report(run)
    return result


def primary_metric(metrics: dict[str, Any]) -> str:
    """The figure the recommendation weighs: facts stated where rows list facts, the right
    label or choice, else character F1 (fair to Japanese and English)."""
    for key in ("fact_accuracy", "accuracy", "choice_accuracy", "char_f1"):
        if key in metrics:
            return key
    raise UserError("no answer metric to compare: the rows have neither answers nor choices")


def row_values(rows: dict[int, dict], metric: str, count: int) -> list[float]:
    """The per-row values whose mean is `metric`, in row order, for the paired bootstrap:
    fact_accuracy from each row's `facts` (rows without facts left out, as the figure leaves
    them out), accuracy and choice_accuracy from `correct`, any other by its own name."""
    values = []
    for index in range(count):
        row = rows.get(index, {})
        if metric == "fact_accuracy":
            if row.get("facts") is not None:
                values.append(float(row["facts"]))
        elif metric in ("accuracy", "choice_accuracy"):
            if "correct" in row:
                values.append(float(row["correct"]))
        elif isinstance(row.get(metric), int | float):
            values.append(float(row[metric]))
    return values


def training_cost(run: Path) -> dict[str, Any] | None:
    """Minutes from the manifest's start to its end, and the steps trained; None when the
    manifest lacks the times (a run that never finished)."""
    manifest = rundir.read_manifest(run)
    try:
        started = datetime.strptime(manifest["started"], "%Y-%m-%dT%H:%M:%S%z")
        finished = datetime.strptime(manifest["finished"], "%Y-%m-%dT%H:%M:%S%z")
    except (KeyError, ValueError):
        return None
    minutes = (finished - started).total_seconds() / 60
    machine = manifest.get("machine", {})
    return {
        "minutes": minutes,
        "steps": manifest.get("steps"),
        "precision": manifest.get("precision"),
        "machine": f"{machine.get('cpu_count', '?')} CPUs, GPUs: {machine.get('gpus') or 'none'}",
    }


def _target(target: str | Path, overrides: list[str]) -> tuple[Path | None, Recipe]:
    path = Path(target)
    if rundir.is_run(path):
        if overrides:
            raise UserError(f"{target}: KEY=VALUE overrides apply to a recipe, not a run")
        rundir.final_dir(path)  # a damaged final/ is named before anything loads
        return path, rundir.load_run_recipe(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return None, load_recipe(path, overrides)
    raise UserError(f"{target}: neither a run directory nor a recipe file (.yaml)")


def _systems(names: list[str], run: Path | None) -> list[str]:
    unknown = [name for name in names if name not in COMPARE_SYSTEMS]
    if unknown:
        raise UserError(f"--systems: unknown {', '.join(unknown)}; one of {COMPARE_SYSTEMS}")
    if run is None and any(name in TRAINED for name in names):
        log.warning("a recipe has no fine-tuned model yet: comparing the untrained systems only")
        names = [name for name in names if name not in TRAINED]
    # Untrained systems first, so the base model is loaded once and dropped before the run's.
    return sorted(dict.fromkeys(names), key=lambda name: (name in TRAINED, name))


def _rows(
    target: str | Path, run: Path | None, recipe: Recipe, data: str | Path | None
) -> tuple[list[Example], list[Example]]:
    """The test rows and the training rows that few-shot examples are drawn from."""
    if run is not None:
        tests = conversation_examples(run, data, recipe, None, None)
        pool = _split_rows(run / "data" / "train.jsonl", recipe)
    else:
        splits = load_splits(recipe.data, recipe.train.seed)
        pool = [e for e in splits.train if e.messages is not None]
        tests = (
            conversation_examples(Path(target), data, recipe, None, None)
            if data
            else [e for e in splits.test if e.messages is not None]
        )
    if not tests:
        raise UserError(f"{target}: no test rows to compare on; set data.split.test or --data")
    if not pool:
        raise UserError(f"{target}: no training rows for few-shot examples")
    return tests, pool


def _split_rows(path: Path, recipe: Recipe) -> list[Example]:
    rows, problems, _ = convert_records(
        read_records(path), "auto", recipe.data.label_column, recipe.data.choice_prompt
    )
    if problems:
        raise problems[0]
    return [e for e in rows if e.messages is not None]


def _contexts(
    recipe: Recipe, tests: list[Example], pool: list[Example], chosen: list[str]
) -> dict[str, list]:
    """Per test row, the few-shot examples and the retrieved passages its systems need."""
    settings = recipe.compare
    questions = [question_of(e) for e in tests]
    contexts: dict[str, list] = {}
    if "few_shot" in chosen:
        nearest = nearest_examples(
            questions, [question_of(e) for e in pool], settings.k, settings.encoder
        )
        contexts["shots"] = [[pool[i] for i in indices] for indices in nearest]
    if {"rag", "tuned_rag"} & set(chosen):
        if settings.documents:
            passages = load_documents(settings.documents, settings.chunk_chars)
        else:
            passages = [
                Passage(e.reference, f"{Path(e.source).name}:{e.line}")
                for e in pool
                if e.reference.strip()
            ]
        retriever = Retriever(passages, settings.retrieval, settings.encoder)
        found = retriever.search(questions, settings.k)
        contexts["passages"] = [[p.text for p in passages] for passages in found]
    return contexts


def _prompted(name: str, tests: list[Example], contexts: dict[str, list]) -> list[Example]:
    if name == "few_shot":
        return [with_shots(e, shots) for e, shots in zip(tests, contexts["shots"], strict=True)]
    if name in ("rag", "tuned_rag"):
        return [
            with_passages(e, texts) for e, texts in zip(tests, contexts["passages"], strict=True)
        ]
    return tests


def _load(run: Path | None, recipe: Recipe, tuned: bool) -> LoadedModel:
    """The run's tuned or base model (a recipe: its base model, rendered as the run would
    be), with room for long prompts in the loss pass."""
    if run is not None:
        loaded = load_for_generation(run, tuned=tuned)
        wide = recipe.model_copy(deep=True)
    else:
        loaded = load_for_generation(recipe.model.base, tuned=False)
        wide = recipe.model_copy(deep=True)
        if recipe.model.chat_template:
            log.warning("compare on a recipe uses the base model's own chat template")
    wide.data.max_length = max(recipe.data.max_length, COMPARE_MAX_LENGTH)
    return replace(loaded, recipe=wide)


def _described(recipe: Recipe) -> dict[str, Any]:
    documents = ", ".join(recipe.compare.documents) or "the training answers"
    return {"k": recipe.compare.k, "retrieval": recipe.compare.retrieval, "documents": documents}
