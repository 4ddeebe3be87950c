"""Damaged checkpoints and final/ folders are found and named, resume falls back to the newest
intact checkpoint, and SIGINT/SIGTERM end a run with a checkpoint and a line saying how to go
on."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import qa_rows, run_cli, run_cli_process, write_jsonl, write_recipe

from migaki import integrity
from migaki.config import load_recipe
from migaki.train import train
from migaki.train.tracking import read_metrics


def losses(run_dir, split="train"):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir) if m.get("split") == split}


@pytest.fixture
def short_recipe(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(48))
    train_cfg = {"max_steps": 8, "eval_every": 2, "save_every": 2, "keep_checkpoints": 4}
    return write_recipe(tmp_path / "r.yaml", tiny_model, data, train=train_cfg)


@pytest.fixture
def straight(tmp_path, short_recipe):
    """The uninterrupted run every resumed one is compared with."""
    return train(load_recipe(short_recipe), out=tmp_path / "straight")


def cut_to_steps(run_dir, last_step: int) -> None:
    """Make `run_dir` look like a run killed after checkpoint `last_step`: no final/, no
    later checkpoints, metrics after that step gone."""
    import shutil

    shutil.rmtree(run_dir / "final")
    for checkpoint in (run_dir / "checkpoints").glob("step-*"):
        if int(checkpoint.name.split("-")[1]) > last_step:
            shutil.rmtree(checkpoint)
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def halve(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_every_checkpoint_and_final_carry_a_file_manifest(straight):
    for folder in [*sorted((straight / "checkpoints").glob("step-*")), straight / "final"]:
        listed = json.loads((folder / integrity.FILES).read_text())["files"]
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert set(listed) == on_disk - {integrity.FILES}
        assert integrity.problems(folder, verify=True) == []


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt missing"),
        (lambda c: halve(c / "trainable.safetensors"), "trainable.safetensors has"),
        (lambda c: (c / "rng.safetensors").write_bytes(b"x" * 16), "rng.safetensors has"),
    ],
)
def test_resume_skips_a_damaged_newest_checkpoint_and_follows_the_curve(
    tmp_path, short_recipe, straight, capsys, caplog, damage, why
):
    run = tmp_path / "run"
    train(load_recipe(short_recipe), out=run)
    cut_to_steps(run, 6)
    damage(run / "checkpoints" / "step-6")
    code, _, err = run_cli(capsys, "train", short_recipe, "--out", run, "--resume")
    assert code == 0, err
    assert f"checkpoints/step-6: {why}" in caplog.text
    assert "resuming from step-4" in caplog.text
    after, reference = losses(run), losses(straight)
    assert sorted(after) == list(range(1, 9))
    assert all(abs(after[s] - reference[s]) < 1e-4 for s in range(5, 9))


def test_resume_refuses_only_when_no_checkpoint_is_intact(tmp_path, short_recipe, capsys):
    run = tmp_path / "run"
    train(load_recipe(short_recipe), out=run)
    cut_to_steps(run, 8)
    for checkpoint in (run / "checkpoints").glob("step-*"):
        halve(checkpoint / "trainable.safetensors")
    code, _, err = run_cli(capsys, "train", short_recipe, "--out", run, "--resume")
    assert code == 2
    assert "nothing to resume (every checkpoint is damaged" in err
    assert "Traceback" not in err


def test_damaged_bytes_anywhere_in_checkpoints_give_a_clean_resume_or_message(
    tmp_path, short_recipe, capsys
):
    run = tmp_path / "run"
    train(load_recipe(short_recipe), out=run)
    cut_to_steps(run, 8)
    pristine = tmp_path / "pristine"
    import shutil

    shutil.copytree(run, pristine)
    rng = random.Random(0)
    for case in range(6):
        shutil.rmtree(run)
        shutil.copytree(pristine, run)
        files = sorted(p for p in (run / "checkpoints").rglob("*") if p.is_file())
        for path in rng.sample(files, rng.randint(1, 4)):
            data = bytearray(path.read_bytes())
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
        code, _, err = run_cli(capsys, "train", short_recipe, "--out", run, "--resume")
        assert code in (0, 2), (case, err)
        assert "Traceback" not in err, (case, err)
        if code == 2:
            assert len(err.strip().splitlines()[-1]) > 0 and err.strip().endswith(
                "train again without --resume"
            ), err


@pytest.mark.parametrize("command", ["generate", "eval", "chat"])
def test_a_damaged_final_is_named_in_one_line(tmp_path, straight, capsys, command):
    halve(straight / "final" / "adapter_model.safetensors")
    args = {"generate": ["--prompt", "hi"], "eval": ["--no-generate"], "chat": []}[command]
    code, _, err = run_cli(capsys, command, straight, *args)
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: {straight / 'final'}: adapter_model.safetensors has")


def test_a_final_without_manifest_that_fails_to_load_is_named(tmp_path, straight, capsys):
    (straight / "final" / integrity.FILES).unlink()  # as runs written before manifests
    halve(straight / "final" / "adapter_model.safetensors")
    code, _, err = run_cli(capsys, "generate", straight, "--prompt", "hi")
    assert code == 2 and "Traceback" not in err
    assert f"{straight / 'final'}: cannot be loaded" in err


def start_training(recipe, out, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "migaki", "train", str(recipe), "--out", str(out)],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(run, step: int, process, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and max(losses(run) or [0]) < step:
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)


@pytest.mark.parametrize(("name", "code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_signal_stops_cleanly_and_resume_gives_the_same_curve(tmp_path, tiny_model, name, code):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(64))
    settings = {"max_steps": 200, "batch_size": 8, "lr": 1e-3, "eval_every": 50}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data, train=settings)
    run = tmp_path / "run"
    process = start_training(recipe, run)
    wait_for_step(run, 12, process)
    process.send_signal(getattr(signal, name))
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted"
    stopped_at = manifest["interrupted"]["step"]
    assert manifest["interrupted"]["signal"] == name and 12 <= stopped_at < 200
    assert (run / "checkpoints" / f"step-{stopped_at}").is_dir()
    assert err.strip().splitlines()[-1] == (
        f"interrupted ({name}) at step {stopped_at}; the newest checkpoint is "
        f"{run / 'checkpoints'}/step-{stopped_at}; continue with: migaki train {recipe} "
        f"--out {run} --resume"
    )
    resumed = run_cli_process("train", recipe, "--out", run, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    reference = losses(train(load_recipe(recipe), out=tmp_path / "straight"))
    after = losses(run)
    assert sorted(after) == list(range(1, 201))
    assert all(abs(after[s] - reference[s]) < 1e-4 for s in range(stopped_at + 1, 201))
    assert json.loads((run / "manifest.json").read_text())["status"] == "completed"


def test_a_signal_before_the_first_step_says_nothing_is_resumable(
    tmp_path, short_recipe, capsys, monkeypatch
):
    import migaki.train.session as session

    real = session._build_model

    def build_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the model loads
        return real(*args, **kwargs)

    monkeypatch.setattr(session, "_build_model", build_then_signal)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", short_recipe, "--out", run)
    assert code == 130
    assert "interrupted (SIGINT) before the first checkpoint: nothing to resume" in err
    assert json.loads((run / "manifest.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_two_processes_stop_together_on_sigterm(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "qa.jsonl", qa_rows(64))
    settings = {"max_steps": 200, "batch_size": 8, "lr": 1e-3, "eval_every": 50}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_model, data, train=settings)
    run = tmp_path / "run"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command = ["--master_port", "29547", "-m", "migaki", "train", str(recipe), "--out", str(run)]
    process = subprocess.Popen(
        [*launcher, *command],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(run, 10, process)
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    _, err = process.communicate(timeout=120)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted", err[-3000:]
    stopped_at = manifest["interrupted"]["step"]
    checkpoint = run / "checkpoints" / f"step-{stopped_at}"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert len(state["python_rng"]) == 2  # both processes took part in the last checkpoint
    assert integrity.problems(checkpoint, verify=True) == []
    assert "continue with: migaki train" in err


def test_verify_hashes_a_final_too_large_to_hash_by_default(straight, capsys, monkeypatch):
    monkeypatch.setattr(integrity, "CHEAP_BYTES", 0)  # every folder counts as large
    weights = straight / "final" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # the same size: only the hash sees it
    weights.write_bytes(bytes(data))
    code, _, _ = run_cli(capsys, "generate", straight, "--prompt", "hi", "--max-new-tokens", "2")
    assert code == 0
    code, _, err = run_cli(capsys, "generate", straight, "--prompt", "hi", "--verify")
    assert code == 2
    assert "adapter_model.safetensors changed since it was written (SHA-256 differs)" in err


def test_an_intact_folder_is_hashed_once_until_a_file_changes(straight, monkeypatch):
    final = straight / "final"
    calls = []
    real = integrity._sha256
    monkeypatch.setattr(integrity, "_sha256", lambda path: calls.append(path) or real(path))
    integrity._HASHED.pop(final.resolve(), None)
    assert integrity.problems(final) == [] and integrity.problems(final, verify=True) == []
    hashed_once = len(calls)
    assert hashed_once == len(json.loads((final / integrity.FILES).read_text())["files"])
    weights = final / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))  # same size, new mtime: hashed again, and found
    assert integrity.problems(final) == [
        "adapter_model.safetensors changed since it was written (SHA-256 differs)"
    ]
    assert len(calls) > hashed_once
