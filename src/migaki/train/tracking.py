"""metrics.jsonl (always) and the trackers of `train.track`, through accelerate's trackers.

Every record goes to RUN/metrics.jsonl; the numbers of the training and validation records
(`train/loss`, `val/perplexity`, ...) also go to each tracker, at the record's step:

- tensorboard: event files in RUN/tensorboard (the recipe as hyper-parameters beside them);
- mlflow: the tracking store of MLFLOW_TRACKING_URI when the user set one, else a local
  SQLite store, RUN/mlflow.db (mlflow 3 refuses a plain folder store), artifacts in
  RUN/mlruns; the experiment is the recipe's name, the MLflow run the run directory's;
- wandb: RUN/wandb, offline unless WANDB_MODE is set or the user has logged in (an API key
  in WANDB_API_KEY or ~/.netrc); `wandb sync RUN/wandb/offline-run-*` uploads it later.

Only the main process writes (accelerate's trackers start and log on the main process).
"""

from __future__ import annotations

import contextlib
import json
import netrc
import os
import time
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker
from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

from migaki.errors import UserError

INSTALLED = {
    "tensorboard": is_tensorboard_available,
    "mlflow": is_mlflow_available,
    "wandb": is_wandb_available,
}
NOT_SCALARS = ("step", "epoch", "time")  # a record's coordinates, not figures to plot


def make_trackers(track: list[str], run_dir: Path, project: str) -> list[GeneralTracker] | None:
    """accelerate tracker objects for `train.track`, each writing under `run_dir` (nothing
    starts or is written yet); `project`: the experiment (MLflow) or project (wandb) name.
    None when there are none (accelerate warns about an empty list). Raises UserError when a
    tracker's package is not installed, before anything loads."""
    for name in track:
        if not INSTALLED[name]():
            raise UserError(f"train.track: {name} is not installed; pip install 'migaki[track]'")
    made: list[GeneralTracker] = []
    if "tensorboard" in track:
        # the run name is the folder under the logging dir: RUN/tensorboard
        made.append(TensorBoardTracker("tensorboard", str(run_dir)))
    if "mlflow" in track:
        # artifacts beside the local store; a user's own server keeps its own artifact root
        local = None if os.environ.get("MLFLOW_TRACKING_URI") else str(run_dir / "mlruns")
        made.append(MLflowTracker(project, logging_dir=local, run_name=run_dir.name))
    if "wandb" in track:
        made.append(WandBTracker(project, **_wandb_options(run_dir)))
    return made or None


def _wandb_options(run_dir: Path) -> dict[str, Any]:
    options: dict[str, Any] = {"dir": str(run_dir), "name": run_dir.name}
    if not os.environ.get("WANDB_MODE") and not _wandb_logged_in():
        options["mode"] = "offline"  # never ask for a login in the middle of a run
    return options


def _wandb_logged_in() -> bool:
    """Whether wandb has an API key: WANDB_API_KEY, or the ~/.netrc entry `wandb login`
    writes (for WANDB_BASE_URL's host when set)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host.split("/")[0]) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class MetricsLog:
    """Appends one JSON object per event to RUN/metrics.jsonl and mirrors the numbers of
    training and validation records to the accelerator's trackers (`make_trackers`)."""

    def __init__(self, run_dir: Path, accelerator: Any) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.run_dir = run_dir
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        self.started = False

    def start(self, project: str, recipe: dict[str, Any]) -> None:
        """Start the trackers (once the run directory exists) with the recipe as their
        hyper-parameters, flattened to dotted keys."""
        trackers = self.accelerator.log_with
        if not self.enabled or not trackers:
            return
        if any(t.name == "mlflow" for t in trackers):
            import mlflow  # only runs that track with mlflow pay for importing it

            # Set every time, the user's too: the last run's store stays set in this process
            # and would win over the environment variable.
            local = f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
            mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or local)
        self.accelerator.init_trackers(project, config=flat_config(recipe))
        self.started = True

    def truncate_after(self, step: int) -> None:
        """Forget what a killed run logged past the checkpoint it resumes from."""
        if not self.enabled or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def write(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.started and "split" in record:
            scalars = {
                f"{record['split']}/{key}": value
                for key, value in record.items()
                if isinstance(value, int | float) and key not in NOT_SCALARS
            }
            self.accelerator.log(scalars, step=record["step"])

    def close(self) -> None:
        """Finish the trackers (flush TensorBoard, end the MLflow and wandb runs). Not
        accelerate's end_training: that also destroys the process group, which the run still
        needs to wait for its processes after final/ is written."""
        if self.started:
            for tracker in self.accelerator.trackers:
                tracker.finish()
            self.accelerator.trackers.clear()
            self.started = False


def flat_config(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}; lists become JSON text, as trackers
    take only numbers, text, booleans and None as hyper-parameters."""
    flat: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            flat |= flat_config(value, f"{prefix}{key}.")
        else:
            plain = value is None or isinstance(value, int | float | str | bool)
            flat[f"{prefix}{key}"] = value if plain else json.dumps(value, ensure_ascii=False)
    return flat


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of the run's metrics.jsonl ([] without one). A run in progress may be
    read mid-write (by a sweep, an estimate or a test following it): a last line that is not
    whole yet is left out, as its bytes may even end inside a character."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    *lines, tail = path.read_bytes().split(b"\n")
    records = [json.loads(line) for line in lines if line.strip()]
    # the tail is empty when the file ends with its newline
    with contextlib.suppress(ValueError):
        records.append(json.loads(tail))
    return records
