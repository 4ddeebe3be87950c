"""Scoring a causal LM on conversation rows: loss, perplexity and token accuracy on every row;
multiple-choice rows by the likelihood of each choice; the other rows answered by generation
and scored against their reference (facts stated, character F1, answers that end, exact
match, BLEU, chrF, ROUGE, the answer's language, its format), overall, per language, and per
row for error analysis and paired comparisons."""

from __future__ import annotations

import unicodedata
from collections import Counter
from functools import partial
from typing import Any

from migaki.data import Example, tokenize_all
from migaki.data.batches import collate
from migaki.evaluate.choices import is_choice_example, score_choices
from migaki.evaluate.format_check import answer_validator, format_validity
from migaki.evaluate.generation import generate_answers
from migaki.evaluate.text_metrics import ROUGE_TYPES, choice_confidence, text_figures, text_row
from migaki.metrics import evaluate_rows, summarize
from migaki.models.inference import LoadedModel
from migaki.objectives import causal_lm_loss
from migaki.precision import autocast


def score_system(
    loaded: LoadedModel, examples: list[Example], generate: bool, max_new_tokens: int | None
) -> tuple[dict[str, Any], dict[int, str]]:
    """One model's metrics, and its answer by row index: `score_system_rows` without the
    per-row figures."""
    metrics, answers, _ = score_system_rows(loaded, examples, generate, max_new_tokens)
    return metrics, answers


def score_system_rows(
    loaded: LoadedModel, examples: list[Example], generate: bool, max_new_tokens: int | None
) -> tuple[dict[str, Any], dict[int, str], dict[int, dict[str, Any]]]:
    """One model's metrics, its answer by row index, and each scored row's figures by index.

    Loss and perplexity on every row; multiple-choice rows scored by choice likelihood (the
    pick is the answer; row: {"kind": "choice", "correct", "confidence", "pick", "answer"},
    see `choice_row`); the other rows answered by generation and scored against their
    reference (`answer_metrics`; row: {"kind": "generation", **row_scores}), unless
    `generate` is False. Answers are checked against the recipe's `eval.format` (text
    without a recipe); a bad schema file raises UserError before anything is computed."""
    answer_format = loaded.recipe.eval.format if loaded.recipe else "text"
    choice = [i for i, e in enumerate(examples) if is_choice_example(e)]
    open_ended = [i for i, e in enumerate(examples) if not is_choice_example(e)]
    if generate and open_ended:
        answer_validator(answer_format)  # a bad schema file is named before any forward pass
    metrics = language_model_metrics(loaded, examples)
    answers: dict[int, str] = {}
    rows: dict[int, dict[str, Any]] = {}
    if choice:
        scores = score_choices(loaded, [examples[i] for i in choice])
        metrics |= scores.metrics()
        for position, (index, pick) in enumerate(zip(choice, scores.picks, strict=True)):
            answers[index] = examples[index].meta["choices"][pick]
            rows[index] = choice_row(
                scores.logprobs[position], scores.tokens[position], pick, scores.answers[position]
            )
    if generate and open_ended:
        asked = [examples[i] for i in open_ended]
        tokens = max_new_tokens or (loaded.recipe.eval.max_new_tokens if loaded.recipe else 128)
        generated = generate_answers(loaded, [e.prompt_messages for e in asked], tokens)
        scored = row_scores(asked, generated, answer_format)
        metrics |= _metrics_of_rows(asked, [text for text, _ in generated], scored)
        for index, (text, _), row in zip(open_ended, generated, scored, strict=True):
            answers[index] = text
            rows[index] = {"kind": "generation", **row}
    return metrics, answers, rows


def choice_row(logprobs: list[float], tokens: list[int], pick: int, answer: int) -> dict[str, Any]:
    """A multiple-choice row's figures from its `ChoiceScores` entries (summed log-probability
    and answer tokens per choice): the pick (by summed log-probability, as `choice_accuracy`
    picks), the right choice's index, whether they agree, and confidence: the pick's
    probability under a softmax over the choices' mean log-probability per token."""
    return {
        "kind": "choice",
        "correct": pick == answer,
        "confidence": choice_confidence(logprobs, tokens, pick),
        "pick": pick,
        "answer": answer,
    }


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


def answer_metrics(
    examples: list[Example], answers: list[tuple[str, bool]], answer_format: str = "text"
) -> dict[str, float]:
    """The figures of generated answers (text, stopped) against their rows' references, all
    on 0..1: fact_accuracy, the share of answers stating every fact of the row (rows with
    `facts` only); char_f1, character-bigram F1, fair to Japanese and English alike; stopped,
    the share of answers that ended their turn by themselves; exact_match, bleu, chrf,
    rouge1, rouge2, rougeL, language_match (`text_metrics.text_figures`: BLEU and chrF at
    corpus level, the others means over rows); format_valid, the share of answers of the
    `answer_format` shape (not for text).

    When the rows mix languages (by the reference's script), each figure again per language
    (`fact_accuracy_ja`, `bleu_en`, ...) with `rows_ja`, `rows_en`. The overall figures pool
    all rows (BLEU and chrF over the n-gram counts of every row, the others over every row),
    so a language with more rows weighs more; they are not a mean of the per-language ones."""
    texts = [text for text, _ in answers]
    return _metrics_of_rows(examples, texts, row_scores(examples, answers, answer_format))


def row_scores(
    examples: list[Example], answers: list[tuple[str, bool]], answer_format: str = "text"
) -> list[dict[str, Any]]:
    """One dict per answer: exact_match, char_f1, bleu, chrf, rouge1, rouge2, rougeL (on 0..1,
    sentence-level BLEU and chrF), facts (True/False, None for a row without facts), stopped,
    language (of the answer), reference_language, and format_ok unless the format is text.
    Raises UserError for a bad schema file."""
    texts = [text for text, _ in answers]
    checks = format_validity(texts, answer_format) if answer_format != "text" else None
    rows = []
    for position, (example, (text, stopped)) in enumerate(zip(examples, answers, strict=True)):
        scores = text_row(text, example.reference)
        facts = example.meta.get("facts")
        row = {
            "exact_match": scores["exact_match"],
            "char_f1": char_f1(text, example.reference),
            **{key: scores[key] for key in ("bleu", "chrf", *ROUGE_TYPES)},
            "facts": states_facts(text, facts) if facts else None,
            "stopped": stopped,
            "language": scores["language"],
            "reference_language": scores["reference_language"],
        }
        if checks is not None:
            row["format_ok"] = checks[position]
        rows.append(row)
    return rows


def _metrics_of_rows(
    examples: list[Example], texts: list[str], rows: list[dict[str, Any]]
) -> dict[str, float]:
    """`answer_metrics` from the answers' texts and `row_scores`, overall and per language."""
    metrics = _answer_figures(examples, texts, rows)
    by_language: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_language.setdefault(row["reference_language"], []).append(index)
    if len(by_language) > 1:
        for language, indices in sorted(by_language.items()):
            part = _answer_figures(
                [examples[i] for i in indices],
                [texts[i] for i in indices],
                [rows[i] for i in indices],
            )
            metrics |= {f"{key}_{language}": value for key, value in part.items()}
            metrics[f"rows_{language}"] = len(indices)
    return metrics


def _answer_figures(
    examples: list[Example], texts: list[str], rows: list[dict[str, Any]]
) -> dict[str, float]:
    count = max(len(rows), 1)
    metrics = {
        "char_f1": sum(row["char_f1"] for row in rows) / count,
        "stopped": sum(row["stopped"] for row in rows) / count,
    }
    facts = [row["facts"] for row in rows if row["facts"] is not None]
    if facts:
        metrics["fact_accuracy"] = sum(facts) / len(facts)
    metrics |= text_figures(texts, [e.reference for e in examples], rows)
    if rows and "format_ok" in rows[0]:
        metrics["format_valid"] = sum(row["format_ok"] for row in rows) / len(rows)
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
