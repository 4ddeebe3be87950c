"""The model card (README.md) every export carries: where the model comes from, how it was
trained and on what, what it scored, what it is for, and how the export was checked."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migaki import __version__
from migaki.config import Recipe
from migaki.models import BUNDLED
from migaki.rundir import read_manifest
from migaki.tasks import task_for

HYPER_PARAMETERS = (
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "grad_accum",
    "scheduler",
    "warmup",
    "weight_decay",
    "layer_lr_decay",
    "precision",
    "seed",
)


def model_card(run: Path, recipe: Recipe, export: dict[str, Any], verification: list[str]) -> str:
    """Markdown: base model and licence, method and hyper-parameters, data with hashes, the
    run's eval.json figures, intended use and limitations, provenance and verification."""
    manifest = read_manifest(run)
    name = recipe.name or run.name
    lines = [
        "---",
        f"base_model: {json.dumps(recipe.model.base)}",
        f"license: {json.dumps(base_licence(recipe.model.base))}",
        f"library_name: {'transformers' if export['format'] == 'hf' else 'gguf'}",
        "tags: [migaki, fine-tuned]",
        "---",
        f"# {name}",
        "",
        f"Fine-tuned with migaki {__version__} from `{recipe.model.base}`, task "
        f"`{recipe.task}`, method `{recipe.method.name}`; exported as `{export['format']}` "
        f"({export['type']}) on {datetime.now(UTC):%Y-%m-%d}.",
        "",
        "## Base model",
        "",
        f"- `{recipe.model.base}`, licence: {base_licence(recipe.model.base)}. The base "
        "model's terms apply to this model too; its licence file is copied here when it has one.",
        "",
        "## Training",
        "",
        f"- Method: {_method_line(recipe)}",
        f"- Hyper-parameters: {_hyper_parameters(recipe)}",
        f"- Steps: {manifest.get('steps', '?')} (final weights from step "
        f"{manifest.get('final_step', '?')}); precision {manifest.get('precision', '?')}; "
        f"wall time {_minutes(manifest)}",
        f"- migaki commit: {manifest.get('git_commit') or 'unknown'}; run directory `{run}`",
        "",
        "## Data",
        "",
        *_data_lines(recipe, manifest),
        "",
        "## Evaluation",
        "",
        *_eval_lines(run),
        "",
        "## Intended use and limitations",
        "",
        f"- Made for the task its data shows ({recipe.task} on {_data_names(recipe)}); outside "
        "that domain expect the base model's behaviour or worse.",
        "- A small fine-tuned model states what it learned with confidence, also where it is "
        "wrong: check answers that matter against their source.",
        "- It inherits the base model's biases and gaps; the evaluation above covers only the "
        "rows listed.",
    ]
    if recipe.data.system_prompt:
        lines += [
            "",
            "The chat template adds the training system prompt to a conversation that has none:",
            "",
            f"> {recipe.data.system_prompt}",
        ]
    lines += ["", "## How to run it", "", *_run_lines(export, recipe)]
    lines += ["", "## Export verification", "", "```", *verification, "```", ""]
    return "\n".join(lines)


def _run_lines(export: dict[str, Any], recipe: Recipe) -> list[str]:
    gguf = next((name for name in export.get("files", {}) if name.endswith(".gguf")), None)
    if export["format"] == "ollama":
        name = export["run_with"].split()[2]
        return [f"In this folder: `{export['run_with']}`, then `ollama run {name}`."]
    if gguf:
        return [
            f"`llama-cli -m {gguf} -cnv` (llama.cpp), or from Python "
            f"`llama_cpp.Llama(model_path='{gguf}').create_chat_completion(messages=...)`; "
            "the chat template and stop tokens are in the file."
        ]
    if task_for(recipe).head is not None:
        return [
            "`AutoModelForSequenceClassification.from_pretrained(folder)` with `AutoTokenizer` "
            "(transformers); `config.json` holds the label names (`id2label`)."
        ]
    return [
        "`AutoModelForCausalLM.from_pretrained(folder)` with `AutoTokenizer` and "
        "`apply_chat_template` (transformers), or any runtime that reads a Hugging Face "
        "folder; `generation_config.json` stops at the end-of-turn token."
    ]


def base_licence(base: str) -> str:
    """A bundled model's licence, or the `license:` of a local model's own card."""
    if base in BUNDLED:
        return BUNDLED[base].licence
    card = Path(base).expanduser() / "README.md"
    if card.is_file():
        for line in card.read_text(encoding="utf-8", errors="replace").splitlines()[:40]:
            if line.startswith("license:"):
                return line.split(":", 1)[1].strip() or "unknown"
    return "unknown (see the base model's own terms)"


def _method_line(recipe: Recipe) -> str:
    method = recipe.method
    if method.name in ("lora", "dora", "qlora"):
        return (
            f"{method.name} (rank {method.lora_rank}, alpha {method.lora_alpha}), merged into "
            "the base weights"
        )
    if method.name == "ia3":
        return "ia3, merged into the base weights"
    return f"{method.name} (the model's own weights trained)"


def _hyper_parameters(recipe: Recipe) -> str:
    train = recipe.train.model_dump()
    return ", ".join(
        f"{key} {train[key]}" for key in HYPER_PARAMETERS if train.get(key) is not None
    )


def _minutes(manifest: dict[str, Any]) -> str:
    try:
        started = datetime.fromisoformat(manifest["started"])
        finished = datetime.fromisoformat(manifest["finished"])
    except (KeyError, ValueError):
        return "unknown"
    return f"{(finished - started).total_seconds() / 60:.1f} min"


def _data_names(recipe: Recipe) -> str:
    return ", ".join(f"`{Path(p).name}`" for p in _data_files(recipe)) or "its data"


def _data_files(recipe: Recipe) -> list[str]:
    return [f for f in (recipe.data.train, recipe.data.val, recipe.data.test) if f]


def _data_lines(recipe: Recipe, manifest: dict[str, Any]) -> list[str]:
    data = manifest.get("data", {})
    rows = data.get("rows", {})
    lines = [
        f"- Rows: train {rows.get('train', '?')}, validation {rows.get('val', '?')}, "
        f"test {rows.get('test', '?')}"
    ]
    for path, digest in data.get("hashes", {}).items():
        lines.append(f"- `{Path(path).name}` SHA-256 `{digest}`")
    return lines


def _eval_lines(run: Path) -> list[str]:
    path = run / "eval.json"
    if not path.is_file():
        return ["No `migaki eval` result in the run (run `migaki eval RUN` before exporting)."]
    result = json.loads(path.read_text(encoding="utf-8"))
    lines = [f"On {result.get('data', 'the test split')} ({result.get('rows', '?')} rows):", ""]
    lines.append("| system | " + " | ".join(_figure_names(result)) + " |")
    lines.append("| --- |" + " --- |" * len(_figure_names(result)))
    for system, figures in result.get("systems", {}).items():
        cells = [_cell(figures.get(name)) for name in _figure_names(result)]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    return lines


def _figure_names(result: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for figures in result.get("systems", {}).values():
        names += [k for k, v in figures.items() if isinstance(v, (int, float)) and k not in names]
    return names[:8]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
