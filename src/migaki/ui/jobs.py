"""The `migaki train`, `migaki train --resume` and `migaki export` processes a `migaki ui`
server starts on the user's behalf, their launch logs, and a clean stop.

Each job is a fresh `python -m migaki ...` process, exactly the command a user would type, so
a run started from the browser is the same run as one started in a terminal: the same run
directory, manifest and checkpoints, and the same SIGINT handling (finish the step, write a
checkpoint, exit 130). The processes run in their own session, so a Ctrl-C that ends the
server does not reach them, and they outlive the server (see `Jobs.close`).

Layout inside the runs folder: `RUNS/NAME` is the run itself (`--out`); the UI keeps the
recipe it was started from in `RUNS/.ui/recipes/NAME.yaml` and the processes' output in
`RUNS/.ui/logs/NAME.log` (a resume and an export append to the same log).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migaki.errors import UserError
from migaki.rundir import is_run, new_run_dir, process_alive, read_manifest

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
EXPORT_FORMATS = ("hf", "gguf", "ollama")  # the choices of `migaki export --format`
READ_ONLY = "this UI was started with --read-only"
TAIL_BYTES = 64 * 1024  # enough for 40 long lines; a log of a long run is never read whole


@dataclass
class Job:
    """One process this server started for the run `name`."""

    name: str
    kind: str  # train, resume or export
    process: subprocess.Popen


def check_name(name: str) -> str:
    """`name` if it can name a run folder inside the runs folder; else UserError."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:
        raise UserError(
            f"run name {name!r}: use letters, digits, '.', '_' and '-' (up to 200, starting "
            "with a letter or digit, no '..')"
        )
    return name


def new_name(recipe: Mapping[str, Any]) -> str:
    """A default run name as `migaki train` makes one, `BASE-YYYYmmdd-HHMMSS`: BASE is the
    recipe's `name`, else the training file's name without its suffixes, else `run`; any
    character a run name cannot hold becomes `-`."""
    data = recipe.get("data") or {}
    train_file = data.get("train") if isinstance(data, Mapping) else None
    base = recipe.get("name") or (Path(str(train_file)).name.split(".")[0] if train_file else "")
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", str(base)).strip("-._")[:150] or "run"
    base = re.sub(r"\.{2,}", ".", base)
    return new_run_dir(base, Path()).name


class Jobs:
    """The processes this server started, by run name (the latest one for each run).

    `read_only`: every method that starts or stops a process raises UserError. Methods are
    safe to call from several threads (the web server answers from a thread pool)."""

    def __init__(self, runs_root: Path, read_only: bool = False) -> None:
        self.runs_root = Path(runs_root)
        self.read_only = read_only
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    # --- starting -----------------------------------------------------------------------

    def start_train(self, recipe_yaml_text: str, name: str) -> str:
        """Write the recipe to `RUNS/.ui/recipes/NAME.yaml` and start `migaki train` on it
        into `RUNS/NAME`; returns `name`. UserError when read-only, for a bad name, or for a
        name a run folder or another job already uses."""
        self._writable()
        check_name(name)
        with self._lock:
            if (self.runs_root / name).exists() or name in self._jobs:
                raise UserError(f"run name {name!r} is already used; choose another name")
            recipe = self._ui_dir("recipes") / f"{name}.yaml"
            recipe.write_text(recipe_yaml_text, encoding="utf-8")
            command = ["train", str(recipe), "--out", str(self.runs_root / name)]
            self._jobs[name] = Job(name, "train", self._launch(name, command))
        return name

    def resume(self, name: str) -> str:
        """Start `migaki train RUN/recipe.yaml --resume --out RUN` (the run's own resolved
        recipe, which its checkpoints' fingerprint matches); returns `name`. UserError when
        read-only, when the run is not a run, or while a process is still working on it."""
        self._writable()
        run = self._run(name)
        with self._lock:
            self._refuse_busy(name, run)
            command = ["train", str(run / "recipe.yaml"), "--resume", "--out", str(run)]
            self._jobs[name] = Job(name, "resume", self._launch(name, command))
        return name

    def export(self, name: str, fmt: str, quant: str | None = None) -> str:
        """Start `migaki export RUN --to RUN/exports/FMT[-QUANT] --format FMT [--quant Q]`;
        returns the export folder relative to the run (`exports/gguf-q4_k_m`). UserError when
        read-only, for an unknown format, a run without final/, an export folder already
        there, or while a process is still working on the run."""
        self._writable()
        run = self._run(name)
        if fmt not in EXPORT_FORMATS:
            raise UserError(f"export format {fmt!r}: one of {', '.join(EXPORT_FORMATS)}")
        folder = f"{fmt}-{quant}" if quant else fmt
        if quant is not None and not re.fullmatch(r"[A-Za-z0-9_]{1,32}", quant):
            raise UserError(f"quantization {quant!r}: a name such as q8_0 or q4_k_m")
        relative = f"exports/{folder}"
        if not (run / "final").is_dir():
            raise UserError(f"run {name}: it has no final/ yet (did training finish?)")
        if (run / relative).exists():
            raise UserError(f"run {name}: {relative} already exists; remove it to export again")
        command = ["export", str(run), "--to", str(run / relative), "--format", fmt]
        command += ["--quant", quant] if quant else []
        with self._lock:
            self._refuse_busy(name, run)
            self._jobs[name] = Job(name, "export", self._launch(name, command))
        return relative

    # --- stopping -----------------------------------------------------------------------

    def stop(self, name: str) -> bool:
        """SIGINT, as Ctrl-C: training finishes its step, writes a checkpoint and exits 130.
        Sent to this server's process for the run if it lives, else to the process the run's
        manifest names when that one runs on this host (a run started in a terminal or by an
        earlier server). False when no process of the run is alive here. UserError when
        read-only."""
        self._writable()
        check_name(name)
        with self._lock:
            job = self._jobs.get(name)
        if job is not None and job.process.poll() is None:
            return _interrupt(job.process.pid)
        manifest = read_manifest(self.runs_root / name)
        if manifest.get("status") == "running" and process_alive(manifest):
            return _interrupt(manifest["process"]["pid"])
        return False

    def close(self) -> None:
        """Stop tracking the processes, leaving them running. A server ends when its terminal
        or its last browser tab goes away, which must not throw away hours of training; the
        runs stay visible through their manifests, and `stop` still reaches them by the pid
        there."""
        with self._lock:
            self._jobs.clear()

    # --- reading ------------------------------------------------------------------------

    def status(self, name: str) -> str | None:
        """What this server's latest process for the run is doing: `starting` (training, the
        run's manifest not yet written by it), `running`, `exporting`, or once it ended
        `exited N` (N its exit status: 0 done, 130 stopped by SIGINT, 2 a user error, 1 a
        bug) or `killed by SIGNAL`; None when this server started none."""
        with self._lock:
            job = self._jobs.get(name)
        if job is None:
            return None
        code = job.process.poll()
        if code is not None and code < 0:  # no handler ran: SIGKILL, or the OOM killer
            return f"killed by {signal.Signals(-code).name}"
        if code is not None:
            return f"exited {code}"
        if job.kind == "export":
            return "exporting"
        return "running" if self._writes_manifest(job) else "starting"

    def launched(self) -> dict[str, str]:
        """Runs whose training process this server started and which have not written their
        manifest yet (a resume counts until it rewrites it): `starting` while the process
        lives, `failed` when a new run's process ended before writing any manifest (a bad
        model or data file: its launch log says why, and the page shows it)."""
        with self._lock:
            jobs = list(self._jobs.values())
        shown = {}
        for job in jobs:
            state = self.status(job.name)
            if state == "starting":
                shown[job.name] = "starting"
            elif job.kind == "train" and not self._writes_manifest(job):  # it ended unwritten
                shown[job.name] = "failed"
        return shown

    def log_tail(self, name: str, lines: int = 40) -> str | None:
        """The last `lines` lines of the run's launch log, the runs folder's real path written
        as `runs`; None when this UI launched nothing for it."""
        check_name(name)
        path = self.runs_root / ".ui" / "logs" / f"{name}.log"
        if not path.is_file():
            return None
        with path.open("rb") as log:
            log.seek(max(0, path.stat().st_size - TAIL_BYTES))
            text = log.read().decode("utf-8", errors="replace")
        # a progress bar rewrites its line with \r: keep what it showed last
        shown = [line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:]]
        return self._without_root("\n".join(shown))

    # --- helpers ------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.read_only:
            raise UserError(READ_ONLY)

    def _run(self, name: str) -> Path:
        run = self.runs_root / check_name(name)
        if not is_run(run):
            raise UserError(f"{name}: not a run in the runs folder (no recipe.yaml)")
        return run

    def _refuse_busy(self, name: str, run: Path) -> None:
        """Two processes writing one run would interleave its checkpoints and metrics."""
        job = self._jobs.get(name)
        if job is not None and job.process.poll() is None:
            raise UserError(f"run {name}: a {job.kind} process is still working on it")
        manifest = read_manifest(run)
        if manifest.get("status") == "running" and process_alive(manifest):
            raise UserError(f"run {name}: it is still training (process {_pid(manifest)})")

    def _ui_dir(self, kind: str) -> Path:
        folder = self.runs_root / ".ui" / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _launch(self, name: str, arguments: list[str]) -> subprocess.Popen:
        """`python -m migaki ARGUMENTS`, its output appended to the run's launch log."""
        log_path = self._ui_dir("logs") / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log follows the run as it goes
        with log_path.open("ab") as log:
            shown = self._without_root(" ".join(["migaki", *arguments]))
            log.write(f"$ {shown}\n".encode())
            log.flush()
            # the child holds its own copy of the log's descriptor; ours closes here
            return subprocess.Popen(
                [sys.executable, "-m", "migaki", *arguments],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # the server's Ctrl-C (its process group) skips it
            )

    def _writes_manifest(self, job: Job) -> bool:
        manifest = read_manifest(self.runs_root / job.name)
        return _pid(manifest) == job.process.pid

    def _without_root(self, text: str) -> str:
        for shown in (str(self.runs_root.resolve()), str(self.runs_root)):
            if shown not in ("", "."):
                text = text.replace(shown, "runs")
        return text


def _pid(manifest: dict[str, Any]) -> int | None:
    return (manifest.get("process") or {}).get("pid")


def _interrupt(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGINT)
    except (ProcessLookupError, PermissionError):  # ended meanwhile, or not ours to signal
        return False
    return True
