"""The run directory contract: recipe.yaml, manifest.json, metrics.jsonl, checkpoints/, final/.

The one place that says whether a path is a run, where its final/ is, and reads its recipe
and manifest: every command (train, eval, generate, continual learning, a teacher) asks here."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil
import torch
import yaml

from migaki import integrity
from migaki.config import Recipe, build_recipe
from migaki.errors import UserError

PACKAGES = ("migaki", "torch", "transformers", "peft", "accelerate", "safetensors")


def new_run_dir(name: str, root: Path = Path("runs")) -> Path:
    return root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def save_recipe(recipe: Recipe, run_dir: Path) -> None:
    (run_dir / "recipe.yaml").write_text(recipe_text(recipe), encoding="utf-8")


def recipe_text(recipe: Recipe) -> str:
    """The resolved recipe as YAML, as a run directory keeps it."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True)


def is_run(path: str | Path) -> bool:
    """Whether `path` is a run directory (it has the recipe migaki wrote there)."""
    return (Path(path) / "recipe.yaml").is_file()


def run_of(path: str | Path) -> Path | None:
    """The run directory `path` names: itself, or the run whose final/ it is; None for any
    other path (a model folder, an alias)."""
    path = Path(path).expanduser()
    if is_run(path):
        return path
    if path.name == "final" and is_run(path.parent):
        return path.parent
    return None


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """The run's manifest.json, or {} for a run that has none yet."""
    path = Path(run_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The resolved recipe a run was trained with."""
    if not is_run(run_dir):
        raise UserError(f"{run_dir}: not a migaki run directory (no recipe.yaml)")
    path = Path(run_dir) / "recipe.yaml"
    return build_recipe(yaml.safe_load(path.read_text(encoding="utf-8")), source=str(path))


def final_dir(run_dir: str | Path, verify: bool = False) -> Path:
    """A run's final/ folder, checked against its files.json (sizes, and SHA-256 where cheap
    or with `verify`). A run without one (training not finished) or with a damaged one is
    the user's error, naming the file."""
    final = Path(run_dir) / "final"
    if not final.is_dir():
        raise UserError(f"{run_dir}: the run has no final/ yet (did training finish?)")
    damaged = integrity.problems(final, verify)
    if damaged:
        raise UserError(
            f"{final}: {'; '.join(damaged)}: the run's result is damaged; copy it again or "
            "train the run again"
        )
    return final


def update_manifest(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge fields into manifest.json (written atomically) and return the whole manifest."""
    path = run_dir / "manifest.json"
    manifest = read_manifest(run_dir)
    manifest.update(fields)
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    os.replace(staging, path)
    return manifest


def environment() -> dict[str, Any]:
    """Versions, machine and git commit, for the manifest."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    return {
        "versions": versions,
        "machine": machine,
        "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
        "process": this_process(),
    }


def this_process() -> dict[str, Any]:
    """Who is writing the run: host, pid and the pid's start time (pids are reused, so the
    start time tells this process from a later one with the same number)."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": round(psutil.Process().create_time(), 2),
    }


def process_alive(manifest: dict[str, Any]) -> bool | None:
    """Whether the process a manifest names still runs: True or False on this host, None
    when it ran on another host (or the manifest names none) and cannot be told from here."""
    process = manifest.get("process") or {}
    if process.get("host") != socket.gethostname() or "pid" not in process:
        return None
    try:
        started = psutil.Process(process["pid"]).create_time()
    except psutil.Error:  # gone, or not ours to see
        return False
    return abs(started - process.get("started", started)) < 1.0


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU allocations on CUDA, else resident memory."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None
