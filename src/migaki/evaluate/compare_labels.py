"""`migaki compare` for a classification run: the fine-tuned classifier against the cheap
baseline every team can build in minutes (k nearest training texts by MiniLM embeddings, the
majority label among them) and, when the base model is a decoder, against the base model
reading the labels in context: zero-shot, and with k labelled training texts as earlier
turns. Each label is scored by its likelihood as the answer (as multiple-choice rows are),
so a small base model is judged on what it knows, not on its output format. RAG does not
apply to labels and is left out, said so in the result."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from migaki import models
from migaki.config import Recipe
from migaki.data.classify import tokenize_classification
from migaki.data.formats import Example
from migaki.data.heuristics import language_of
from migaki.evaluate.answers import score_system_rows
from migaki.evaluate.classification import labelled_examples, load_classifier, predict_labels
from migaki.evaluate.generation import LoadedModel
from migaki.evaluate.prompting import prompt_tokens
from migaki.evaluate.retrieval import nearest_examples
from migaki.metrics import f1_macro
from migaki.models.inference import load_for_inference
from migaki.rundir import final_dir

log = logging.getLogger(__name__)

INSTRUCTION = {"ja": "次のラベルのどれか一つで答えてください: ", "en": "Answer with one label: "}
DESCRIPTIONS = {
    "knn": "majority label of the {k} training texts nearest by {encoder} embeddings",
    "base": "base model reading the labels, zero-shot (each label scored by its likelihood)",
    "few_shot": "base model with {k} nearest labelled training texts as earlier turns",
    "tuned": "the fine-tuned classifier",
}


def compare_labels(
    run: Path, recipe: Recipe, data: str | Path | None, chosen: list[str], limit: int | None
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[int, dict]], list[Example], list[str]]:
    """Scores of each system (as `compare` keeps them), per-row `correct` by system, the test
    rows and the notes on systems left out."""
    labels = _labels(run)
    tests = labelled_examples(run, recipe, data, None)[:limit]
    tests = [e for e in tests if e.label in labels]
    pool = [e for e in labelled_examples(run, recipe, run / "data" / "train.jsonl", "label")]
    settings = recipe.compare
    notes = [f"{name}: retrieval does not apply to labels" for name in chosen if "rag" in name]
    scored: dict[str, dict[str, Any]] = {}
    per_row: dict[str, dict[int, dict]] = {}
    truth = [labels.index(e.label) for e in tests]
    nearest = nearest_examples(
        [e.text for e in tests], [e.text for e in pool], settings.k, settings.encoder
    )
    timed = time.perf_counter()
    knn = [_majority([pool[i].label for i in indices], labels) for indices in nearest]
    scored["knn"] = _scored(knn, truth, labels, time.perf_counter() - timed, 0.0)
    if "tuned" in chosen:
        timed = time.perf_counter()
        predicted, tokens = _classifier_picks(run, recipe, labels, tests)
        scored["tuned"] = _scored(predicted, truth, labels, time.perf_counter() - timed, tokens)
    for name, entry in scored.items():
        per_row[name] = {i: {"correct": p == t} for i, (p, t) in enumerate(entry.pop("picks"))}
    decoder_systems = [name for name in ("base", "few_shot") if name in chosen]
    if decoder_systems:
        loaded = _decoder_base(run, recipe, notes, decoder_systems)
        if loaded is not None:
            shots = [[pool[i] for i in indices] for indices in nearest]
            for name in decoder_systems:
                rows = [
                    _label_row(e, labels, shots[i] if name == "few_shot" else [])
                    for i, e in enumerate(tests)
                ]
                scored[name], per_row[name] = _decoder_scores(loaded, rows, recipe)
    for name, entry in scored.items():
        entry["description"] = DESCRIPTIONS[name].format(k=settings.k, encoder=settings.encoder)
    order = ["knn", "base", "few_shot", "tuned"]
    scored = {name: scored[name] for name in order if name in scored}
    return scored, per_row, tests, notes


def _labels(run: Path) -> list[str]:
    import json

    return json.loads((final_dir(run) / "labels.json").read_text(encoding="utf-8"))


def _majority(neighbours: list[str | None], labels: list[str]) -> int:
    """The most common label among the neighbours, the nearest one's on a tie."""
    counts = Counter(neighbours)
    best = max(counts.values())
    winner = next(label for label in neighbours if counts[label] == best)
    return labels.index(winner)


def _classifier_picks(
    run: Path, recipe: Recipe, labels: list[str], tests: list[Example]
) -> tuple[list[int], float]:
    source = models.ModelSource("final", final_dir(run), "local")
    tokenizer = models.load_tokenizer(source, chat=False)
    model = load_classifier(run, recipe, labels, tokenizer.pad_token_id)
    rows, _ = tokenize_classification(tests, tokenizer, labels, recipe.data.max_length)
    probabilities = predict_labels(model, rows, tokenizer.pad_token_id)
    tokens = sum(len(row.input_ids) for row in rows) / max(len(rows), 1)
    return probabilities.argmax(dim=-1).tolist(), tokens


def _scored(
    picks: list[int], truth: list[int], labels: list[str], seconds: float, tokens: float
) -> dict[str, Any]:
    return {
        "metrics": _label_metrics(picks, truth, len(labels)),
        "latency_s": seconds / max(len(truth), 1),
        "prompt_tokens": tokens,
        "picks": list(zip(picks, truth, strict=True)),
    }


def _label_metrics(picks: list[int], truth: list[int], classes: int) -> dict[str, float]:
    confusion = torch.zeros(classes, classes, dtype=torch.long)
    for pick, answer in zip(picks, truth, strict=True):
        confusion[answer, pick] += 1
    hits = sum(p == t for p, t in zip(picks, truth, strict=True))
    return {"accuracy": hits / max(len(truth), 1), "f1_macro": f1_macro(confusion)}


def _decoder_base(
    run: Path, recipe: Recipe, notes: list[str], names: list[str]
) -> LoadedModel | None:
    """The run's base model as a causal LM, or None (with a note) for an encoder base."""
    source = models.resolve(recipe.model.base, recipe.model.accept_license)
    if not models.generates_text(source):
        notes += [f"{name}: the base model does not generate text (an encoder)" for name in names]
        log.warning("%s left out: the base model is an encoder", ", ".join(names))
        return None
    return load_for_inference(run, tuned=False)


def _label_row(example: Example, labels: list[str], shots: list[Example]) -> Example:
    """A multiple-choice row: the text with the labels listed, the right label the answer;
    each shot is an earlier turn answered with its label."""

    def turn(text: str) -> str:
        language = "ja" if language_of(text) == "ja" else "en"
        return f"{text}\n\n{INSTRUCTION[language]}{', '.join(labels)}"

    messages = []
    for shot in shots:
        messages += [
            {"role": "user", "content": turn(shot.text or "")},
            {"role": "assistant", "content": shot.label or ""},
        ]
    messages += [
        {"role": "user", "content": turn(example.text or "")},
        {"role": "assistant", "content": example.label or ""},
    ]
    meta = {"choices": list(labels), "answer": labels.index(example.label)}
    return Example(example.source, example.line, messages=messages, meta=meta)


def _decoder_scores(
    loaded: LoadedModel, rows: list[Example], recipe: Recipe
) -> tuple[dict[str, Any], dict[int, dict]]:
    start = time.perf_counter()
    metrics, _, row_scores = score_system_rows(loaded, rows, False, None)
    seconds = time.perf_counter() - start
    picks = [row_scores[i]["pick"] for i in range(len(rows))]
    truth = [row.meta["answer"] for row in rows]
    metrics |= _label_metrics(picks, truth, len(rows[0].meta["choices"]))
    entry = {
        "metrics": metrics,
        "latency_s": seconds / max(len(rows), 1),
        "prompt_tokens": prompt_tokens(loaded.tokenizer, rows, recipe.data.system_prompt),
    }
    return entry, {i: {"correct": row_scores[i]["correct"]} for i in range(len(rows))}
