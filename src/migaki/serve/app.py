"""The HTTP side of `migaki serve`: FastAPI routes in OpenAI's shapes, the key check and body
limit in front of every route, the request log and the feedback store.

Security, as the usual servers get it wrong (vLLM's --api-key guards only /v1 routes): the
key is checked in an ASGI middleware in front of every path, unknown ones included, except
/health; it is compared in constant time and never logged; bodies are read up to a limit
before any route sees them; a request's `model` is only ever a key into the served models,
and the one request that loads something (admin adapters) takes a run's name inside the
folder the server was started with, never a path."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from migaki import __version__
from migaki.errors import UserError
from migaki.rundir import is_run
from migaki.serve.api import (
    AdapterRequest,
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    Generation,
    error_body,
)
from migaki.serve.engine import Engine, Job, Result, Sampling
from migaki.serve.feedback import FeedbackStore
from migaki.serve.log import RequestLog, logged_ids
from migaki.serve.models import NAME, ModelPool, Served

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health",)


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_input_tokens: int = 4096
    max_tokens: int = 1024  # the most a request may ask for
    default_max_tokens: int = 256
    concurrent_per_key: int = 8


@dataclass
class ServeState:
    pool: ModelPool
    engine: Engine
    keys: dict[str, str] = field(default_factory=dict)  # key -> its name (for limits)
    admin_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    log: RequestLog | None = None
    feedback: FeedbackStore | None = None
    runs_root: Path | None = None  # where admin requests may load runs from
    answered: set[str] = field(default_factory=set)  # response ids feedback may name
    active: dict[str, int] = field(default_factory=dict)  # requests in flight per key name


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param=None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def create_app(state: ServeState) -> Guard:
    """The application (an ASGI app, FastAPI behind the guard); the engine must already be
    started."""
    app = FastAPI(title="migaki serve", version=__version__, docs_url=None, redoc_url=None)
    app.state.migaki = state
    add_openai_routes(app, state)
    return Guard(app, state)


def add_openai_routes(app: FastAPI, state: ServeState) -> None:
    """The OpenAI-shaped routes and error bodies on `app` (also `migaki ui`'s playground)."""
    if state.feedback is not None and state.log is not None:
        state.answered |= logged_ids(state.log.directory)
    _error_handlers(app)
    _routes(app, state)


class Guard:
    """ASGI middleware in front of every route: the Bearer key (except /health), then the
    body, read whole up to the limit (413 past it) and handed on."""

    def __init__(self, app: FastAPI, state: ServeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if scope["path"] not in OPEN_PATHS and self.state.keys:
            scope.setdefault("state", {})["key"] = self._key_name(headers)
            if scope["state"]["key"] is None:
                await _send(send, 401, "Incorrect or missing API key (Authorization: Bearer KEY)")
                return
        if scope["method"] == "POST" and not headers.get("content-type", "").endswith("json"):
            # every body here is JSON; `curl -d` labels it a form, some clients not at all
            scope = {
                **scope,
                "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
                + [(b"content-type", b"application/json")],
            }
        limit = self.state.limits.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _send(send, 413, f"Request body over {limit} bytes", "body_too_large")
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _send(send, 413, f"Request body over {limit} bytes", "body_too_large")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # a disconnect, later

        await self.app(scope, replay, send)

    def _key_name(self, headers: dict[str, str]) -> str | None:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        found = None
        for key, name in self.state.keys.items():  # every key compared: no early exit
            if hmac.compare_digest(key.encode(), given.strip().encode()):
                found = name
        return found


async def _send(send, status: int, message: str, code: str | None = None) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.status, exc.message, exc.code, exc.param), exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return JSONResponse(error_body(400, "The body is not valid JSON", "invalid_json"), 400)
        first = problems[0] if problems else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        message = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "")
        return JSONResponse(error_body(422, message, "invalid_value", where), 422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = "No such route" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse(error_body(exc.status_code, message), exc.status_code)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        log.exception("request failed")
        return JSONResponse(error_body(500, "The server failed to answer (see its log)"), 500)


def _routes(app: FastAPI, state: ServeState) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok", "models": len(state.pool.names())}

    @app.get("/v1/models")
    async def list_models():
        return {
            "object": "list",
            "data": [_model_card(state.pool.get(n)) for n in state.pool.names()],
        }

    @app.get("/v1/models/{name}")
    async def one_model(name: str):
        return _model_card(_served(state, name))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        served = _served(state, body.model)
        messages = [m.plain() for m in body.messages]
        prompt_ids = _prompt_ids(state, served, served.render(messages))
        answer = _Answer(state, served, body, request, "chat.completion", prompt_ids)
        answer.messages = messages
        return await answer.respond()

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest, request: Request):
        served = _served(state, body.model)
        prompt_ids = _prompt_ids(state, served, body.text())
        answer = _Answer(state, served, body, request, "text_completion", prompt_ids)
        answer.prompt = body.text()
        return await answer.respond()

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest):
        if state.feedback is None:
            raise ApiError(400, "Feedback is off on this server (started with --no-log)")
        if body.response_id not in state.answered:
            raise ApiError(404, "No answer with that response_id", "unknown_response")
        if body.rating is None and not (body.correction or "").strip():
            raise ApiError(400, "Give a rating (up or down), a correction, or both")
        number = await asyncio.to_thread(
            state.feedback.add, body.response_id, body.rating, body.correction
        )
        return {"id": number, "object": "feedback", "response_id": body.response_id}

    @app.post("/v1/admin/adapters")
    async def load_adapter(body: AdapterRequest, request: Request):
        _admin(state, request)
        run = _run_in_root(state, body.run)
        try:
            served = await asyncio.to_thread(state.pool.add, str(run), body.name or body.run)
        except UserError as exc:
            raise ApiError(400, _without_paths(str(exc), run, state), "cannot_load") from None
        return _model_card(served)

    @app.delete("/v1/admin/adapters/{name}")
    async def unload_adapter(name: str, request: Request):
        _admin(state, request)
        _served(state, name)
        await asyncio.to_thread(state.pool.remove, name)
        return {"id": name, "object": "model", "deleted": True}


def _model_card(served: Served) -> dict:
    return {"id": served.name, "object": "model", "created": 0, "owned_by": "migaki"}


def _served(state: ServeState, name: str) -> Served:
    served = state.pool.get(name)
    if served is None:
        # the name is echoed only when it could be one: never a path back to the client
        shown = f"`{name}`" if NAME.match(name) else "asked for"
        raise ApiError(
            404,
            f"The model {shown} is not served here (GET /v1/models)",
            "model_not_found",
            "model",
        )
    return served


def _prompt_ids(state: ServeState, served: Served, text: str) -> list[int]:
    ids = served.tokenizer(text, add_special_tokens=False)["input_ids"]
    limit = state.limits.max_input_tokens
    if len(ids) > limit:
        raise ApiError(
            413,
            f"The input is {len(ids)} tokens; this server takes {limit} at most",
            "too_many_tokens",
            "messages",
        )
    return ids


def _admin(state: ServeState, request: Request) -> None:
    if state.admin_key is None:
        raise ApiError(403, "Admin routes are off (start migaki serve with --admin-key)")
    given = request.headers.get("x-admin-key", "")
    if not hmac.compare_digest(state.admin_key.encode(), given.encode()):
        raise ApiError(401, "Incorrect or missing admin key (X-Admin-Key header)")


def _run_in_root(state: ServeState, name: str) -> Path:
    """The run `name` inside --runs: a single folder name, resolved (symlinks too) to a
    folder inside --runs; anything else is refused without touching the file system."""
    if state.runs_root is None:
        raise ApiError(403, "Loading runs is off (start migaki serve with --runs DIR)")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", name) or ".." in name:
        raise ApiError(400, "run: a run's folder name inside --runs, not a path", param="run")
    root = state.runs_root.resolve()
    run = (root / name).resolve()
    if run.parent != root or not is_run(run):
        raise ApiError(404, f"No run named {name} in the server's runs folder", param="run")
    return run


def _without_paths(message: str, run: Path, state: ServeState) -> str:
    return message.replace(str(run), "the run").replace(str(state.runs_root), "--runs")


class _Answer:
    """One generation request from submission to its answer, streamed or whole."""

    def __init__(self, state, served, body: Generation, request, kind: str, prompt_ids):
        self.state, self.served, self.body, self.request = state, served, body, request
        self.kind, self.prompt_ids = kind, prompt_ids
        self.messages: list[dict[str, str]] | None = None
        self.prompt: str | None = None
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.key = request.scope.get("state", {}).get("key") or "local"

    def sampling(self) -> Sampling:
        limits = self.state.limits
        wanted = self.body.wanted_tokens()
        if wanted is not None and wanted > limits.max_tokens:
            raise ApiError(
                400,
                f"max_tokens {wanted} is over this server's {limits.max_tokens}",
                "max_tokens_too_large",
                "max_tokens",
            )
        return Sampling(
            max_tokens=wanted or limits.default_max_tokens,
            temperature=self.body.temperature or 0.0,
            top_p=self.body.top_p,
            seed=self.body.seed,
            stop=self.body.stops(),
        )

    async def respond(self):
        sampling = self.sampling()
        active = self.state.active
        if active.get(self.key, 0) >= self.state.limits.concurrent_per_key:
            raise ApiError(
                429, "Too many requests in flight for this key; retry shortly", "too_many_requests"
            )
        active[self.key] = active.get(self.key, 0) + 1
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(
            self.served,
            self.prompt_ids,
            sampling,
            on_text=lambda text: loop.call_soon_threadsafe(events.put_nowait, ("text", text)),
            on_done=lambda result: loop.call_soon_threadsafe(events.put_nowait, ("done", result)),
        )
        self.started = time.perf_counter()
        self.state.engine.submit(job)
        if self.body.stream:
            return StreamingResponse(
                self._stream(job, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            result = await self._whole(job, events)
        finally:
            self._release()
        return self._answer(result)

    def _release(self) -> None:
        self.state.active[self.key] -= 1

    async def _whole(self, job: Job, events: asyncio.Queue) -> Result:
        while True:
            try:
                event, value = await asyncio.wait_for(events.get(), timeout=0.5)
            except TimeoutError:
                if await self.request.is_disconnected():
                    job.cancelled.set()
                continue
            if event == "done":
                return self._finished(value)

    async def _stream(self, job: Job, events: asyncio.Queue) -> AsyncIterator[str]:
        try:
            yield self._chunk({"role": "assistant", "content": ""} if self._chat else "", None)
            while True:
                event, value = await events.get()
                if event == "text":
                    yield self._chunk({"content": value} if self._chat else value, None)
                    continue
                if value.error is not None:
                    message = "Generation failed on the server (see its log)"
                    yield _sse(error_body(500, message))
                    return
                result = self._finished(value)
                yield self._chunk({} if self._chat else "", result.finish_reason)
                options = self.body.stream_options
                if options is not None and options.include_usage:
                    yield _sse({**self._head(), "choices": [], "usage": _usage(result)})
                yield "data: [DONE]\n\n"
                return
        finally:
            job.cancelled.set()  # the client went away: stop generating (no-op when done)
            self._release()

    @property
    def _chat(self) -> bool:
        return self.kind == "chat.completion"

    def _finished(self, result: Result) -> Result:
        if result.error is not None:
            raise ApiError(500, "Generation failed on the server (see its log)")
        if result.finish_reason != "cancelled":
            self._log(result)
        return result

    def _log(self, result: Result) -> None:
        latency = time.perf_counter() - self.started
        log.info(
            "%s %s %d+%d tokens %.2fs",
            self.id,
            self.served.name,
            result.prompt_tokens,
            result.completion_tokens,
            latency,
        )
        if self.state.log is None:
            return
        self.state.log.append(
            request_id=self.id,
            model=self.served.name,
            run=self.served.run,
            base=self.served.base,
            endpoint="chat.completions" if self._chat else "completions",
            response=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            latency_s=latency,
            messages=self.messages,
            prompt=self.prompt,
        )
        self.state.answered.add(self.id)

    def _head(self) -> dict:
        kind = "chat.completion.chunk" if self._chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.served.name}

    def _chunk(self, delta, finish: str | None) -> str:
        if self._chat:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None}
        return _sse({**self._head(), "choices": [choice]})

    def _answer(self, result: Result) -> dict:
        if self._chat:
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        else:
            choice = {
                "index": 0,
                "text": result.text,
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        return {
            "id": self.id,
            "object": self.kind,
            "created": self.created,
            "model": self.served.name,
            "choices": [choice],
            "usage": _usage(result),
        }


def _usage(result: Result) -> dict:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
