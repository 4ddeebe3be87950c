"""train.track: what a run logs to TensorBoard, MLflow and wandb, read back with each
tracker's own reader and compared with metrics.jsonl."""

import importlib.util
import math

import pytest

from migaki.config import load_recipe
from migaki.errors import UserError
from migaki.train import tracking, train
from migaki.train.tracking import flat_config, read_metrics


def logged(run_dir, split: str, key: str) -> dict[int, float]:
    return {m["step"]: m[key] for m in read_metrics(run_dir) if m.get("split") == split}


def assert_same_curve(read_back: dict[int, float], expected: dict[int, float], rel: float):
    assert sorted(read_back) == sorted(expected)
    for step, value in expected.items():
        assert math.isclose(read_back[step], value, rel_tol=rel), (step, read_back[step], value)


def test_tensorboard_event_files_hold_the_metrics(tmp_path, recipe_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = train(load_recipe(recipe_file, ["train.track=[tensorboard]"]), out=tmp_path / "run")
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for split, key in (("train", "loss"), ("train", "lr"), ("val", "loss"), ("val", "perplexity")):
        scalars = {e.step: e.value for e in events.Scalars(f"{split}/{key}")}
        assert_same_curve(scalars, logged(run, split, key), rel=1e-6)  # stored as float32
    assert "train/step" not in events.Tags()["scalars"]  # coordinates are not figures


def test_mlflow_local_store_holds_the_metrics_and_the_recipe(tmp_path, recipe_file, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = load_recipe(recipe_file, ["train.track=[mlflow]", "name=faq"])
    run = train(recipe, out=tmp_path / "run")
    assert (run / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("faq")
    [mlflow_run] = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.run_name == "run" and mlflow_run.info.status == "FINISHED"
    run_id = mlflow_run.info.run_id
    for split, key in (("train", "loss"), ("train", "grad_norm"), ("val", "loss")):
        history = {m.step: m.value for m in client.get_metric_history(run_id, f"{split}/{key}")}
        assert_same_curve(history, logged(run, split, key), rel=1e-12)
    params = mlflow_run.data.params
    assert float(params["train.lr"]) == 5e-3 and params["method.name"] == "lora"


def test_mlflow_tracking_uri_of_the_user_wins(tmp_path, recipe_file, monkeypatch):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'team.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    recipe = load_recipe(recipe_file, ["train.track=[mlflow]", "train.max_steps=2"])
    run = train(recipe, out=tmp_path / "run")
    assert not (run / "mlflow.db").exists()
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("run")  # train()'s default name
    [mlflow_run] = client.search_runs([experiment.experiment_id])
    losses = client.get_metric_history(mlflow_run.info.run_id, "val/loss")
    assert_same_curve({m.step: m.value for m in losses}, logged(run, "val", "loss"), rel=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_writes_an_offline_run_without_a_login(tmp_path, recipe_file, monkeypatch):
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    recipe = load_recipe(recipe_file, ["train.track=[wandb]", "train.max_steps=2"])
    run = train(recipe, out=tmp_path / "run")
    [offline] = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    assert read_metrics(run)  # metrics.jsonl as always


def test_a_tracker_that_is_not_installed_is_refused_before_the_run(
    tmp_path, recipe_file, monkeypatch
):
    monkeypatch.setitem(tracking.INSTALLED, "mlflow", lambda: False)
    with pytest.raises(UserError) as caught:
        train(load_recipe(recipe_file, ["train.track=[mlflow]"]), out=tmp_path / "run")
    assert str(caught.value) == "train.track: mlflow is not installed; pip install 'migaki[track]'"
    assert not (tmp_path / "run").exists()


def test_the_recipe_becomes_dotted_hyper_parameters():
    recipe = {"train": {"lr": 1e-4, "track": ["mlflow"], "replay": None}, "name": "x"}
    assert flat_config(recipe) == {
        "train.lr": 1e-4,
        "train.track": '["mlflow"]',
        "train.replay": None,
        "name": "x",
    }


def test_metrics_of_a_run_read_mid_write_leave_out_the_unfinished_line(tmp_path):
    whole = '{"step": 1, "split": "train", "loss": 2.5}\n{"step": 2, "split": "train"}\n'
    # the cut falls inside a multi-byte character of a line still being written
    unfinished = '{"step": 3, "split": "train", "event_note": "学習'.encode()[:-1]
    (tmp_path / "metrics.jsonl").write_bytes(whole.encode() + unfinished)
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text(whole + '{"step": 3, "split": "val", "loss": 1.0}')
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3]
    assert read_metrics(tmp_path / "no-run") == []
