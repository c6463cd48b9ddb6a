"""The FastAPI application: routers, error handlers, body-size limit, metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import require_api_key, solve_slot
from service.ep_sessions import EpSessions
from service.errors import ErrorResponse, install_error_handlers
from service.metrics import Metrics
from service.routes import health, presets, sessions, simulate, solve, sweeps
from service.sessions import SessionManager
from service.settings import Settings, get_settings
from service.store import SQLiteStore
from service.sweep_jobs import SweepJobs

DESCRIPTION = """
Scheduling service for Mixture-of-Experts inference on heterogeneous hardware: a GPU with
near-data-processing units, GPU groups for disaggregated expert parallelism, or a GPU with
host memory over PCIe. Every plan is checked by a cycle-level executor model of the hardware,
which also predicts its latency, utilization and traffic.

Start with `GET /v1/presets/hardware` and `GET /v1/presets/models`; every POST has a working
example built from presets ("Try it out").
"""


class LimitAndMeasure:
    """Pure ASGI middleware: refuse bodies over the limit (413), count and time requests.

    (Starlette's BaseHTTPMiddleware costs about a millisecond a request; this does not.)
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _max_body_bytes(scope)
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            body = ErrorResponse(error=f"body: larger than {limit} bytes", error_type="too_large")
            await JSONResponse(body.model_dump(), status_code=413)(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(path, method, str(status)).inc()
            self.metrics.latency.labels(path, method).observe(time.perf_counter() - started)


def _max_body_bytes(scope: Scope) -> int:
    app = scope.get("app")
    getter = (
        app.dependency_overrides.get(get_settings, get_settings)
        if app is not None
        else get_settings
    )
    return int(getter().max_body_bytes)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The session store opens at startup (a bad database file stops the
    server with a clear message); request handlers read settings through ``get_settings``."""
    boot = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = SQLiteStore(boot.db_path)
        app.state.sessions = SessionManager(store, boot)
        app.state.ep_sessions = EpSessions(store, boot)
        app.state.sweeps = SweepJobs(boot)
        try:
            yield
        finally:
            app.state.sweeps.close()
            app.state.sessions.close()
            app.state.ep_sessions.close()

    app = FastAPI(
        title="moesched",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={
            401: {"model": ErrorResponse, "description": "Missing or wrong API key (when set)."},
            413: {"model": ErrorResponse, "description": "Request too large."},
            503: {"model": ErrorResponse, "description": "Overloaded: retry after Retry-After."},
        },
    )
    app.state.metrics = Metrics()
    app.state.solve_slots = threading.BoundedSemaphore(boot.max_concurrent_solves)
    install_error_handlers(app)
    app.include_router(health.router)
    v1 = [Depends(require_api_key)]
    app.include_router(presets.router, dependencies=v1)
    app.include_router(simulate.router, dependencies=v1)
    app.include_router(solve.router, dependencies=[*v1, Depends(solve_slot)])
    app.include_router(sessions.router, dependencies=v1)
    app.include_router(sessions.ep_router, dependencies=v1)
    app.include_router(sweeps.router, dependencies=v1)

    app.add_middleware(LimitAndMeasure, metrics=app.state.metrics)
    return app
