"""The work that runs in admission's worker processes: top-level functions of picklable
arguments (pydantic requests, settings, numpy arrays) returning picklable results."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from hwmodel.trace_export import chrome_trace, gantt
from service.answers import Dumped, array_json, dump
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
    "dumped",
    "ep_initial_placement",
    "eplb",
    "gantt_png",
    "order",
    "place",
    "place_case",
    "route",
    "route_layers",
    "route_layers_json",
    "schedule",
    "simulate_plan",
    "trace_events",
    "trace_json",
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


def dumped(fn: Callable[..., BaseModel], *args: Any) -> Dumped:
    """``fn(*args)``'s answer, encoded here (see ``service.answers``)."""
    return dump(fn(*args))


def trace_json(request: SimulateRequest, settings: Settings) -> bytes:
    """``trace_events``, encoded here."""
    return json.dumps(trace_events(request, settings), separators=(",", ":")).encode()


def ep_initial_placement(spec: EpSessionCreate) -> tuple[np.ndarray, bytes]:
    """An EP session's first placement ``[L, R]``, EPLB on uniform loads, and its JSON."""
    uniform = np.ones((spec.num_layers, spec.num_experts))
    placement, _, _ = rebalance_experts(uniform, spec.num_replicas, 1, 1, spec.num_gpus)
    placement = np.asarray(placement)
    return placement, array_json(placement)


def route_layers_json(
    placement: np.ndarray, num_gpus: int, hist: np.ndarray
) -> tuple[bytes, list[float]]:
    """``route_layers`` with the tokens per slot ``[L, R]`` encoded here."""
    tokens, per_layer = route_layers(placement, num_gpus, hist)
    return json.dumps(tokens, separators=(",", ":")).encode(), per_layer


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
