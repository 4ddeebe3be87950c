"""`migaki ui`: its options; the server is `migaki.ui`, loaded only when the command runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from migaki.cli_parsing import add_command

EXAMPLE = (
    "migaki ui                                   # runs/ on http://127.0.0.1:7860\n"
    "  migaki ui --runs runs --data data/ --lang ja\n"
    "  MIGAKI_UI_TOKEN=$(openssl rand -hex 24) migaki ui --host 0.0.0.0 --read-only"
)


def add_ui_command(commands) -> None:
    """Register `migaki ui` on the top-level subparsers."""
    ui = add_command(
        commands,
        "ui",
        "A web page for runs: the list with their status, live training curves, eval and "
        "compare tables, runs side by side, a new run from a form (estimate and data doctor "
        "first), stop and resume, exports, and a playground with the base and tuned models "
        "side by side. Assets ship in the package: no network is needed.",
        EXAMPLE,
    )
    ui.add_argument("--runs", default="runs", metavar="DIR", help="folder of runs (default runs)")
    ui.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder whose data files the new-run form may train on (repeat for more); "
        "nothing outside --runs and these is reachable",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1 only)")
    ui.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ui.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the token every request must carry (or MIGAKI_UI_TOKEN; required "
        "off loopback)",
    )
    ui.add_argument(
        "--read-only", action="store_true", help="no starting, stopping, resuming or exporting"
    )
    ui.add_argument("--lang", choices=("en", "ja"), default="en", help="labels' language")
    ui.set_defaults(handler=_ui)


def _ui(args: argparse.Namespace) -> None:
    # Loaded only when the command runs: the server needs FastAPI, torch and transformers,
    # which `migaki --help` and argument errors must not wait for.
    from migaki.ui import server

    token = os.environ.get("MIGAKI_UI_TOKEN")
    if args.token_file:
        token = server.read_token(args.token_file)
    options = server.UiOptions(
        runs=Path(args.runs),
        data=server.data_roots(args.data),
        host=args.host,
        port=args.port,
        token=token or None,
        read_only=args.read_only,
        lang=args.lang,
    )

    def ready(state) -> None:
        print(f"migaki ui on http://{args.host}:{args.port}/ (runs: {args.runs})", flush=True)
        if token:
            print("open /?token=TOKEN once in the browser to sign in", flush=True)

    server.run_ui(options, ready)
