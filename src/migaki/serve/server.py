"""Starting `migaki serve`: the refusals made before anything loads (an address off loopback
without a key, a bad key file), the models, the generation worker, then uvicorn."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from migaki.errors import UserError
from migaki.serve.app import Limits, ServeState, create_app
from migaki.serve.engine import Engine
from migaki.serve.feedback import FeedbackStore
from migaki.serve.log import RequestLog
from migaki.serve.models import ModelPool, split_target

log = logging.getLogger(__name__)
MIN_KEY_LENGTH = 16


@dataclass
class ServeOptions:
    targets: list[str]
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: dict[str, str] = field(default_factory=dict)  # key -> name
    admin_key: str | None = None
    log_dir: Path | None = Path("serve-log")  # None: no request log, no feedback
    runs_root: Path | None = None
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 16


def read_key_file(path: str | Path) -> dict[str, str]:
    """API keys from a file: one per line, `NAME KEY` or `KEY` alone (named key-N); blank
    lines and # comments skipped. Raises UserError naming FILE:LINE for a short key."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the key file ({exc.strerror})") from None
    keys: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            raise UserError(f"{path}:{number}: write `NAME KEY` or `KEY` on a line")
        name, key = words if len(words) == 2 else [f"key-{number}", words[0]]
        check_key(key, f"{path}:{number}")
        keys[key] = name
    if not keys:
        raise UserError(f"{path}: holds no key")
    return keys


def check_key(key: str, where: str, what: str = "an API key") -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise UserError(f"{where}: {what} needs {MIN_KEY_LENGTH} characters at least")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(options: ServeOptions) -> None:
    """Refusals that need nothing loaded. Raises UserError."""
    if not options.targets:
        raise UserError("give at least one run directory, export folder or model to serve")
    if not is_loopback(options.host) and not options.api_keys:
        raise UserError(
            f"--host {options.host}: serving beyond this machine needs an API key "
            "(--api-key, --api-keys FILE or MIGAKI_API_KEY)"
        )
    if options.admin_key is not None:
        check_key(options.admin_key, "--admin-key")
    if options.runs_root is not None and not options.runs_root.is_dir():
        raise UserError(f"--runs {options.runs_root}: no such folder")
    if not 0 < options.port < 65536:
        raise UserError(f"--port {options.port}: not a port number")
    check_free(options.host, options.port)


def check_free(host: str, port: int) -> None:
    """Refuse a port another program holds before minutes go into loading models (uvicorn
    would find out only then, and exit 1 with a log line)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address here ({exc.strerror})") from None
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise UserError(
                f"--port {port}: cannot listen on {host} ({exc.strerror}); another server may "
                "hold it: choose another --port"
            ) from None


def build_state(options: ServeOptions) -> ServeState:
    """The models loaded, the worker started, the log and feedback store opened."""
    check_options(options)
    pool = ModelPool()
    for text in options.targets:
        name, target = split_target(text)
        pool.add(target, name)
    engine = Engine(options.max_batch)
    engine.start()
    return ServeState(
        pool=pool,
        engine=engine,
        keys=dict(options.api_keys),
        admin_key=options.admin_key,
        limits=options.limits,
        log=RequestLog(options.log_dir) if options.log_dir else None,
        feedback=FeedbackStore(options.log_dir) if options.log_dir else None,
        runs_root=options.runs_root,
    )


def serve(options: ServeOptions, ready=None) -> None:
    """Load, then answer until interrupted. `ready(state)` is called once models are loaded."""
    state = build_state(options)
    if ready is not None:
        ready(state)
    answer_until_stopped(create_app(state), options.host, options.port, state.engine)


def answer_until_stopped(app, host: str, port: int, engine: Engine, log_level=None) -> None:
    """uvicorn on `app` until interrupted (Ctrl-C), then the generation worker stopped."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level or os.environ.get("MIGAKI_SERVE_LOG_LEVEL", "warning"),
        timeout_graceful_shutdown=5,
    )
    try:
        uvicorn.Server(config).run()
    finally:
        engine.stop()
