"""`migaki serve`: its options. The handler is `commands.serve`."""

from __future__ import annotations

import argparse

from migaki.cli_parsing import add_command

EXAMPLE = (
    "migaki serve runs/faq\n"
    "  migaki serve runs/faq runs/faq-v2 faq-base=gemma3-270m --port 8000\n"
    "  MIGAKI_API_KEY=$(openssl rand -hex 24) migaki serve runs/faq --host 0.0.0.0\n"
    "  then: OpenAI(base_url='http://127.0.0.1:8000/v1', api_key=KEY)"
)


def add_serve_command(commands) -> None:
    serve = add_command(
        commands,
        "serve",
        "Serve runs, exports or models through an OpenAI-compatible API (chat and "
        "completions, streaming), with a request log and feedback for retraining.",
        EXAMPLE,
    )
    serve.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="run directory, hf export folder or bundled alias; NAME=TARGET names it (default: "
        "its folder name). Adapter runs on one base share it in memory",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1 only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    keys = serve.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key",
        help="the Bearer key every request but /health must carry (or MIGAKI_API_KEY; "
        "required off loopback)",
    )
    keys.add_argument("--api-keys", metavar="FILE", help="keys, one per line: `NAME KEY` or `KEY`")
    serve.add_argument(
        "--admin-key",
        help="key (X-Admin-Key header) for POST/DELETE /v1/admin/adapters; or MIGAKI_ADMIN_KEY",
    )
    serve.add_argument(
        "--runs",
        metavar="DIR",
        help="folder whose runs the admin routes may load by name (default: none)",
    )
    serve.add_argument(
        "--log-dir",
        default="serve-log",
        help="request log (requests.jsonl, personal data masked) and feedback.sqlite "
        "(default serve-log)",
    )
    serve.add_argument(
        "--no-log", action="store_true", help="no request log (and so no feedback route)"
    )
    serve.add_argument("--max-tokens", type=_positive, default=1024, help="most a request may ask")
    serve.add_argument(
        "--max-input-tokens", type=_positive, default=4096, help="longest prompt, in tokens"
    )
    serve.add_argument(
        "--max-body", type=_positive, default=1 << 20, help="largest request body, in bytes"
    )
    serve.add_argument(
        "--concurrency", type=_positive, default=8, help="requests in flight per key (then 429)"
    )
    serve.add_argument(
        "--max-batch", type=_positive, default=16, help="rows generated together (default 16)"
    )
    serve.set_defaults(handler="serve")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: give 1 or more")
    return value
