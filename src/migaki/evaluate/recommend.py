"""The recommendation at the end of `migaki compare`: which system to pick, in sentences that
say the numbers they follow from. A difference is called real only when a paired bootstrap
over the test rows keeps its 95% interval away from zero: on a few dozen rows, ten points of
accuracy are often noise, and a user deciding whether to fine-tune deserves to know that."""

from __future__ import annotations

import random
from dataclasses import dataclass

TRAINED = ("tuned", "tuned_rag")
NAMES = {
    "base": "the base model zero-shot",
    "few_shot": "few-shot prompting",
    "rag": "RAG on the base model",
    "knn": "k-nearest-neighbour labels",
    "tuned": "the fine-tuned model",
    "tuned_rag": "the fine-tuned model with RAG",
}
METRIC_NAMES = {
    "fact_accuracy": "fact accuracy",
    "choice_accuracy": "choice accuracy",
    "accuracy": "accuracy",
    "exact_match": "exact match",
    "char_f1": "character F1",
}


@dataclass(frozen=True)
class System:
    """What the recommendation needs of one system: its primary figure, the per-row values
    that figure is the mean of, and what one call costs."""

    name: str
    score: float
    per_row: list[float]
    prompt_tokens: float
    latency_s: float


def paired_interval(
    first: list[float], second: list[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of mean(first - second) over rows resampled with replacement (the rows
    are the same for both systems, so the pairing removes the rows' own difficulty)."""
    differences = [a - b for a, b in zip(first, second, strict=True)]
    if not differences:
        return 0.0, 0.0
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(
        sum(differences[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples)
    )
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def recommend(systems: list[System], metric: str, training_minutes: float | None) -> str:
    """A paragraph: the best trained system against the best untrained one (points of
    `metric`, interval, prompt tokens), what RAG alone reaches, the training cost, and the
    pick. Systems are those that ran; with only one side present, the best of what ran."""
    label = METRIC_NAMES.get(metric, metric)
    trained = [s for s in systems if s.name in TRAINED]
    untrained = [s for s in systems if s.name not in TRAINED]
    if not trained or not untrained:
        best = max(systems, key=lambda s: s.score)
        return (
            f"Only {'trained' if trained else 'untrained'} systems ran: {NAMES[best.name]} "
            f"scores best, {_points(best.score)} of {label}. Compare a run with the prompting "
            "systems to decide whether fine-tuning is worth it."
        )
    tuned = max(trained, key=lambda s: s.score)
    prompted = max(untrained, key=lambda s: s.score)
    low, high = paired_interval(tuned.per_row, prompted.per_row)
    sentences = [_versus(tuned, prompted, label, low, high, len(tuned.per_row))]
    rag = next((s for s in systems if s.name == "rag"), None)
    if rag is not None and tuned.score > 0 and rag.score < tuned.score:
        sentences.append(
            f"RAG alone reaches {rag.score / tuned.score:.0%} of {NAMES[tuned.name]}'s "
            f"{label} without training."
        )
    elif rag is not None and rag is not prompted and rag.score >= tuned.score:
        sentences.append(f"RAG alone scores {_points(rag.score)} without training.")
    if training_minutes is not None:
        sentences.append(f"Training cost {training_minutes:.1f} minutes, once.")
    sentences.append(_pick(tuned, prompted, low, high, systems))
    return " ".join(sentences)


def _versus(tuned: System, prompted: System, label: str, low: float, high: float, rows: int) -> str:
    gap = tuned.score - prompted.score
    if low > 0:
        verdict = f"beats {NAMES[prompted.name]} by {gap * 100:.1f} points of {label}"
    elif high < 0:
        verdict = f"trails {NAMES[prompted.name]} by {-gap * 100:.1f} points of {label}"
    else:
        verdict = f"is within noise of {NAMES[prompted.name]} ({gap * 100:+.1f} points of {label})"
    return (
        f"{_capital(NAMES[tuned.name])} {verdict}: {_points(tuned.score)} against "
        f"{_points(prompted.score)} (95% interval {_signed(low)} to {_signed(high)} points over "
        f"{rows} rows), {_token_ratio(tuned.prompt_tokens, prompted.prompt_tokens)} "
        f"({tuned.prompt_tokens:.0f} against {prompted.prompt_tokens:.0f} tokens per call)."
    )


def _pick(tuned: System, prompted: System, low: float, high: float, systems: list[System]) -> str:
    if low > 0:
        return f"Pick {NAMES[tuned.name]}."
    if high < 0:
        return f"Do not fine-tune for this: pick {NAMES[prompted.name]}."
    # Within noise: the cheaper call wins, and with equal figures the untrained one needs no
    # training to keep up to date.
    close = [tuned, prompted]
    cheapest = min(close, key=lambda s: (s.prompt_tokens, s.name in TRAINED))
    reason = (
        "fewer prompt tokens per call" if cheapest.name in TRAINED else "no training to maintain"
    )
    return (
        f"The figures do not separate them: pick {NAMES[cheapest.name]} ({reason}), or test "
        "on more rows."
    )


def _token_ratio(tuned: float, prompted: float) -> str:
    if prompted <= 0 or tuned <= 0:
        return "with prompts of no comparable size"
    ratio = tuned / prompted
    if ratio < 0.95:
        return f"with 1/{prompted / tuned:.1f} of the prompt tokens"
    if ratio > 1.05:
        return f"with {ratio:.1f}x the prompt tokens"
    return "with prompts of about the same size"


def _points(value: float) -> str:
    return f"{value * 100:.1f}%"


def _signed(value: float) -> str:
    return f"{value * 100:+.1f}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]
