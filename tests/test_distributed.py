"""Two processes learn what one does: `train.batch_size` is the global batch."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import qa_rows, run_cli_process, write_jsonl, write_recipe

from migaki.config import load_recipe
from migaki.train import train
from migaki.train.tracking import read_metrics


def losses(run_dir, split="train"):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if m.get("split") == split}


ROOT = Path(__file__).resolve().parent.parent
LAUNCHERS = {
    "torchrun": [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
    ],
    "accelerate": [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        str(ROOT / "examples" / "accelerate" / "cpu-2proc.yaml"),
    ],
}


def launch(launcher: str, recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """`migaki train` in 2 CPU processes through `launcher`."""
    return run_cli_process(
        "train",
        recipe,
        "--out",
        out,
        *extra,
        launcher=LAUNCHERS[launcher],
        env={"OMP_NUM_THREADS": "1"},
        timeout=300,
    )


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_follow_the_single_process_loss_curve(tmp_path, tiny_model, launcher):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(60))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        method={"lora_dropout": 0.0},
        # validation is of the weight average (train.ema), which every process keeps alike
        train={
            "max_steps": 12,
            "batch_size": 8,
            "grad_accum": 2,
            "eval_every": 6,
            "lr": 5e-3,
            "ema": 0.7,
        },
    )
    single = train(load_recipe(recipe), out=tmp_path / "one")
    result = launch(launcher, recipe, tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 processes train together on cpu (backend gloo)" in result.stderr
    for split in ("train", "val"):
        one, two = losses(single, split), losses(tmp_path / "two", split)
        assert one.keys() == two.keys() and one
        assert all(abs(one[s] - two[s]) < 1e-4 for s in one), (split, one, two)
    assert (tmp_path / "two" / "final" / "adapter_model.safetensors").is_file()


def test_batch_that_does_not_split_across_processes_is_refused(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(20))
    recipe = write_recipe(
        tmp_path / "r.yaml", tiny_model, data, train={"batch_size": 6, "grad_accum": 2}
    )
    result = launch("torchrun", recipe, tmp_path / "two")
    assert result.returncode != 0
    assert "must be a multiple of train.grad_accum x processes (2 x 2)" in result.stderr


def test_two_process_resume_restores_every_process_dropout_stream(tmp_path, tiny_model):
    """Each process draws its own dropout masks; a resumed run must give each its own state
    back, or the curve after the resume drifts from the uninterrupted one."""
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(60))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        method={"lora_dropout": 0.3},
        train={
            "max_steps": 12,
            "batch_size": 8,
            "eval_every": 6,
            "keep_checkpoints": 4,
            "lr": 5e-3,
        },
    )
    whole = tmp_path / "whole"
    assert launch("torchrun", recipe, whole).returncode == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step-12")
    result = launch("torchrun", recipe, resumed, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resum" in result.stderr
    expected, got = losses(whole), losses(resumed)
    assert sorted(got) == list(range(1, 13))
    assert all(abs(expected[s] - got[s]) < 1e-6 for s in range(7, 13)), (expected, got)


def test_uneven_validation_shares_do_not_hang(tmp_path, tiny_model):
    """One validation row for two processes: one of them validates nothing. The wrapped
    model's forward would wait for the other process in a collective and never return."""
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(24))
    val = write_jsonl(tmp_path / "val.jsonl", qa_rows(1))
    recipe = write_recipe(
        tmp_path / "r.yaml",
        tiny_model,
        data,
        data={"val": str(val), "split": {"val": 0.0, "test": 0.0}},
        train={"max_steps": 4, "batch_size": 4, "eval_every": 2},
    )
    result = launch("torchrun", recipe, tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert [m["step"] for m in read_metrics(tmp_path / "two") if m.get("split") == "val"] == [
        0,
        2,
        4,
    ]
