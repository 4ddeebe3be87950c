"""metrics.jsonl (always) and optional trackers such as TensorBoard."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from migaki.errors import UserError


class MetricsLog:
    """Appends one JSON object per event to RUN/metrics.jsonl and mirrors scalars to trackers."""

    def __init__(self, run_dir: Path, track: list[str], enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = _tensorboard(run_dir) if enabled and "tensorboard" in track else None

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
        if self.writer is not None and "split" in record:
            for key, value in record.items():
                if isinstance(value, int | float) and key not in ("step", "epoch", "time"):
                    self.writer.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "train.track: tensorboard is not installed; pip install 'migaki[track]'"
        ) from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
