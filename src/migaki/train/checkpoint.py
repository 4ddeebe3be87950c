"""Checkpoints for exact resume: trainable weights, optimizer, RNG states and the loop state.

Each checkpoint is written to a temporary folder and renamed into place, so a run killed at
any moment (even by SIGKILL) leaves only whole checkpoints behind; its files.json (sizes and
SHA-256, written last) lets a resume find a checkpoint damaged since and fall back to an older
one. The data position needs no file of its own: batches are a pure function of (seed, step).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from migaki import integrity
from migaki.errors import UserError
from migaki.methods import load_trainable, save_trainable
from migaki.train.averaging import WeightAverage

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
REQUIRED = ("trainable.safetensors", "optimizer.pt", "rng.safetensors", STATE_FILE)


@dataclass
class LoopState:
    """Everything the loop tracks between steps; saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    val_history: list[tuple[int, float, float]] = field(default_factory=list)  # step, val, train
    recipe_fingerprint: str = ""
    data_hashes: dict[str, str] = field(default_factory=dict)
    planned_steps: int | None = None  # the step count train.max_minutes chose, if it did
    elapsed_s: float = 0.0  # wall time of the run up to this state, earlier processes included


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step}"


def rng_snapshot() -> dict:
    """This process's random states (torch, CUDA, Python, NumPy); gathered from every process
    before a checkpoint, since each one draws its own dropout masks."""
    return {"torch": _torch_rng(), "python": _python_rng(), "numpy": _numpy_rng()}


def save_checkpoint(
    run_dir: Path,
    model,
    optimizer,
    state: LoopState,
    rngs: list[dict] | None = None,
    average: WeightAverage | None = None,
) -> Path:
    """Write checkpoints/step-N atomically and return it. `rngs` holds one `rng_snapshot()`
    per process, in rank order (this process's alone when omitted); `average` (train.ema)
    is saved beside the weights."""
    rngs = rngs or [rng_snapshot()]
    final = checkpoint_dir(run_dir, state.step)
    staging = final.with_name(f".tmp-{final.name}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    save_trainable(model, str(staging / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), staging / "optimizer.pt")
    if average is not None:
        average.save(staging)
    tensors = {f"rank{r}.{k}": v for r, rng in enumerate(rngs) for k, v in rng["torch"].items()}
    save_file(tensors, str(staging / "rng.safetensors"))
    payload = {
        "loop": asdict(state),
        "python_rng": [rng["python"] for rng in rngs],
        "numpy_rng": [rng["numpy"] for rng in rngs],
    }
    (staging / STATE_FILE).write_text(json.dumps(payload))
    _fsync_dir(staging)
    integrity.write_manifest(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    return max(_complete(run_dir), key=_step_of, default=None)


def resumable_checkpoint(run_dir: Path, verify: bool = False) -> Path | None:
    """The newest checkpoint whose files are intact (see `integrity.problems`), or None. Each
    newer one that is damaged is named with what is wrong, and the one used is said."""
    folders = run_dir / "checkpoints"
    candidates = (
        sorted(folders.glob("step-*"), key=_step_of, reverse=True) if folders.is_dir() else []
    )
    skipped = []
    for checkpoint in candidates:
        found = integrity.problems(checkpoint, verify, REQUIRED) or _unreadable_state(checkpoint)
        if not found:
            for name, why in skipped:
                log.warning("%s: %s; resuming from %s", name, why, checkpoint.name)
            return checkpoint
        skipped.append((f"checkpoints/{checkpoint.name}", "; ".join(found)))
    for name, why in skipped:
        log.warning("%s: %s", name, why)
    return None


def read_state(checkpoint: Path) -> LoopState:
    loop = json.loads((checkpoint / STATE_FILE).read_text())["loop"]
    loop["val_history"] = [tuple(item) for item in loop["val_history"]]
    return LoopState(**loop)


def _unreadable_state(checkpoint: Path) -> list[str]:
    try:
        read_state(checkpoint)
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{STATE_FILE} unreadable"]
    return []


def _complete(run_dir: Path) -> list[Path]:
    folder = run_dir / "checkpoints"
    return (
        [p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()] if folder.is_dir() else []
    )


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("-")[1])
    except (IndexError, ValueError):
        return -1


def load_checkpoint(
    checkpoint: Path, model, optimizer, rank: int = 0, average: WeightAverage | None = None
) -> LoopState:
    """Restore weights, optimizer, the weight average and this process's RNG states; return
    the loop state to continue from. Raises UserError naming the file a damaged checkpoint
    fails in (one written before file manifests, or damaged beyond what sizes show)."""
    try:
        return _load_checkpoint(checkpoint, model, optimizer, rank, average)
    except (SafetensorError, OSError, RuntimeError, ValueError, KeyError, EOFError) as exc:
        raise UserError(
            f"{checkpoint}: cannot be loaded ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); delete it to resume from "
            "an older checkpoint"
        ) from None


def _load_checkpoint(
    checkpoint: Path, model, optimizer, rank: int, average: WeightAverage | None
) -> LoopState:
    load_trainable(model, str(checkpoint / "trainable.safetensors"))
    if average is not None and not average.load(checkpoint):
        average.reset()
        log.warning(
            "%s holds no weight average (train.ema was off): the average starts from its weights",
            checkpoint.name,
        )
    # weights_only: the optimizer file holds tensors and numbers only; never unpickle objects.
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    payload = json.loads((checkpoint / STATE_FILE).read_text())
    saved = len(payload["python_rng"])
    if rank >= saved:
        raise UserError(
            f"{checkpoint} was written by {saved} processes; resume with at most that many"
        )
    prefix = f"rank{rank}."
    tensors = load_file(str(checkpoint / "rng.safetensors"))
    torch_states = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    _restore_rng(torch_states, payload["python_rng"][rank], payload["numpy_rng"][rank])
    return read_state(checkpoint)


def prune_checkpoints(run_dir: Path, keep: int, best_step: int | None) -> None:
    """Keep the `keep` newest checkpoints and the best one; remove the rest."""
    done = sorted(_complete(run_dir), key=_step_of)
    for path in done[:-keep]:
        if best_step is None or path.name != f"step-{best_step}":
            shutil.rmtree(path, ignore_errors=True)


def _torch_rng() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            states[f"cuda{index}"] = state
    return states


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": position, "gauss": [has_gauss, cached]}


def _restore_rng(torch_states: dict[str, torch.Tensor], python: list, state: dict) -> None:
    torch.set_rng_state(torch_states["cpu"])
    cuda = [torch_states[k] for k in sorted(torch_states) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = python
    random.setstate((version, tuple(internal), gauss))
    keys = np.array(state["keys"], dtype=np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], *state["gauss"]))


def _fsync_dir(path: Path) -> None:
    for item in path.iterdir():
        with open(item, "rb") as handle:
            os.fsync(handle.fileno())
