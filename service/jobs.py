"""The work that runs in admission's worker processes: top-level functions of picklable
arguments (pydantic requests, settings, numpy arrays) returning picklable results."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hwmodel.trace_export import chrome_trace, gantt
from service.ep_sessions import route_layers
from service.eplb import eplb
from service.schemas import EpSessionCreate, SimulateRequest
from service.settings import Settings
from service.solving import (
    order,
    order_resolved,
    place,
    place_case,
    resolve_placement,
    resolve_problem,
    route,
    schedule,
    schedule_case,
    simulate_plan,
)
from solvers.eplb.deepseek import rebalance_experts

# Imported once by the forkserver every worker is forked from (solvers import their backends
# lazily; a fresh worker must not spend its first request's deadline importing them).
PRELOAD = (
    "service.jobs",
    "solvers.eplb.cpsat",
    "solvers.ordering.cpsat",
    "solvers.ordering.milp",
    "solvers.placement.cpsat",
    "solvers.placement.milp",
    "solvers.prefetch.cpsat",
    "solvers.prefetch.milp",
    "matplotlib.pyplot",
)

__all__ = [
    "answer_picture",
    "ep_initial_placement",
    "eplb",
    "gantt_png",
    "order",
    "place",
    "place_case",
    "route",
    "route_layers",
    "schedule",
    "simulate_plan",
    "trace_events",
]


def trace_events(request: SimulateRequest, settings: Settings) -> dict[str, Any]:
    """The simulated timeline as Chrome trace event JSON."""
    return chrome_trace(simulate_plan(request, settings, True).report)


def gantt_png(request: SimulateRequest, settings: Settings) -> bytes:
    """The simulated timeline as a PNG Gantt chart."""
    report = simulate_plan(request, settings, True).report
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        gantt(report, f.name)
        return Path(f.name).read_bytes()


def ep_initial_placement(spec: EpSessionCreate) -> np.ndarray:
    """An EP session's first placement ``[L, R]``: EPLB on uniform loads."""
    uniform = np.ones((spec.num_layers, spec.num_experts))
    placement, _, _ = rebalance_experts(uniform, spec.num_replicas, 1, 1, spec.num_gpus)
    return np.asarray(placement)


def answer_picture(what: str, fmt: str, request: Any, settings: Settings) -> tuple[bytes, str, str]:
    """Solve ``request`` (placement, ordering or schedule) with its timeline and draw it:
    (body, media type, file name) for ``?format=fmt``. The request is resolved once."""
    from service.pictures import render

    response: Any
    if what == "ordering":
        hardware, model = resolve_problem(request, settings)
        response = order_resolved(request, hardware, model, settings, True)
    else:
        case = resolve_placement(request, settings)
        hardware, model = case.hardware, case.model
        if what == "placement":
            response = place_case(case, settings, True)
        else:
            response = schedule_case(case, "ordering" in request.problems, settings, True)
    return render(response, fmt, what, hardware, model)
