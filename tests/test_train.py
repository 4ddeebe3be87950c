import json
import os
import signal
import subprocess
import sys
import time

import torch
from conftest import qa_rows, run_cli_process, write_jsonl, write_recipe
from peft import PeftModel
from transformers import AutoModelForCausalLM

from migaki.cli import main
from migaki.config import load_recipe
from migaki.evaluate import generate_answers
from migaki.models.inference import load_for_inference
from migaki.train import train
from migaki.train.tracking import read_metrics


def losses(run_dir, split="train"):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if m.get("split") == split}


def test_lora_run_writes_the_run_directory(tmp_path, recipe_file):
    out = tmp_path / "run"
    assert main(["train", str(recipe_file), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "recipe.yaml",
        "manifest.json",
        "metrics.jsonl",
        "checkpoints",
        "final",
        "data",
    }
    assert sorted(p.name for p in (out / "final").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
        "files.json",  # sizes and SHA-256 of the others, written last
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert [
        len((out / "data" / f"{s}.jsonl").read_text().splitlines())
        for s in ("train", "val", "test")
    ] == [32, 4, 4]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["steps"] == 6
    assert 0 < manifest["trainable_params"] < manifest["total_params"]
    assert manifest["peak_memory_mb"] > 0
    assert manifest["versions"]["torch"] and manifest["data"]["hashes"]
    train_rows = [m for m in read_metrics(out) if m.get("split") == "train"]
    val_rows = [m for m in read_metrics(out) if m.get("split") == "val"]
    assert [m["step"] for m in train_rows] == [1, 2, 3, 4, 5, 6]
    assert {"step", "epoch", "split", "loss", "lr", "tokens_per_s", "grad_norm"} <= set(
        train_rows[0]
    )
    assert [m["step"] for m in val_rows] == [0, 3, 6]  # step 0: before any update
    assert {"loss", "perplexity", "token_accuracy"} <= set(val_rows[0])
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]


def test_final_adapter_loads_in_peft_with_the_same_logits(tmp_path, recipe_file, tiny_model):
    run = train(load_recipe(recipe_file, ["train.final=last"]), out=tmp_path / "run")
    ids = torch.tensor([[1, 5, 9, 20, 33, 2]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    base_logits = base(ids).logits
    peft_model = PeftModel.from_pretrained(base, str(run / "final")).eval()
    ours = load_for_inference(run).model
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, ours(ids).logits, atol=1e-6)
        assert not torch.allclose(peft_model(ids).logits, base_logits, atol=1e-3)


def test_full_fine_tuning_writes_a_hugging_face_model(tmp_path, recipe_file, tiny_model):
    run = train(load_recipe(recipe_file, ["method.name=full", "train.lr=1e-3"]), out=tmp_path / "r")
    files = {p.name for p in (run / "final").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["trainable_params"] == manifest["total_params"]
    tuned = AutoModelForCausalLM.from_pretrained(run / "final")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.equal(
        tuned.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight
    )


def test_gradient_accumulation_equals_one_big_batch(tmp_path, recipe_file):
    common = ["method.lora_dropout=0", "train.eval_every=100"]
    one = train(load_recipe(recipe_file, common), out=tmp_path / "one")
    accumulated = train(
        load_recipe(recipe_file, [*common, "train.grad_accum=4"]), out=tmp_path / "acc"
    )
    a, b = losses(one), losses(accumulated)
    assert a.keys() == b.keys()
    assert all(abs(a[s] - b[s]) < 1e-5 for s in a), (a, b)


def test_resume_after_sigkill_continues_the_same_curve(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(64))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        train={
            "max_steps": 300,
            "batch_size": 8,
            "lr": 1e-3,
            "eval_every": 10,
            "save_every": 10,
            "keep_checkpoints": 2,
        },
    )
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "migaki", "train", str(recipe), "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and max(losses(killed) or [0]) < 24:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("step-*"))
    assert checkpoints and max(checkpoints) >= 20

    resumed = run_cli_process("train", recipe, "--out", killed, "--resume", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {killed / 'checkpoints'}/step-{max(checkpoints)}" in resumed.stderr
    straight = train(load_recipe(recipe), out=tmp_path / "straight")
    after, reference = losses(killed), losses(straight)
    assert sorted(after) == list(range(1, 301))  # no step logged twice, none missing
    assert all(abs(after[s] - reference[s]) < 1e-4 for s in range(31, 301))
    val_after, val_reference = losses(killed, "val"), losses(straight, "val")
    assert all(abs(val_after[s] - val_reference[s]) < 1e-4 for s in val_reference)


def test_resume_refuses_a_changed_recipe_unless_forced(tmp_path, recipe_file, capsys):
    out = str(tmp_path / "run")
    assert main(["train", str(recipe_file), "--out", out]) == 0
    assert main(["train", str(recipe_file), "--out", out]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["train", str(recipe_file), "--out", out, "--resume", "train.lr=0.1"]) == 2
    assert "recipe differs" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                str(recipe_file),
                "--out",
                out,
                "--resume",
                "--force",
                "train.lr=0.1",
                "train.max_steps=8",
            ]
        )
        == 0
    )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tmp_path, recipe_file, capsys, monkeypatch
):
    import migaki.objectives as objectives

    calls = {"n": 0}
    real_loss = objectives.causal_lm_loss

    def diverging_loss(model, batch):
        calls["n"] += torch.is_grad_enabled()  # count training steps, not validation batches
        parts = real_loss(model, batch)
        if calls["n"] == 3 and torch.is_grad_enabled():  # the third training step
            parts.loss_sum = parts.loss_sum * float("nan")
        return parts

    monkeypatch.setattr(objectives, "causal_lm_loss", diverging_loss)
    run = tmp_path / "run"
    code = main(
        ["train", str(recipe_file), "--out", str(run), "train.eval_every=100", "train.save_every=2"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "training loss became nan at step 3" in err and "Lower train.lr" in err
    assert f"last good checkpoint is {run / 'checkpoints' / 'step-2'}" in err
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, recipe_file):
    run = train(
        load_recipe(
            recipe_file,
            [
                "train.max_steps=30",
                "train.eval_every=2",
                "train.early_stopping.patience=2",
                "train.early_stopping.min_delta=100",
            ],
        ),
        out=tmp_path / "run",
    )
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "early_stopped"
    assert manifest["steps"] == 6 and manifest["best_step"] == 2 and manifest["final_step"] == 2
    assert (run / "checkpoints" / "step-2").is_dir()
    assert any(m.get("event") == "early_stop" for m in read_metrics(run))


def test_bf16_autocast_learns_like_fp32(tmp_path, recipe_file):
    common = ["method.lora_dropout=0", "train.max_steps=12", "train.eval_every=100"]
    fp32 = losses(train(load_recipe(recipe_file, common), out=tmp_path / "fp32"))
    bf16 = losses(
        train(load_recipe(recipe_file, [*common, "train.precision=bf16"]), out=tmp_path / "bf16")
    )
    assert bf16[12] < bf16[1] - 0.1
    assert all(abs(fp32[s] - bf16[s]) < 0.05 for s in fp32)


def test_tuned_model_learns_its_answers_and_stops(tmp_path, tiny_model):
    rows = qa_rows(4)
    data = write_jsonl(tmp_path / "qa.jsonl", rows * 8)
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        data={"split": {"val": 0, "test": 0}},
        method={"name": "full"},
        train={
            "max_steps": 120,
            "batch_size": 8,
            "lr": 3e-3,
            "eval_every": 1000,
            "scheduler": "constant",
            "warmup": 0,
        },
    )
    run = train(load_recipe(recipe), out=tmp_path / "run")
    loaded = load_for_inference(run)
    prompts = [r["messages"][:1] for r in rows]
    answers = generate_answers(loaded, prompts, max_new_tokens=40)
    assert [a for a, _ in answers] == [r["messages"][1]["content"] for r in rows]
    assert all(stopped for _, stopped in answers)


def test_tensorboard_tracking_writes_events(tmp_path, recipe_file):
    run = train(load_recipe(recipe_file, ["train.track=[tensorboard]"]), out=tmp_path / "run")
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_packing_changes_speed_not_learning(tmp_path, recipe_file):
    common = ["method.lora_dropout=0", "train.eval_every=3"]
    padded = train(load_recipe(recipe_file, [*common, "data.packing=false"]), out=tmp_path / "pad")
    packed = train(load_recipe(recipe_file, [*common, "data.packing=true"]), out=tmp_path / "pack")
    for split in ("train", "val"):
        a, b = losses(padded, split), losses(packed, split)
        assert a.keys() == b.keys()
        assert all(abs(a[s] - b[s]) < 1e-5 for s in a), (split, a, b)


def test_gradient_checkpointing_changes_memory_not_learning(tmp_path, recipe_file):
    common = ["method.lora_dropout=0", "train.eval_every=100"]
    plain = train(load_recipe(recipe_file, common), out=tmp_path / "plain")
    checkpointed = train(
        load_recipe(recipe_file, [*common, "train.gradient_checkpointing=true"]),
        out=tmp_path / "gc",
    )
    a, b = losses(plain), losses(checkpointed)
    assert a.keys() == b.keys()
    assert all(abs(a[s] - b[s]) < 1e-5 for s in a), (a, b)


def test_compiled_training_learns_like_eager(tmp_path, recipe_file):
    common = ["method.lora_dropout=0", "train.eval_every=100", "train.max_steps=3"]
    eager = losses(train(load_recipe(recipe_file, common), out=tmp_path / "eager"))
    compiled = losses(
        train(load_recipe(recipe_file, [*common, "train.compile=true"]), out=tmp_path / "c")
    )
    assert all(abs(eager[s] - compiled[s]) < 1e-4 for s in eager), (eager, compiled)
