"""train.ema: validation, checkpoints and final/ use a moving average of the weights, training
goes on with the raw weights, and a resumed run continues the same average."""

import json
import shutil

import pytest
import torch
from conftest import qa_rows, write_jsonl, write_recipe
from safetensors.torch import load_file

from migaki.cli import main
from migaki.train.averaging import AVERAGE_FILE, WeightAverage
from migaki.train.tracking import read_metrics


def test_the_average_follows_the_trainable_weights_and_swaps_back(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    model[1].requires_grad_(False)  # a frozen weight is not averaged
    average = WeightAverage(model, decay=0.5)
    assert average.names == ["0.weight", "0.bias"]
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update(step=100)  # past the ramp: the decay itself
    assert torch.allclose(average.shadow[0], start + 0.5)
    average.update(step=1)  # the ramp: (1 + 1) / (10 + 1) of the average stays
    assert torch.allclose(average.shadow[0], start + 1 - 0.5 * 2 / 11)

    raw = model[0].weight.detach().clone()
    with pytest.raises(RuntimeError), average.applied():
        assert torch.equal(model[0].weight, average.shadow[0])
        raise RuntimeError("the model's own weights come back even so")
    assert torch.equal(model[0].weight, raw)

    average.save(tmp_path)
    again = WeightAverage(model, decay=0.5)
    assert not again.load(tmp_path / "elsewhere")
    assert again.load(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.shadow, average.shadow, strict=True))


def ema_recipe(tmp_path, tiny_model, **train):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(24))
    settings = {"max_steps": 6, "eval_every": 2, "lr": 3e-2, "keep_checkpoints": 10}
    return write_recipe(
        tmp_path / f"r{len(train)}.yaml",
        tiny_model,
        data,
        method={"name": "full"},
        train={**settings, "final": "last", **train},
    )


def curve(run, split):
    return [m["loss"] for m in read_metrics(run) if m.get("split") == split]


def test_an_ema_run_trains_the_raw_weights_validates_the_average_and_resumes_exactly(
    tmp_path, tiny_model
):
    plain, whole, parts = tmp_path / "plain", tmp_path / "whole", tmp_path / "parts"
    assert main(["train", str(ema_recipe(tmp_path, tiny_model)), "--out", str(plain)]) == 0
    recipe = ema_recipe(tmp_path, tiny_model, ema=0.6, final="best")
    assert main(["train", str(recipe), "--out", str(whole)]) == 0

    # the same training steps; the validations (after step 0) are of another model
    assert curve(whole, "train") == pytest.approx(curve(plain, "train"), abs=1e-6)
    validations = list(zip(curve(whole, "val"), curve(plain, "val"), strict=True))
    assert validations[0][0] == pytest.approx(validations[0][1], abs=1e-6)
    assert all(abs(ema - own) > 1e-4 for ema, own in validations[1:])

    # final/ holds the best step's average, not its own weights
    best_step = json.loads((whole / "manifest.json").read_text())["final_step"]
    assert best_step < 6  # an earlier step than the last: its checkpoint's average is read
    last = whole / "checkpoints" / f"step-{best_step}"
    averaged, raw = (
        load_file(str(last / AVERAGE_FILE)),
        load_file(str(last / "trainable.safetensors")),
    )
    final = load_file(str(whole / "final" / "model.safetensors"))
    shared = [name for name in final if name in averaged]
    assert shared
    assert all(torch.equal(final[name], averaged[name]) for name in shared)
    assert any(not torch.equal(averaged[name], raw[name]) for name in averaged)

    # resumed from step 2, the run continues the same average
    assert main(["train", str(recipe), "--out", str(parts)]) == 0
    for checkpoint in parts.glob("checkpoints/step-*"):
        if checkpoint.name != "step-2":
            shutil.rmtree(checkpoint)
    assert main(["train", str(recipe), "--out", str(parts), "--resume"]) == 0
    assert curve(parts, "val") == pytest.approx(curve(whole, "val"), abs=1e-6)
    resumed = load_file(str(parts / "final" / "model.safetensors"))
    assert all(torch.allclose(resumed[name], final[name], atol=1e-6) for name in shared)
