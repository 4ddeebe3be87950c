"""The request log of `migaki serve`: one JSON object per answered request, personal data
masked before it is written. `migaki monitor` and `migaki feedback export` read it back.

A log folder holds `requests.jsonl` (this module) and `feedback.sqlite` (serve/feedback.py).
Each line of `requests.jsonl`:

    {"id": "chatcmpl-…", "time": "2026-12-04T12:00:00+00:00", "model": "faq",
     "run": "/abs/runs/faq", "base": "gemma3-270m", "endpoint": "chat.completions",
     "messages": [{"role": "user", "content": "…"}],   # chat; "prompt": "…" for completions
     "response": "…", "finish_reason": "stop", "prompt_tokens": 31, "completion_tokens": 12,
     "latency_s": 0.84, "pii": {"email": 1}}

`pii` counts what was masked (in the request and the response), so the personal-data rate
survives the masking. Keys and request headers are never written.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migaki.data.pii import mask_pii
from migaki.errors import DataError, UserError

REQUESTS = "requests.jsonl"
REQUIRED = ("id", "time", "model", "response")


@dataclass
class LoggedRequest:
    """One answered request as the log holds it (personal data already masked)."""

    id: str
    time: str
    model: str  # the name it was served under (the `model` field of the request)
    run: str | None  # the run directory served, absolute; None for a model that is no run
    base: str | None
    endpoint: str  # "chat.completions" or "completions"
    messages: list[dict[str, str]] | None  # chat requests
    prompt: str | None  # completion requests
    response: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    pii: dict[str, int] = field(default_factory=dict)
    line: int = 0  # where in requests.jsonl, for messages that name it

    @property
    def question(self) -> str:
        """What the user asked: the last user message of a chat, or the completion prompt."""
        if self.messages:
            users = [m.get("content", "") for m in self.messages if m.get("role") == "user"]
            return users[-1] if users else ""
        return self.prompt or ""


class RequestLog:
    """Appends answered requests to `directory/requests.jsonl`, masking personal data first.
    Safe to call from several threads; each line is written and flushed whole."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / REQUESTS
        self._lock = threading.Lock()

    def append(
        self,
        *,
        request_id: str,
        model: str,
        run: str | None,
        base: str | None,
        endpoint: str,
        response: str,
        finish_reason: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float,
        messages: list[dict[str, str]] | None = None,
        prompt: str | None = None,
    ) -> dict[str, Any]:
        """Write one request; returns the record as written (masked)."""
        found: Counter[str] = Counter()
        record: dict[str, Any] = {
            "id": request_id,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "model": model,
            "run": run,
            "base": base,
            "endpoint": endpoint,
        }
        if messages is not None:
            record["messages"] = [
                {**m, "content": _masked(m.get("content", ""), found)} for m in messages
            ]
        if prompt is not None:
            record["prompt"] = _masked(prompt, found)
        record |= {
            "response": _masked(response, found),
            "finish_reason": finish_reason,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "latency_s": round(latency_s, 4),
            "pii": dict(found),
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
        return record


def _masked(text: str, found: Counter[str]) -> str:
    masked, counts = mask_pii(text)
    found.update(counts)
    return masked


def logged_ids(directory: str | Path) -> set[str]:
    """The response ids a log folder holds (empty when it has no log yet); lines that do not
    parse are skipped here: `read_requests` is where they are reported."""
    path = Path(directory) / REQUESTS
    if not path.is_file():
        return set()
    ids = set()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for text in handle:
            try:
                ids.add(json.loads(text)["id"])
            except (ValueError, KeyError, TypeError):
                continue
    return ids


def read_requests(directory: str | Path) -> list[LoggedRequest]:
    """Every request of `directory/requests.jsonl`, in order. Raises UserError when the folder
    or the file is missing or holds no request, DataError (FILE:LINE) for a corrupt line."""
    directory = Path(directory)
    path = directory / REQUESTS
    if not directory.is_dir():
        raise UserError(f"{directory}: no such log folder (the --log-dir of migaki serve)")
    if not path.is_file():
        raise UserError(f"{path}: no request log here (migaki serve writes it unless --no-log)")
    requests = []
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            requests.append(_parse(path, number, text))
    if not requests:
        raise UserError(f"{path}: the log is empty (no request answered yet)")
    return requests


def _parse(path: Path, number: int, text: str) -> LoggedRequest:
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, number, f"not JSON ({exc.msg})", "invalid_json") from None
    if not isinstance(row, dict):
        raise DataError(path, number, "not a JSON object", "invalid_json")
    missing = [key for key in REQUIRED if not isinstance(row.get(key), str)]
    if missing:
        raise DataError(path, number, f"no {', '.join(missing)} (not a migaki request log line)")
    messages = row.get("messages")
    if messages is not None and not (
        isinstance(messages, list) and all(isinstance(m, dict) for m in messages)
    ):
        raise DataError(path, number, "messages is not a list of objects")
    if messages is None and not isinstance(row.get("prompt"), str):
        raise DataError(path, number, "neither messages nor prompt")
    try:
        return LoggedRequest(
            id=row["id"],
            time=row["time"],
            model=row["model"],
            run=row.get("run"),
            base=row.get("base"),
            endpoint=row.get("endpoint", "chat.completions"),
            messages=messages,
            prompt=row.get("prompt"),
            response=row["response"],
            finish_reason=row.get("finish_reason"),
            prompt_tokens=int(row.get("prompt_tokens", 0)),
            completion_tokens=int(row.get("completion_tokens", 0)),
            latency_s=float(row.get("latency_s", 0.0)),
            pii={str(k): int(v) for k, v in (row.get("pii") or {}).items()},
            line=number,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise DataError(path, number, f"a field has the wrong type ({exc})") from None
