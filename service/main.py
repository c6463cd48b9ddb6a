"""The FastAPI application: routers, error handlers, body-size limit, metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response

from service.deps import require_api_key
from service.errors import ErrorResponse, install_error_handlers
from service.metrics import Metrics
from service.routes import health, presets, simulate, solve
from service.settings import get_settings

DESCRIPTION = """
Scheduling service for Mixture-of-Experts inference on heterogeneous hardware: a GPU with
near-data-processing units, GPU groups for disaggregated expert parallelism, or a GPU with
host memory over PCIe. Every plan is checked by a cycle-level executor model of the hardware,
which also predicts its latency, utilization and traffic.

Start with `GET /v1/presets/hardware` and `GET /v1/presets/models`; every POST has a working
example built from presets ("Try it out").
"""


def create_app() -> FastAPI:
    """Build the app; settings are read per request through ``get_settings``."""
    app = FastAPI(
        title="moesched",
        version="0.1.0",
        description=DESCRIPTION,
        responses={413: {"model": ErrorResponse, "description": "Request too large."}},
    )
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.include_router(health.router)
    v1 = [Depends(require_api_key)]
    app.include_router(presets.router, dependencies=v1)
    app.include_router(simulate.router, dependencies=v1)
    app.include_router(solve.router, dependencies=v1)

    @app.middleware("http")
    async def limit_and_measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        settings = request.app.dependency_overrides.get(get_settings, get_settings)()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            body = ErrorResponse(
                error=f"body: larger than {settings.max_body_bytes} bytes", error_type="too_large"
            )
            return Response(body.model_dump_json(), status_code=413, media_type="application/json")
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        m: Metrics = request.app.state.metrics
        m.requests.labels(path, request.method, str(response.status_code)).inc()
        m.latency.labels(path, request.method).observe(time.perf_counter() - started)
        return response

    return app
