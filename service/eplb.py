"""The EPLB endpoint and CLI command: resolve the input once (weights, a window, a runtime's
file), solve (EPLB-compatible solve for one sample, the per-batch window fit for several),
align with the current placement, and write the runtime's file when asked."""

from __future__ import annotations

import base64
import binascii
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwmodel.runtime_formats import (
    LoadWindow,
    RuntimeFormatError,
    deepseek_maps,
    fold_physical,
    read_window,
    sglang_expert_location,
    vllm_maps,
)
from service.errors import DomainError
from service.schemas import EplbRequest, EplbResponse
from service.settings import Settings
from solvers.eplb.model import EplbProblem, balancedness, gpu_loads, trivial_bound
from solvers.eplb.runtime import align_slots, maps_from_phy2log, moved_replicas, rebalance_window
from solvers.eplb.solve import solve_eplb

MAX_LOGICAL = 4096  # logical experts a request may name (the settings cap them further)


@dataclass(frozen=True)
class EplbInput:
    """The request resolved: ``window [S, L, E]`` logical loads and the current map or None."""

    window: np.ndarray
    current: np.ndarray | None
    notes: list[str]


def _bad(field: str, message: str, status: int = 422) -> DomainError:
    return DomainError(status, "validation", field, message)


def _rectangular(value: Any, field: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except ValueError as exc:
        raise _bad(f"body.{field}", "rows must have equal length") from exc
    if arr.ndim != ndim:
        raise _bad(f"body.{field}", "rows must have equal length")
    return arr


def read_dump(request: EplbRequest) -> LoadWindow:
    """Decode the uploaded file into a temporary directory and read it with its runtime's reader."""
    assert request.dump is not None
    dump = request.dump
    try:
        raw = base64.b64decode(dump.content_base64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad("body.dump.content_base64", f"not base64: {exc}") from exc
    # Only the name's safe characters are kept: the suffix picks the reader, nothing else.
    name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(dump.filename).name).lstrip(".") or "dump"
    with tempfile.TemporaryDirectory(prefix="moesched-dump-") as tmp:
        path = Path(tmp) / name
        path.write_bytes(raw)
        try:
            return read_window(path, dump.runtime, num_logical=None)
        except RuntimeFormatError as exc:
            raise _bad("body.dump", str(exc).replace(str(path), name)) from exc


def resolve(request: EplbRequest) -> EplbInput:
    """One window of logical loads and the current placement, from whichever input was given."""
    notes: list[str] = []
    current = None
    if request.current_physical_to_logical:
        try:
            current = np.asarray(request.current_physical_to_logical, dtype=np.int64)
        except ValueError as exc:
            raise _bad("body.current_physical_to_logical", "rows must have equal length") from exc
    if current is not None and (current.ndim != 2 or current.size == 0 or (current < 0).any()):
        raise _bad(
            "body.current_physical_to_logical", "want [num_layers, num_replicas] of ids >= 0"
        )
    if request.weights is not None:
        window = _rectangular(request.weights, "weights", 2)[None]
    elif request.window is not None:
        window = _rectangular(request.window, "window", 3)
    elif request.physical_window is not None:
        physical = _rectangular(request.physical_window, "physical_window", 3)
        if current is None:
            raise _bad(
                "body.current_physical_to_logical",
                "physical_window needs the map its slots belong to",
            )
        if physical.shape[1:] != current.shape:
            raise _bad(
                "body.physical_window",
                f"shape {list(physical.shape)} does not match the map {list(current.shape)}",
            )
        num_log = int(request.num_logical_experts or current.max() + 1)
        window = fold_physical(physical, current, num_log)
    else:
        loaded = read_dump(request)
        window, notes = loaded.logical_loads, list(loaded.notes)
        if current is None and loaded.physical_to_logical is not None:
            current = loaded.physical_to_logical
            notes.append("current placement: the map recorded in the dump")
    if window.shape[2] > MAX_LOGICAL or (request.num_logical_experts or 0) > MAX_LOGICAL:
        raise DomainError(413, "too_large", "body.num_logical_experts", "too many experts")
    if request.num_logical_experts and window.shape[2] > request.num_logical_experts:
        raise _bad(
            "body.num_logical_experts",
            f"{request.num_logical_experts}, but the loads have {window.shape[2]} experts",
        )
    if request.num_logical_experts and window.shape[2] < request.num_logical_experts:
        pad = request.num_logical_experts - window.shape[2]
        window = np.concatenate([window, np.zeros((*window.shape[:2], pad))], axis=2)
    if not np.isfinite(window).all() or (window < 0).any():
        raise _bad("body.window", "loads must be finite and >= 0")
    if current is not None:
        if current.shape[0] != window.shape[1]:
            raise _bad(
                "body.current_physical_to_logical",
                f"{current.shape[0]} layers, the loads have {window.shape[1]}",
            )
        if current.max() >= window.shape[2]:
            raise _bad(
                "body.current_physical_to_logical",
                f"expert ids up to {int(current.max())}, want ids in [0, {window.shape[2]}) "
                f"(the loads have {window.shape[2]} experts)",
            )
        check_every_expert_placed(current, window.shape[2])
    return EplbInput(window, current, notes)


def check_every_expert_placed(current: np.ndarray, num_logical: int) -> None:
    """A running map ``[L, R]`` holds every logical expert in every layer (a runtime cannot
    serve one that has no slot, and the loads of a slot-less expert cannot be moved).

    Raises:
        DomainError: 422 naming the first layer and the experts with no slot.
    """
    for layer, row in enumerate(current):
        missing = np.setdiff1d(np.arange(num_logical), row)
        if missing.size:
            raise _bad(
                "body.current_physical_to_logical",
                f"layer {layer} gives experts {missing[:5].tolist()} no slot; a running map "
                "holds every logical expert at least once",
            )


def runtime_file(
    fmt: str,
    phy2log: np.ndarray,
    log2phy: np.ndarray,
    logcnt: np.ndarray,
    counts: np.ndarray | None,
) -> dict[str, Any] | None:
    """The runtime's file content in its own names (None for moesched's own format)."""
    if fmt == "sglang":
        return sglang_expert_location(phy2log, counts)
    if fmt == "vllm":
        return vllm_maps(phy2log, log2phy, logcnt)
    if fmt == "deepseek":
        return deepseek_maps(phy2log, log2phy, logcnt)
    return None


def eplb(request: EplbRequest, settings: Settings) -> EplbResponse:
    """Solve the EPLB-compatible problem for one sample or a window of them."""
    data = resolve(request)
    window, current = data.window, data.current
    num_samples, num_layers, num_log = window.shape
    num_replicas = request.num_replicas or (current.shape[1] if current is not None else None)
    if num_replicas is None:
        raise _bad(
            "body.num_replicas", "give num_replicas (CLI: --num-replicas) or the current placement"
        )
    if current is not None and current.shape[1] != num_replicas:
        raise _bad(
            "body.num_replicas",
            f"{num_replicas}, the current placement has {current.shape[1]} slots",
        )
    if num_log > settings.max_experts or num_layers > settings.max_layers:
        raise DomainError(
            413, "too_large", "body.weights", "more experts or layers than the limits"
        )
    total = window.sum(0)
    problem = EplbProblem(
        total, num_replicas, request.num_groups, request.num_nodes, request.num_gpus
    )
    problems = problem.check()
    if problems:
        field, _, why = problems[0].partition(": ")
        raise _bad(f"body.{field}", why)
    deadline = min(request.deadline_s, settings.max_deadline_s)
    reason: str | None
    common: dict[str, Any] = {
        "num_samples": num_samples,
        "notes": data.notes,
        "format": request.format,
    }
    if num_samples == 1:
        sol = solve_eplb(problem, request.backend, deadline, settings.solver_workers)
        phy2log, log2phy, logcnt = sol.phy2log, sol.log2phy, sol.logcnt
        if current is not None:
            common["moved_replicas_unaligned"] = moved_replicas(current, phy2log)
            nodes = request.num_nodes if problem.hierarchical else 1
            phy2log = align_slots(current, phy2log, request.num_gpus, nodes)
            log2phy, logcnt = maps_from_phy2log(phy2log, num_log)
            common["moved_replicas"] = moved_replicas(current, phy2log)
        loads = gpu_loads(total, phy2log, request.num_gpus)
        backend, status, wall, reason = (
            sol.backend,
            sol.status,
            sol.wall_time_s,
            sol.fallback_reason,
        )
        bound = sol.max_load_bound
    else:
        if problem.hierarchical:
            raise _bad("body.num_nodes", "the window fit places globally: use num_nodes 1")
        import time

        started = time.perf_counter()
        fit = rebalance_window(
            window,
            current,
            request.num_gpus,
            num_replicas,
            max_moved_replicas=request.max_moved_replicas,
            move_cost=request.move_cost,
        )
        phy2log, log2phy, logcnt = fit.phy2log, fit.log2phy, fit.logcnt
        loads = gpu_loads(total, phy2log, request.num_gpus)
        backend, status, wall, reason = "window", "feasible", time.perf_counter() - started, None
        bound = np.minimum(trivial_bound(total, request.num_gpus, num_replicas), loads.max(-1))
        common["window_balancedness"] = fit.balancedness.tolist()
        common["window_balancedness_eplb"] = fit.balancedness_eplb.tolist()
        if fit.balancedness_current is not None:
            common["window_balancedness_current"] = fit.balancedness_current.tolist()
            common["moved_replicas"] = fit.moved_replicas
            common["moved_replicas_unaligned"] = fit.moved_replicas_unaligned
            common["layers_adopted"] = np.flatnonzero(fit.adopted).tolist()
        common["notes"] = [*data.notes, *fit.why]
    counts = total.round().astype(np.int64) if request.logical_count else None
    bal = balancedness(loads)
    return EplbResponse(
        physical_to_logical=phy2log.tolist(),
        logical_to_physical=log2phy.tolist(),
        logical_replica_count=logcnt.tolist(),
        gpu_loads=loads.tolist(),
        balancedness=bal.tolist(),
        balancedness_mean=float(bal.mean()),
        max_load=loads.max(-1).tolist(),
        max_load_bound=np.asarray(bound).tolist(),
        backend=backend,
        status=status,
        wall_time_s=wall,
        fallback_reason=reason,
        runtime_file=runtime_file(request.format, phy2log, log2phy, logcnt, counts),
        **common,
    )
