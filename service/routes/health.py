"""Liveness, readiness, version info and Prometheus metrics (no API key needed)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import SettingsDep
from service.schemas import HealthResponse, InfoResponse

router = APIRouter(tags=["health"])


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


@router.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz() -> HealthResponse:
    """200 while the process serves requests (answered on the event loop: no thread pool, no
    solver slot, no database)."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=HealthResponse, summary="Readiness")
async def readyz() -> HealthResponse:
    """200 when the service can take schedule requests (on the event loop, like /healthz)."""
    return HealthResponse(status="ok")


@router.get("/info", response_model=InfoResponse, summary="Versions and limits")
def info(settings: SettingsDep) -> InfoResponse:
    """moesched, solver and web-library versions, and the server's size limits."""
    return InfoResponse(
        version=_version("moesched"),
        versions={d: _version(d) for d in ("ortools", "pulp", "numpy", "fastapi", "pydantic")},
        limits={
            "max_body_bytes": settings.max_body_bytes,
            "max_tasks": settings.max_tasks,
            "max_experts": settings.max_experts,
            "max_devices": settings.max_devices,
            "max_layers": settings.max_layers,
            "max_concurrent_solves": settings.max_concurrent_solves,
            "max_concurrent_routes": settings.max_concurrent_routes,
            "max_deadline_s": settings.max_deadline_s,
            "default_deadline_s": settings.default_deadline_s,
            "session_ttl_s": settings.session_ttl_s,
            "max_sessions": settings.max_sessions,
            "ep_window_max_bytes": settings.ep_window_max_bytes,
            "ep_window_max_batches": settings.ep_window_max_batches,
            "read_timeout_s": settings.read_timeout_s,
        },
        api_key_required=settings.api_key is not None,
        warnings=settings.warnings(),
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def metrics(request: Request, settings: SettingsDep) -> Response:
    """Request counts and latencies, sessions and their limits, busy admission slots, in the
    Prometheus text format."""
    m = request.app.state.metrics
    store = getattr(request.app.state, "store", None)
    if store is not None:
        sessions, ep_sessions = store.count()
        m.sessions.labels("sessions").set(sessions)
        m.sessions.labels("ep_sessions").set(ep_sessions)
    m.session_ttl.set(settings.session_ttl_s)
    m.max_sessions.set(settings.max_sessions)
    for cls in ("solve", "route", "sweep"):
        m.slots_busy.labels(cls).set(request.app.state.admission.busy(cls))
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
