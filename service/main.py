"""The FastAPI application: routers, error handlers, body-size limit, metrics."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import observe_fast
from service.admission import Admission, Kind, stamp_arrival
from service.deps import key_matches, require_api_key
from service.docs import install_docs
from service.ep_sessions import EpSessions
from service.errors import ErrorResponse, install_error_handlers
from service.loop_watch import watch_loop
from service.metrics import Metrics
from service.routes import health, presets, sessions, simulate, solve, sweeps
from service.sessions import SessionManager, expire
from service.settings import Settings, get_settings
from service.store import SessionStore, SQLiteStore, StoreError
from service.sweep_jobs import SweepJobs

log = logging.getLogger("moesched")

DESCRIPTION = """
Scheduling service for Mixture-of-Experts inference on heterogeneous hardware: a GPU with
near-data-processing units, GPU groups for disaggregated expert parallelism, or a GPU with
host memory over PCIe. Every plan is checked by a cycle-level executor model of the hardware,
which also predicts its latency, utilization and traffic.

Start with `GET /v1/presets/hardware` and `GET /v1/presets/models`; every POST has a working
example built from presets ("Try it out"). Every answer leads with a `summary` (status, gap,
makespan, where each expert runs). Pictures: add `?format=png`, `svg`, `perfetto` or `html` to
`/v1/schedule`, `/v1/placement` or `/v1/ordering`; [an interactive timeline of the example
schedule](/v1/schedule/example).
"""


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

# POST routes whose work takes an admission slot, by class: when every slot of the class is
# busy, the Guard answers 503 before reading or parsing the body (parsing and validating a
# body on the loop cost up to ~10 ms of its CPU per refused request; 96 at once held the loop
# for over 100 ms).
_SOLVE: Kind = "solve"
SLOT_ROUTES: dict[str, Kind] = {
    path: _SOLVE
    for path in (
        "/v1/placement", "/v1/schedule", "/v1/ordering", "/v1/eplb", "/v1/simulate",
        "/v1/simulate/trace", "/v1/simulate/gantt", "/v1/sessions", "/v1/ep-sessions",
    )
}  # fmt: skip
SLOT_ROUTES["/v1/route"] = "route"
EP_BATCHES = re.compile(r"/v1/ep-sessions/[^/]+/batches")


def slot_class(method: str, path: str) -> Kind | None:
    """The admission class a request's work takes a slot of (None: it takes none)."""
    if method != "POST":
        return None
    return SLOT_ROUTES.get(path) or ("route" if EP_BATCHES.fullmatch(path) else None)


class _TooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware, the first thing every request meets (no body read yet):

    1. an API key (when the server has one) for every ``/v1`` path, compared in constant time;
    2. the body read here, every streamed byte counted (chunked bodies too): 413 at the limit,
       408 when headers-to-last-byte takes longer than ``read_timeout_s``; the app then gets
       the buffered body, never more than the limit;
    3. a count and a latency per (route template, method, status), labels from a fixed set:
       unknown methods and unmatched paths are folded into ``other``.

    (Starlette's BaseHTTPMiddleware costs about a millisecond a request; this does not.)
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, admission: Admission) -> None:
        self.app = app
        self.metrics = metrics
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        stamp_arrival(scope)
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or scope.get("moesched.route") or "other"
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = _settings(scope)
        headers = dict(scope.get("headers", ()))
        if scope["path"].startswith("/v1") and not key_matches(
            settings.api_key, headers.get(b"x-api-key")
        ):
            await _error(401, "x-api-key: missing or wrong X-API-Key header", "unauthorized")(
                scope, receive, send
            )
            return
        kind = slot_class(scope.get("method", ""), scope["path"])
        if kind is not None and self.admission.full(kind):
            self.metrics.overloaded.labels(f"{kind}_slots").inc()
            busy = _error(503, f"all {kind} slots are busy; retry shortly", "overloaded")
            busy.headers["Retry-After"] = "1"
            await busy(scope, receive, send)
            return
        limit = settings.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _error(413, f"body: larger than {limit} bytes", "too_large")(scope, receive, send)
            return
        try:
            async with asyncio.timeout(settings.read_timeout_s):
                body, more = await _read_body(receive, limit)
        except _TooLarge:
            await _error(413, f"body: larger than {limit} bytes", "too_large")(scope, receive, send)
            return
        except TimeoutError:
            msg = f"body: not received within {settings.read_timeout_s} s"
            await _error(408, msg, "timeout")(scope, receive, send)
            return
        if not more:  # the client left while sending
            return
        if await self._observe(scope, headers, body, send):
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    async def _observe(
        self, scope: Scope, headers: dict[bytes, bytes], body: bytes, send: Send
    ) -> bool:
        """Serve a valid observation on the hot path (``observe_fast``); False: the app
        answers (every other request, and every observation the route must word a 4xx for)."""
        if scope.get("method") != "POST" or not headers.get(b"content-type", b"").startswith(
            b"application/json"
        ):
            return False
        match = observe_fast.PATH.fullmatch(scope["path"])
        manager = getattr(getattr(scope.get("app"), "state", None), "sessions", None)
        if match is None or manager is None:
            return False
        obs = observe_fast.decode(body)
        if obs is None:
            return False
        scope["moesched.route"] = observe_fast.ROUTE
        await observe_fast.observe(match.group(1), obs, manager, self.metrics, send)
        return True


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The whole body, refusing (``_TooLarge``) at ``limit`` bytes; (body, False) when the
    client disconnected first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _error(status: int, message: str, kind: str) -> JSONResponse:
    body = ErrorResponse(error=message, error_type=kind)
    return JSONResponse(body.model_dump(), status_code=status)


def _settings(scope: Scope) -> Settings:
    app = scope.get("app")
    getter = (
        app.dependency_overrides.get(get_settings, get_settings)
        if app is not None
        else get_settings
    )
    settings: Settings = getter()
    return settings


async def _sweep(app: FastAPI, settings: Settings) -> None:
    """Expire idle sessions of both kinds every so often, off the event loop."""
    period_s = min(60.0, max(0.5, settings.session_ttl_s / 4))
    while True:
        await asyncio.sleep(period_s)
        try:
            await run_in_threadpool(
                expire, app.state.store, settings, app.state.sessions, app.state.ep_sessions
            )
        except StoreError:
            log.exception("session expiry failed (will retry)")


def open_store(settings: Settings) -> SessionStore:
    """The session store the settings name: PostgreSQL at ``db_url``, else the SQLite file."""
    if settings.db_url:
        from service.pg_store import PostgresStore

        return PostgresStore(settings.db_url, settings.db_busy_timeout_s)
    return SQLiteStore(settings.db_path, settings.db_busy_timeout_s, settings.db_wal_max_bytes)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The session store opens at startup (a bad database file stops the
    server with a clear message); request handlers read settings through ``get_settings``."""
    boot = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(boot)
        app.state.store = store
        app.state.sessions = SessionManager(store, boot)
        app.state.ep_sessions = EpSessions(store, boot)
        app.state.sessions.ep, app.state.ep_sessions.sessions = (
            app.state.ep_sessions,
            app.state.sessions,
        )
        app.state.sessions.admission = app.state.ep_sessions.admission = app.state.admission
        app.state.sweeps = SweepJobs(boot, app.state.admission)
        app.openapi()  # built once now, not on the event loop of the first /openapi.json
        sweeper = asyncio.create_task(_sweep(app, boot))
        watcher = asyncio.create_task(watch_loop(app.state.metrics))
        # Start the worker processes in the background (a daemon thread: a stop never waits
        # for it); the first request waits for them outside its deadline.
        threading.Thread(target=app.state.admission.warm, daemon=True).start()
        app.state.metrics.watch_sessions(
            lambda: sum(store.count()), lambda: app.state.sessions.resolves
        )
        # What start-up built (modules, the app, presets) lives as long as the server: out of
        # the cyclic collector's reach, the collections that a decoded body's thousands of
        # lists set off scan only what requests made, not the whole start-up heap.
        gc.freeze()
        try:
            yield
        finally:
            sweeper.cancel()
            watcher.cancel()
            app.state.sweeps.close()
            app.state.admission.close()
            app.state.sessions.close()
            app.state.ep_sessions.close()
            store.close()

    app = FastAPI(
        title="moesched",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from local files by install_docs (no CDN)
        redoc_url=None,
        responses={
            401: {"model": ErrorResponse, "description": "Missing or wrong API key (when set)."},
            413: {"model": ErrorResponse, "description": "Request too large."},
            503: {"model": ErrorResponse, "description": "Overloaded: retry after Retry-After."},
        },
    )
    if settings is not None:  # handlers see the settings the app was built with
        app.dependency_overrides[get_settings] = lambda: settings
    app.state.metrics = Metrics()
    app.state.admission = Admission(boot)
    install_error_handlers(app)
    install_docs(app)
    app.include_router(health.router)
    v1 = [Depends(require_api_key)]
    app.include_router(presets.router, dependencies=v1)
    app.include_router(simulate.router, dependencies=v1)
    app.include_router(solve.router, dependencies=v1)
    app.include_router(sessions.router, dependencies=v1)
    app.include_router(sessions.ep_router, dependencies=v1)
    app.include_router(sweeps.router, dependencies=v1)

    app.add_middleware(Guard, metrics=app.state.metrics, admission=app.state.admission)
    return app
