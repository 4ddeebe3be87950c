"""`migaki quickstart`: the bundled recipe end to end, then base vs tuned on the test split."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from migaki.config import load_recipe
from migaki.evaluate import evaluate
from migaki.train import train

ROWS = [
    ("loss (test)", "loss", "{:.3f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("token accuracy", "token_accuracy", "{:.1%}"),
    ("answers stating the right fact", "fact_accuracy", "{:.1%}"),
    ("character F1 vs reference", "char_f1", "{:.3f}"),
    ("answers that end by themselves", "stopped", "{:.1%}"),
]


def recipe_path() -> Path:
    return Path(str(resources.files("migaki") / "recipes" / "quickstart.yaml"))


@dataclass
class QuickstartReport:
    run_dir: Path
    result: dict[str, Any]
    samples: int
    train_seconds: float
    eval_seconds: float

    def table(self) -> str:
        systems = self.result["systems"]
        lines = [
            f"\nbase vs tuned on the held-out test split ({self.result['rows']} questions)",
            f"{'':<34}{'base':>10}{'tuned':>10}",
        ]
        for label, key, fmt in ROWS:
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
        lines += [
            "",
            f"training {self.train_seconds:.0f} s, evaluation {self.eval_seconds:.0f} s;"
            f" run directory {self.run_dir}",
            f"try it: migaki chat {self.run_dir}",
        ]
        return "\n".join(lines)


def run_quickstart(out: str | None = None, overrides: list[str] | None = None) -> QuickstartReport:
    recipe = load_recipe(recipe_path(), overrides or [])
    started = time.perf_counter()
    run_dir = train(recipe, out=out, name="quickstart")
    trained = time.perf_counter()
    result = evaluate(run_dir, compare_base=True)
    return QuickstartReport(
        run_dir, result, recipe.eval.samples, trained - started, time.perf_counter() - trained
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
