"""Scoring a causal LM on conversation rows: loss, perplexity and token accuracy on every row;
multiple-choice rows by the likelihood of each choice; the other rows answered by generation
and scored against their reference (facts stated, character F1, answers that end)."""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import partial
from typing import Any

from migaki.data import Example, tokenize_all
from migaki.data.batches import collate
from migaki.data.heuristics import language_of
from migaki.evaluate.choices import is_choice_example, score_choices
from migaki.evaluate.generation import generate_answers
from migaki.metrics import evaluate_rows, summarize
from migaki.models.inference import LoadedModel
from migaki.objectives import causal_lm_loss
from migaki.precision import autocast


def score_system(
    loaded: LoadedModel, examples: list[Example], generate: bool, max_new_tokens: int | None
) -> tuple[dict[str, Any], dict[int, str]]:
    """One model's metrics, and its answer by row index: loss and perplexity on every row;
    multiple-choice rows scored by choice likelihood (the pick is the answer); the other rows
    answered by generation and scored against their reference, unless `generate` is False."""
    metrics = language_model_metrics(loaded, examples)
    answers: dict[int, str] = {}
    choice = [i for i, e in enumerate(examples) if is_choice_example(e)]
    open_ended = [i for i, e in enumerate(examples) if not is_choice_example(e)]
    if choice:
        scores = score_choices(loaded, [examples[i] for i in choice])
        metrics |= scores.metrics()
        for index, pick in zip(choice, scores.picks, strict=True):
            answers[index] = examples[index].meta["choices"][pick]
    if generate and open_ended:
        rows = [examples[i] for i in open_ended]
        tokens = max_new_tokens or (loaded.recipe.eval.max_new_tokens if loaded.recipe else 128)
        generated = generate_answers(loaded, [e.prompt_messages for e in rows], tokens)
        metrics |= answer_metrics(rows, generated)
        answers |= {index: text for index, (text, _) in zip(open_ended, generated, strict=True)}
    return metrics, answers


def language_model_metrics(loaded: LoadedModel, examples: list[Example]) -> dict[str, float]:
    recipe = loaded.recipe
    rows, _ = tokenize_all(
        examples,
        loaded.tokenizer,
        max_length=recipe.data.max_length if recipe else 2048,
        system_prompt=recipe.data.system_prompt if recipe else None,
    )
    device = next(loaded.model.parameters()).device
    loaded.model.eval()
    sums = evaluate_rows(
        lambda batch: causal_lm_loss(loaded.model, batch),
        rows,
        8,
        partial(collate, pad_token_id=loaded.tokenizer.pad_token_id),
        device,
        lambda: autocast(loaded.precision, device),
    )
    metrics = summarize(sums)
    metrics.pop("tokens")
    return metrics


def answer_metrics(examples: list[Example], answers: list[tuple[str, bool]]) -> dict[str, float]:
    """fact_accuracy: share of answers stating every fact of the row (rows with `facts`);
    char_f1: character-bigram F1 against the reference, fair to Japanese and English alike;
    stopped: share of answers that ended their turn by themselves. When the rows mix languages
    (by the reference's script), each figure again per language: `fact_accuracy_ja`, ...,
    with `rows_ja`, `rows_en`."""
    metrics = _answer_figures(examples, answers)
    by_language: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        by_language.setdefault(language_of(example.reference), []).append(index)
    if len(by_language) > 1:
        for language, indices in sorted(by_language.items()):
            part = _answer_figures([examples[i] for i in indices], [answers[i] for i in indices])
            metrics |= {f"{key}_{language}": value for key, value in part.items()}
            metrics[f"rows_{language}"] = len(indices)
    return metrics


def _answer_figures(examples: list[Example], answers: list[tuple[str, bool]]) -> dict[str, float]:
    with_facts = [
        (e, a) for e, (a, _) in zip(examples, answers, strict=True) if e.meta.get("facts")
    ]
    metrics = {
        "char_f1": sum(char_f1(a, e.reference) for e, (a, _) in zip(examples, answers, strict=True))
        / max(len(examples), 1),
        "stopped": sum(stopped for _, stopped in answers) / max(len(answers), 1),
    }
    if with_facts:
        metrics["fact_accuracy"] = sum(
            states_facts(a, e.meta["facts"]) for e, a in with_facts
        ) / len(with_facts)
    return metrics


def normalize(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def states_facts(answer: str, facts: list[str]) -> bool:
    normalized = normalize(answer)
    return all(normalize(fact) in normalized for fact in facts)


def char_f1(prediction: str, reference: str) -> float:
    grams = lambda s: Counter(s[i : i + 2] for i in range(max(len(s) - 1, 1)))  # noqa: E731
    p, r = grams(normalize(prediction)), grams(normalize(reference))
    overlap = sum((p & r).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def answer_samples(examples: list[Example], answers: dict[str, dict[int, str]]) -> list[dict]:
    samples = []
    for index, example in enumerate(examples):
        row = {"prompt": example.prompt_messages[-1]["content"], "reference": example.reference}
        row |= {label: texts[index] for label, texts in answers.items() if index in texts}
        samples.append(row)
    return samples
