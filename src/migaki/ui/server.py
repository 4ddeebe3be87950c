"""Starting `migaki ui`: the refusals made before anything starts (an address off loopback
without a token, folders that are not there, a port taken), then uvicorn."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from migaki.errors import UserError
from migaki.serve.server import answer_until_stopped, check_free, check_key, is_loopback
from migaki.ui.app import UiOptions, UiState, build_state, create_app

LANGUAGES = ("en", "ja")


def read_token(path: str | Path) -> str:
    """The token in a file (its first line), checked for length. Raises UserError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the token file ({exc.strerror})") from None
    token = text.splitlines()[0].strip() if text else ""
    check_key(token, str(path), "a token")
    return token


def check_options(options: UiOptions) -> None:
    """Refusals that need nothing started. Raises UserError."""
    if not is_loopback(options.host) and not options.token:
        raise UserError(
            f"--host {options.host}: a UI reachable beyond this machine needs a token "
            "(--token-file FILE or MIGAKI_UI_TOKEN)"
        )
    if options.token:
        check_key(options.token, "the token", "a token")
    if options.runs.exists() and not options.runs.is_dir():
        raise UserError(f"--runs {options.runs}: not a folder")
    for name, folder in options.data.items():
        if not folder.is_dir():
            raise UserError(f"--data {folder}: no such folder")
        if name.startswith(".") or "/" in name:
            raise UserError(f"--data {folder}: its folder name cannot name a data root")
    if options.lang not in LANGUAGES:
        raise UserError(f"--lang {options.lang}: one of {', '.join(LANGUAGES)}")
    if not 0 < options.port < 65536:
        raise UserError(f"--port {options.port}: not a port number")
    check_free(options.host, options.port)


def data_roots(folders: list[str]) -> dict[str, Path]:
    """--data folders by the name the page shows (the folder's own name, made unique)."""
    roots: dict[str, Path] = {}
    for folder in folders:
        path = Path(folder).expanduser()
        name = path.resolve().name or "data"
        unique, number = name, 2
        while unique in roots:
            unique, number = f"{name}-{number}", number + 1
        roots[unique] = path
    return roots


def run_ui(options: UiOptions, ready: Callable[[UiState], None] | None = None) -> None:
    """Check, start, answer until interrupted; runs this server started go on after it ends."""
    check_options(options)
    options.runs.mkdir(parents=True, exist_ok=True)
    state = build_state(options)
    if ready is not None:
        ready(state)
    log_level = os.environ.get("MIGAKI_UI_LOG_LEVEL", "warning")
    app = create_app(state)
    answer_until_stopped(app, options.host, options.port, state.serve.engine, log_level)
