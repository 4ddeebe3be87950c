import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from migaki.testing import build_tiny_model

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a ChatML byte-level BPE tokenizer (built once)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from migaki.models import ModelSource, load_tokenizer

    return load_tokenizer(ModelSource("tiny", tiny_model, "local"))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`migaki ARGS` in this process: (exit code, stdout, stderr)."""
    from migaki.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli_process(
    *args, launcher=(sys.executable,), env=None, timeout=None
) -> subprocess.CompletedProcess:
    """`migaki ARGS` in a fresh process started by `launcher`: its exit code and text output."""
    return subprocess.run(
        [*launcher, "-m", "migaki", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def qa_rows(count: int) -> list[dict]:
    """Short support-style conversations, half Japanese, with a fact each."""
    rows = []
    for i in range(count):
        if i % 2:
            q, a = f"製品{i}の値段は？", f"製品{i}は{1000 + i}円です。"
        else:
            q, a = f"How much is product {i}?", f"Product {i} costs {1000 + i} yen."
        rows.append(
            {
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                "facts": [str(1000 + i)],
            }
        )
    return rows


@pytest.fixture
def qa_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "qa.jsonl", qa_rows(40))


def write_recipe(path: Path, model: Path, data_file: Path, **sections) -> Path:
    import yaml

    recipe = {
        "model": {"base": str(model)},
        "task": "sft",
        "data": {"train": str(data_file), "max_length": 64},
        "method": {"name": "lora", "lora_rank": 4, "lora_alpha": 8},
        "train": {
            "max_steps": 6,
            "batch_size": 4,
            "lr": 5e-3,
            "eval_every": 3,
            "precision": "fp32",
        },
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            recipe.setdefault(section, {}).update(values)
        else:
            recipe[section] = values
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


@pytest.fixture
def recipe_file(tmp_path, tiny_model, qa_file) -> Path:
    return write_recipe(tmp_path / "recipe.yaml", tiny_model, qa_file)


@pytest.fixture
def exact_int8(monkeypatch):
    """int8 products that are exact here: where this CPU's `torch._int_mm` is not (AVX2
    without VNNI), an integer product in int64 stands in, so the screen's logic is tested on
    every machine; where it is, the real kernel runs."""
    from migaki.evaluate import lm_head

    if not lm_head.exact_int8_products():

        def int_mm(left, right):
            return (left.long() @ right.long()).int()

        monkeypatch.setattr(torch, "_int_mm", int_mm)
        monkeypatch.setattr(lm_head, "exact_int8_products", lambda: True)
