"""train.layer_lr_decay: each transformer layer below the top trains at a smaller learning
rate, the embeddings at the smallest; the head keeps the recipe's lr."""

import pytest
import torch
from conftest import write_jsonl, write_recipe
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from migaki.cli import main
from migaki.testing import build_tiny_encoder
from migaki.train.session import _param_groups


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    return build_tiny_encoder(tmp_path_factory.mktemp("enc") / "model")


def scale_of(groups, parameter):
    (scale,) = [g["lr_scale"] for g in groups if any(p is parameter for p in g["params"])]
    return scale


def test_each_layer_down_trains_at_a_factor_of_the_one_above(tiny_encoder):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=2)
    groups = _param_groups(model, weight_decay=0.01, layer_lr_decay=0.5)
    listed = [p for g in groups for p in g["params"]]
    assert len(listed) == len(list(model.parameters())) == len({id(p) for p in listed})
    layers = model.bert.encoder.layer  # two layers
    assert scale_of(groups, layers[1].attention.self.query.weight) == 1.0
    assert scale_of(groups, layers[0].output.dense.weight) == 0.5
    assert scale_of(groups, model.bert.embeddings.word_embeddings.weight) == 0.25
    assert scale_of(groups, model.bert.embeddings.LayerNorm.weight) == 0.25
    assert scale_of(groups, model.classifier.weight) == 1.0
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.ndim < 2 for p in g["params"]))
    assert all(g["weight_decay"] == 0.01 for g in groups if any(p.ndim >= 2 for p in g["params"]))


def test_without_decay_the_two_groups_are_as_before(tiny_encoder):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder, num_labels=2)
    groups = _param_groups(model, weight_decay=0.01)
    assert [(g["weight_decay"], g["lr_scale"]) for g in groups] == [(0.01, 1.0), (0.0, 1.0)]


def test_a_training_run_moves_the_embeddings_by_the_decayed_rate(tmp_path, tiny_encoder, capsys):
    rows = [{"sentence": f"{w} {i}", "label": w} for i in range(48) for w in ("good", "bad")]
    data = write_jsonl(tmp_path / "s.jsonl", rows)

    def embedding_and_head_change(decay):
        recipe = write_recipe(
            tmp_path / "r.yaml",
            tiny_encoder,
            data,
            task="classification",
            method={"name": "full"},
            train={"max_steps": 4, "batch_size": 8, "lr": 1e-2, "layer_lr_decay": decay},
        )
        run = tmp_path / f"run-{decay}"
        assert main(["train", str(recipe), "--out", str(run)]) == 0, capsys.readouterr().err
        base, tuned = (
            load_file(tiny_encoder / "model.safetensors"),
            load_file(run / "final" / "model.safetensors"),
        )
        key = next(k for k in base if k.endswith("word_embeddings.weight"))
        moved = (tuned[f"bert.{key.removeprefix('bert.')}"] - base[key]).abs().max()
        return float(moved), tuned["classifier.weight"]

    moved_decayed, head_decayed = embedding_and_head_change(1e-3)
    moved_plain, _ = embedding_and_head_change(1.0)
    # AdamW moves a weight about lr per step whatever its gradient: 1e-2 * 4 steps at most
    assert moved_plain > 1e-2
    assert moved_decayed < 1e-3 * moved_plain
    assert torch.isfinite(head_decayed).all()


def test_adapters_refuse_layer_decay(tmp_path, tiny_encoder, capsys):
    data = write_jsonl(tmp_path / "s.jsonl", [{"sentence": "a", "label": "x"}] * 8)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_encoder,
        data,
        task="classification",
        train={"layer_lr_decay": 0.8},
    )
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "train.layer_lr_decay" in err and "lora" in err
    assert "Traceback" not in err
