"""`migaki quickstart`: the bundled recipe end to end, then base vs tuned on the test split."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from migaki.config import load_recipe
from migaki.evaluate import evaluate
from migaki.models import bundled
from migaki.train import train

MINUTES = 8.0  # the default budget of the whole quickstart
# The evaluation after training (base and tuned: model loads, a loss pass and generated answers
# each) costs about this many validations of the training run, so training keeps that much of
# the budget free, as long as a validation takes on the machine it runs on. Measured on 2-core
# CPUs with Gemma 3 270M: 11.5x in bf16 with AVX-512, 12x in fp32 capped at AVX2 (16-17x, also
# for SmolLM2-135M, before generation was batched by 32).
EVALUATION_IN_VALIDATIONS = 14.0

ROWS = [
    ("loss (test)", "loss", "{:.3f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("token accuracy", "token_accuracy", "{:.1%}"),
    ("answers stating the right fact", "fact_accuracy", "{:.1%}"),
    ("character F1 vs reference", "char_f1", "{:.3f}"),
    ("answers that end by themselves", "stopped", "{:.1%}"),
]
ANSWER_KEYS = {"fact_accuracy": "right fact", "char_f1": "character F1", "stopped": "ends"}
LANGUAGE_NAMES = {"ja": "Japanese", "en": "English"}


def recipe_path() -> Path:
    return Path(str(resources.files("migaki") / "recipes" / "quickstart.yaml"))


@dataclass
class QuickstartReport:
    run_dir: Path
    result: dict[str, Any]
    samples: int
    train_seconds: float
    eval_seconds: float
    budget: dict[str, Any] | None = None  # the manifest's time_budget, when one was set

    def table(self) -> str:
        systems = self.result["systems"]
        lines = [
            f"\nbase vs tuned on the held-out test split ({self.result['rows']} questions)",
            f"{'':<34}{'base':>10}{'tuned':>10}",
        ]
        for label, key, fmt in self._rows():
            if key in systems["tuned"]:
                base, tuned = systems["base"][key], systems["tuned"][key]
                lines.append(f"{label:<34}{fmt.format(base):>10}{fmt.format(tuned):>10}")
        for sample in _pick_samples(self.result["samples"], self.samples):
            lines += [
                "",
                f"Q: {sample['prompt']}",
                f"  reference: {sample['reference']}",
                f"  base:      {_one_line(sample['base'])}",
                f"  tuned:     {_one_line(sample['tuned'])}",
            ]
        fitted = ""
        if self.budget and self.budget["steps"] < self.budget["recipe_steps"]:
            fitted = (
                f" ({self.budget['steps']} of {self.budget['recipe_steps']} steps fit in"
                f" {self.budget['minutes']:g} min)"
            )
        lines += [
            "",
            f"training {self.train_seconds:.0f} s{fitted}, evaluation {self.eval_seconds:.0f} s;"
            f" run directory {self.run_dir}",
            f"try it: migaki chat {self.run_dir}",
        ]
        return "\n".join(lines)

    def _rows(self) -> list[tuple[str, str, str]]:
        """ROWS, then the answer figures again for each language of the test split."""
        tuned, rows = self.result["systems"]["tuned"], list(ROWS)
        for language, name in LANGUAGE_NAMES.items():
            if f"rows_{language}" in tuned:
                count = tuned[f"rows_{language}"]
                rows += [
                    (f"  {name} ({count}) {ANSWER_KEYS[key]}", f"{key}_{language}", fmt)
                    for _, key, fmt in ROWS
                    if key in ANSWER_KEYS
                ]
        return rows


def run_quickstart(
    out: str | None = None,
    overrides: list[str] | None = None,
    minutes: float | None = MINUTES,
    accept_license: bool = False,
) -> QuickstartReport:
    """Train the bundled recipe and compare base and tuned on its test split, within `minutes`
    in all (None or 0: the recipe's whole schedule, however long it takes). A
    `train.max_minutes` override sets the training budget itself. `accept_license` accepts the
    licence of the recipe's bundled base where it needs that; without it, or an earlier
    acceptance, a base that needs one is refused before anything is downloaded."""
    overrides = list(overrides or [])
    reserve = 0.0  # an own train.max_minutes is the training's alone
    if minutes and not any(o.startswith("train.max_minutes=") for o in overrides):
        overrides.append(f"train.max_minutes={minutes:g}")
        reserve = EVALUATION_IN_VALIDATIONS
    recipe = load_recipe(recipe_path(), overrides)
    needs = bundled.BUNDLED.get(recipe.model.base)
    if accept_license and needs and needs.must_accept and not recipe.model.accept_license:
        model = recipe.model.model_copy(update={"accept_license": needs.must_accept})
        recipe = recipe.model_copy(update={"model": model})
    if not recipe.model.accept_license:
        bundled.require_accepted(
            recipe.model.base,
            "run `migaki quickstart --accept-license` (or train the Apache-2.0 SmolLM2 instead: "
            "`migaki quickstart model.base=smollm2-135m-instruct`)",
        )
    started = time.perf_counter()
    run_dir = train(recipe, out=out, name="quickstart", budget_reserve=reserve)
    trained = time.perf_counter()
    result = evaluate(run_dir, compare_base=True)
    budget = json.loads((run_dir / "manifest.json").read_text()).get("time_budget")
    return QuickstartReport(
        run_dir,
        result,
        recipe.eval.samples,
        trained - started,
        time.perf_counter() - trained,
        budget,
    )


def _pick_samples(samples: list[dict], count: int) -> list[dict]:
    """Spread the examples over the test split (which mixes Japanese and English)."""
    if not samples or count == 0:
        return []
    stride = max(1, len(samples) // count)
    return samples[::stride][:count]


def _one_line(text: str, width: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
