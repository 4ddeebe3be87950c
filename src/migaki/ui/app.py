"""The HTTP side of `migaki ui`: the page and its assets, the JSON routes of docs/ui.md, a
run's metrics as server-sent events, and the playground, which is `migaki serve`'s own
OpenAI routes in this process.

Security, as a local web UI is attacked: every route but /health and the page's own files
needs the token when there is one (header or the cookie `/?token=` sets); a request whose
Host is not the address the server was started on is refused (DNS rebinding: a page of
another site that resolves its name to 127.0.0.1); a browser request that changes something
must come from this page (its Origin, or Sec-Fetch-Site), so another site cannot start runs
through the user's browser; and a request only ever names a run by its folder name or a
data file as ROOT/relative path, resolved by `ui.paths`."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from migaki import __version__
from migaki.errors import UserError
from migaki.rundir import load_run_recipe, recipe_text
from migaki.serve.app import ApiError, Guard, ServeState, add_openai_routes
from migaki.serve.engine import Engine
from migaki.serve.feedback import FeedbackStore
from migaki.serve.log import RequestLog
from migaki.serve.models import ModelPool
from migaki.ui import form, runs
from migaki.ui.jobs import Jobs
from migaki.ui.paths import PathRefused, Roots, inside, run_path

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/", "/health", "/favicon.ico")
COOKIE = "migaki_ui"
LIVE = ("running", "starting")
SHOWN_FILES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".yaml": "text/plain; charset=utf-8",
    ".png": "image/png",
}
EVENT_POLL_S = 0.5


@dataclass
class UiOptions:
    runs: Path
    data: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 7860
    token: str | None = None
    read_only: bool = False
    lang: str = "en"
    max_batch: int = 8


@dataclass
class UiState:
    options: UiOptions
    roots: Roots
    jobs: Jobs
    serve: ServeState
    loading: asyncio.Lock = field(default_factory=asyncio.Lock)


def build_state(options: UiOptions) -> UiState:
    """The folders, the job table and the playground's (empty) model pool and worker."""
    ui_dir = options.runs / ".ui"
    engine = Engine(options.max_batch)
    engine.start()
    serve = ServeState(
        pool=ModelPool(),
        engine=engine,
        log=RequestLog(ui_dir / "serve-log"),
        feedback=FeedbackStore(ui_dir / "serve-log"),
    )
    return UiState(
        options,
        Roots(options.runs, dict(options.data)),
        Jobs(options.runs, read_only=options.read_only),
        serve,
    )


def create_app(state: UiState) -> UiGuard:
    app = FastAPI(title="migaki ui", version=__version__, docs_url=None, redoc_url=None)
    add_openai_routes(app, state.serve)  # the playground's chat and feedback, and error bodies
    _page_routes(app, state)
    _run_routes(app, state)
    _new_run_routes(app, state)
    _playground_routes(app, state)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return UiGuard(Guard(app, state.serve), state.options)


class UiGuard:
    """ASGI middleware in front of everything: Host, token, then where a change comes from;
    behind it serve's Guard reads the body up to its limit."""

    def __init__(self, app: Guard, options: UiOptions) -> None:
        self.app, self.options = app, options

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, message = refusal
            response = JSONResponse({"error": {"message": message, "type": "refused"}}, status)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str] | None:
        if not self._host_allowed(headers.get("host", "")):
            return 421, "This server answers to the address it was started on only"
        path = scope["path"]
        public = path in OPEN_PATHS or path.startswith("/static/")
        if self.options.token and not public and not self._has_token(headers):
            return 401, "Give the UI's token: open /?token=TOKEN once, or Authorization: Bearer"
        if scope["method"] not in ("GET", "HEAD") and not self._same_origin(headers):
            return 403, "A change must come from this UI's own page"
        return None

    def _host_allowed(self, host: str) -> bool:
        name = host.rsplit(":", 1)[0].strip("[]").lower() if host else ""
        if name in ("127.0.0.1", "localhost", "::1"):
            return True
        # off loopback (a token is required there): the name the server was started on
        bound = self.options.host.lower()
        return bound not in ("127.0.0.1", "localhost", "::1") and (
            bound in ("0.0.0.0", "::") or name == bound
        )

    def _has_token(self, headers: dict[str, str]) -> bool:
        given = ""
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            given = authorization[7:].strip()
        else:
            for part in headers.get("cookie", "").split(";"):
                key, _, value = part.strip().partition("=")
                if key == COOKIE:
                    given = value
        return hmac.compare_digest(given.encode(), (self.options.token or "").encode())

    def _same_origin(self, headers: dict[str, str]) -> bool:
        # browsers send Origin (and Sec-Fetch-Site) with every POST; other clients need the
        # token off loopback anyway and cannot be driven by another site's page
        site = headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = headers.get("origin")
        if origin is None:
            return True
        return origin.split("://", 1)[-1].lower() == headers.get("host", "").lower()


def _page_routes(app: FastAPI, state: UiState) -> None:
    @app.get("/")
    async def page(request: Request):
        token = request.query_params.get("token")
        if token is not None and state.options.token:
            if not hmac.compare_digest(token.encode(), state.options.token.encode()):
                raise ApiError(401, "Incorrect token")
            response = RedirectResponse("/", status_code=303)
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/api/info")
    async def info():
        return {
            "version": __version__,
            "lang": state.options.lang,
            "read_only": state.options.read_only,
            "runs_root": state.options.runs.resolve().name,
            "data_roots": sorted(state.options.data),
        }


def _run_routes(app: FastAPI, state: UiState) -> None:
    root = state.options.runs

    @app.get("/api/runs")
    async def list_all():
        found = await asyncio.to_thread(runs.list_runs, root, state.jobs.launched())
        return {"runs": [_with_controls(state, summary) for summary in found]}

    @app.get("/api/runs/{name}")
    async def detail(name: str):
        found = await asyncio.to_thread(_detail, state, name)
        return found

    @app.get("/api/runs/{name}/metrics")
    async def metrics(name: str):
        run = _run(state, name)
        return {"records": await asyncio.to_thread(runs.read_records, run)}

    @app.get("/api/runs/{name}/events")
    async def events(name: str, request: Request):
        run = _run(state, name, starting_ok=True)
        return StreamingResponse(
            _events(state, run, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/runs/{name}/files/{relative:path}")
    async def file(name: str, relative: str):
        run = _run(state, name)
        try:
            path = inside(run, relative)
        except PathRefused as exc:
            raise ApiError(404, str(exc)) from None
        kind = SHOWN_FILES.get(path.suffix.lower())
        if kind is None or not path.is_file() or _hidden_part(run, path):
            raise ApiError(404, "No such file to show in this run")
        # a report is the run's own page; it runs no script against this origin's routes
        headers = {"Content-Security-Policy": "sandbox allow-popups", "Cache-Control": "no-store"}
        return FileResponse(path, media_type=kind, headers=headers)

    @app.get("/api/compare")
    async def compare(request: Request):
        names = parse_qs(request.url.query).get("run", [])
        for name in names:
            _run(state, name)
        try:
            return await asyncio.to_thread(runs.compare_runs, root, names)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="run") from None

    @app.post("/api/runs/{name}/stop")
    async def stop(name: str):
        _run(state, name, starting_ok=True)
        _writable(state)
        if not await asyncio.to_thread(state.jobs.stop, name):
            raise ApiError(409, "The run is not running here; nothing to stop")
        return {"name": name, "status": "stopping"}

    @app.post("/api/runs/{name}/resume")
    async def resume(name: str):
        run = _run(state, name)
        _writable(state)
        summary = runs.run_summary(run)
        if not summary.get("can_resume"):
            raise ApiError(409, f"The run cannot be resumed (status {summary['status']})")
        _launch(state.jobs.resume, name)
        return JSONResponse({"name": name}, 202)

    @app.post("/api/runs/{name}/export")
    async def export(name: str, request: Request):
        _run(state, name)
        _writable(state)
        body = await _json(request)
        fmt = body.get("format")
        if fmt not in ("hf", "gguf", "ollama"):
            raise ApiError(400, "format: one of hf, gguf, ollama", param="format")
        quant = body.get("quant")
        if quant is not None and not (isinstance(quant, str) and quant.replace("_", "").isalnum()):
            raise ApiError(400, "quant: a quantization name such as q8_0", param="quant")
        target = _launch(state.jobs.export, name, fmt, quant)
        return JSONResponse({"name": name, "export": target}, 202)


def _new_run_routes(app: FastAPI, state: UiState) -> None:
    @app.get("/api/schema")
    async def schema():
        return await asyncio.to_thread(form.schema_payload, state.roots.data)

    @app.post("/api/check")
    async def check(request: Request):
        values = _recipe_values(await _json(request))
        return await asyncio.to_thread(form.check, values, state.roots)

    @app.post("/api/estimate")
    async def estimate(request: Request):
        _writable(state)  # it trains a few steps in a child process
        recipe = _recipe(state, await _json(request))
        with tempfile.TemporaryDirectory(prefix="migaki-ui-estimate-") as workdir:
            try:
                return await asyncio.to_thread(form.run_estimate, recipe, Path(workdir))
            except UserError as exc:
                raise ApiError(400, _without_paths(state, str(exc))) from None

    @app.post("/api/doctor")
    async def doctor(request: Request):
        recipe = _recipe(state, await _json(request))
        try:
            found = await asyncio.to_thread(form.run_doctor, recipe)
        except UserError as exc:
            raise ApiError(400, _without_paths(state, str(exc))) from None
        return {**found, "text": _without_paths(state, found["text"])}

    @app.post("/api/runs")
    async def start(request: Request):
        _writable(state)
        body = await _json(request)
        values = _recipe_values(body)
        checked = await asyncio.to_thread(form.check, values, state.roots)
        if checked["problems"]:
            first = checked["problems"][0]
            raise ApiError(422, f"{first['key']}: {first['message']}", param=first["key"])
        recipe = _recipe(state, body)
        name = body.get("name") or form.new_name(recipe.to_dict())
        started = _launch(state.jobs.start_train, recipe_text(recipe), name)
        return JSONResponse({"name": started}, 202)


def _playground_routes(app: FastAPI, state: UiState) -> None:
    @app.post("/api/playground/{name}")
    async def load(name: str):
        run = _run(state, name)
        async with state.loading:  # two tabs opening one run load it once
            try:
                return await asyncio.to_thread(_load_pair, state.serve, name, run)
            except UserError as exc:
                raise ApiError(400, _without_paths(state, str(exc)), "cannot_load") from None


def _load_pair(serve: ServeState, name: str, run: Path) -> dict[str, str]:
    """The run's model and its base in the serve pool, the base rendered as the run renders
    (the same chat template and system prompt), so both answer the same prompt."""
    tuned_name, base_name = f"{name}", f"{name}:base"
    pool = serve.pool
    tuned = pool.get(tuned_name) or pool.add(str(run), tuned_name)
    if pool.get(base_name) is None:
        recipe = load_run_recipe(run)
        base = pool.add(recipe.model.base, base_name)
        pool.models[base_name] = replace(
            base, tokenizer=tuned.tokenizer, system_prompt=tuned.system_prompt, stops=tuned.stops
        )
    return {"tuned": tuned_name, "base": base_name}


async def _events(state: UiState, run: Path, request: Request) -> AsyncIterator[str]:
    """metrics.jsonl as it grows: every record, a status event when it changes, `end` once
    the run is no longer running and its last lines are sent."""
    offset, shown = 0, None
    while not await request.is_disconnected():
        records, offset = await asyncio.to_thread(runs.follow_records, run, offset)
        for record in records:
            yield _sse("record", record)
        status = runs.run_status(run, state.jobs.launched().get(run.name))
        if status != shown:
            shown = status
            yield _sse("status", {"status": status})
        if status not in LIVE and not records:
            yield _sse("end", {"status": status})
            return
        await asyncio.sleep(EVENT_POLL_S)


def _sse(event: str, payload: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _detail(state: UiState, name: str) -> dict:
    _run(state, name, starting_ok=True)
    try:
        found = runs.run_detail(state.roots, name)
    except PathRefused:  # launched, no recipe written yet (or it failed before writing one)
        status = state.jobs.launched().get(name, "starting")
        found = {"summary": {"name": name, "status": status}}
    found["summary"] = _with_controls(state, found["summary"])
    tail = state.jobs.log_tail(name)
    found["log_tail"] = _without_paths(state, tail) if tail else None
    return found


def _with_controls(state: UiState, summary: dict) -> dict:
    """What this server lets the page do with the run: nothing when read-only."""
    if state.options.read_only:
        return {**summary, "can_stop": False, "can_resume": False}
    can_stop = summary.get("status") in LIVE
    return {**summary, "can_stop": can_stop}


def _run(state: UiState, name: str, starting_ok: bool = False) -> Path:
    """The run folder `name` names inside --runs; 404 for anything else."""
    if starting_ok and name in state.jobs.launched():
        return state.options.runs.resolve() / name
    try:
        return run_path(state.options.runs, name)
    except PathRefused as exc:
        raise ApiError(404, str(exc), param="name") from None


def _writable(state: UiState) -> None:
    if state.options.read_only:
        raise ApiError(403, "This UI was started with --read-only")


def _launch(action, *args):
    try:
        return action(*args)
    except UserError as exc:
        raise ApiError(409, str(exc)) from None


async def _json(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "The body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object")
    return body


def _recipe_values(body: dict) -> dict:
    values = body.get("recipe")
    if not isinstance(values, dict):
        raise ApiError(400, "recipe: give the recipe as a JSON object", param="recipe")
    return values


def _recipe(state: UiState, body: dict):
    """The recipe the form describes, or 422 naming its first problem's key."""
    try:
        return form.recipe_from_form(_recipe_values(body), state.roots)
    except PathRefused as exc:
        raise ApiError(422, f"data.train: {exc}", param="data.train") from None
    except UserError as exc:
        raise ApiError(422, _without_paths(state, str(exc))) from None


def _without_paths(state: UiState, message: str) -> str:
    for name, folder in state.roots.data.items():
        message = message.replace(str(folder.resolve()), name).replace(str(folder), name)
    runs_root = state.options.runs
    return message.replace(str(runs_root.resolve()), "runs").replace(str(runs_root), "runs")


def _hidden_part(run: Path, path: Path) -> bool:
    parts = path.relative_to(run.resolve()).parts
    return any(part.startswith(".") for part in parts) or parts[0] in ("checkpoints", "final")
