"""From requests to solver calls and back, shared by the HTTP routes and the CLI.

Every plan returned here has passed the executor (the portfolio validates every layer's plan
before it wins); when no valid plan exists the caller gets a DomainError (a 4xx), never a 5xx.
"""

from __future__ import annotations

import numpy as np

from hwmodel.executor import simulate
from hwmodel.plan import Plan, Residency
from hwmodel.plan_builder import effective_granules, layout_residency, stripe_granules
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload
from service.errors import DomainError
from service.schemas import (
    LayerAccountOut,
    OrderingRequest,
    OrderingResponse,
    PlacementRequest,
    PlacementResponse,
    ProblemRequest,
    RouteRequest,
    RouteResponse,
    ScheduleRequest,
    ScheduleResponse,
    SimulateRequest,
    SimulateResponse,
)
from service.settings import Settings
from solvers.eplb.routing import even_split_loads, route_batch
from solvers.ordering.dep import DepProblem, solve_dep, throughput_tokens_per_s
from solvers.ordering.solve import solve_order
from solvers.placement.solve import solve_placement


def check_problem(
    request: ProblemRequest,
    settings: Settings,
    workload: Workload | None = None,
    num_tasks: int | None = None,
) -> tuple[Hardware, ModelSpec]:
    """Resolve hardware and model, refuse (413) what exceeds the server's limits before any
    solver or simulation runs, and refuse (422) a workload that does not fit the model."""
    hardware, model = request.resolved_hardware(), request.resolved_model()
    limits = [
        ("body.hardware.devices", len(hardware.devices), settings.max_devices),
        ("body.model.num_routed_experts", model.num_routed_experts, settings.max_experts),
    ]
    if workload is not None:
        limits.append(("body.workload.layer_ids", len(workload.layer_ids), settings.max_layers))
    if num_tasks is not None:
        limits.append(("body.plan.tasks", num_tasks, settings.max_tasks))
    for field, size, limit in limits:
        if size > limit:
            raise DomainError(413, "too_large", field, f"{size} exceeds the limit {limit}")
    if workload is not None:
        problems = workload.check_against(model)
        if problems:
            field, _, reason = problems[0].partition(": ")
            raise DomainError(422, "validation", f"body.workload.{field}", reason)
    return hardware, model


def granules_of(request: PlacementRequest) -> int:
    """The granule count to solve with: the requested one, raised for a striped layout to the
    grid on which its stripes fall evenly (``stripe_granules``), so every stripe is runnable."""
    model = request.resolved_model()
    g = effective_granules(model.expert_ffn_size, request.options.num_granules)
    if request.residency is None and request.layout == "striped":
        ndps = sum(1 for d in request.resolved_hardware().devices if d.kind == "ndp")
        if ndps:
            g = stripe_granules(model.expert_ffn_size, ndps, least=g)
    return g


def residency_of(request: PlacementRequest) -> Residency:
    """The request's residency, or the one its named layout gives."""
    if request.residency is not None:
        return request.residency
    assert request.layout is not None
    try:
        return layout_residency(
            request.resolved_hardware(),
            request.resolved_model(),
            request.layout,
            request.cached_experts,
            num_granules=granules_of(request),
        )
    except ValueError as exc:
        raise DomainError(422, "validation", "body.layout", str(exc)) from None


def place(
    request: PlacementRequest, settings: Settings, include_timeline: bool = False
) -> PlacementResponse:
    """Solve placement, validate the plan with the executor, and report."""
    hardware, model = check_problem(request, settings, request.workload)
    residency = residency_of(request)
    opts = request.options
    deadline = min(opts.deadline_s, settings.max_deadline_s)

    solution = solve_placement(
        hardware,
        model,
        request.workload,
        residency,
        opts.backend,
        deadline,
        workers=settings.solver_workers,
        num_granules=granules_of(request),
        allow_loads=opts.allow_loads,
        attention=opts.attention,
    )
    if solution.account.status == "infeasible":
        raise DomainError(
            422, "infeasible", "body.residency", solution.account.fallback_reason or "infeasible"
        )
    report = simulate(hardware, model, solution.plan, request.workload, residency)
    if not report.valid:
        raise DomainError(422, "no_valid_plan", "body", report.violations[0].message)
    if include_timeline:
        report = simulate(hardware, model, solution.plan, request.workload, residency, True)
    return PlacementResponse(
        plan=solution.plan,
        account=solution.account,
        layers=[
            LayerAccountOut(layer=s.instance.problem.layer, account=s.account)
            for s in solution.layers
        ],
        report=report,
    )


def order(
    request: OrderingRequest, settings: Settings, include_timeline: bool = False
) -> OrderingResponse:
    """Solve the DEP pipeline and validate the plan with the executor."""
    hardware, model = check_problem(request, settings)
    problem = DepProblem(
        hardware,
        model,
        request.batch_tokens,
        request.num_layers,
        request.context_tokens,
    )
    problems = problem.check()
    if problems:
        field, _, reason = problems[0].partition(": ")
        raise DomainError(422, "validation", f"body.{field}", reason)
    opts = request.options
    sol = solve_dep(
        problem,
        opts.backend,
        min(opts.deadline_s, settings.max_deadline_s),
        opts.max_micro_batches,
        settings.solver_workers,
    )
    report = simulate(
        problem.hardware,
        problem.model,
        sol.plan,
        residency=problem.residency(),
        context_tokens=problem.context_tokens,
        include_timeline=include_timeline,
    )
    if not report.valid:
        raise DomainError(422, "no_valid_plan", "body", report.violations[0].message)
    return OrderingResponse(
        plan=sol.plan,
        account=sol.plan.account,
        micro_batches=sol.micro_batches,
        why=sol.why,
        makespan_cycles=sol.makespan_cycles,
        serial_cycles=sol.serial_cycles,
        pppipe_cycles=sol.pppipe_cycles,
        pppipe_micro_batches=sol.pppipe_micro_batches,
        makespan_by_micro_batches={str(r): c for r, c in sol.by_r.items()},
        throughput_tokens_per_s=throughput_tokens_per_s(problem, sol.makespan_cycles),
        report=report,
    )


def schedule(
    request: ScheduleRequest, settings: Settings, include_timeline: bool = False
) -> ScheduleResponse:
    """Placement, then ordering of the whole plan; the result has passed the executor."""
    placed = place(request, settings, include_timeline)
    if "ordering" not in request.problems:
        return ScheduleResponse(**placed.model_dump(), ordering=None)
    hardware, model = request.resolved_hardware(), request.resolved_model()
    residency = residency_of(request)
    ctx = request.workload.context_tokens
    ordered = solve_order(
        hardware, model, placed.plan.tasks, request.options.backend,
        min(request.options.deadline_s, settings.max_deadline_s), ctx, settings.solver_workers,
    )  # fmt: skip
    plan = Plan(tasks=tuple(ordered.tasks), account=placed.account)
    report = simulate(hardware, model, plan, request.workload, residency, include_timeline)
    if not report.valid or report.makespan_cycles > placed.report.makespan_cycles:
        return ScheduleResponse(**placed.model_dump(), ordering=ordered.account)
    account = placed.account.model_copy(
        update={"predicted_makespan_cycles": ordered.makespan_cycles}
    )
    return ScheduleResponse(
        plan=plan.model_copy(update={"account": account}),
        account=account,
        layers=placed.layers,
        report=report,
        ordering=ordered.account,
    )


def route(request: RouteRequest) -> RouteResponse:
    """Split one batch's tokens among the replicas to minimize the largest GPU load."""
    p2l = np.asarray(request.physical_to_logical, dtype=np.int64)
    loads = np.asarray(request.loads, dtype=np.int64)
    if len(p2l) % request.num_gpus:
        raise DomainError(
            422, "validation", "body.physical_to_logical", "length must be a multiple of num_gpus"
        )
    if p2l.min() < 0 or p2l.max() >= len(loads):
        raise DomainError(
            422, "validation", "body.physical_to_logical", f"ids must lie in [0, {len(loads)})"
        )
    if (loads < 0).any():
        raise DomainError(422, "validation", "body.loads", "tokens must be >= 0")
    missing = np.setdiff1d(np.flatnonzero(loads > 0), p2l)
    if len(missing):
        raise DomainError(
            422,
            "validation",
            "body.loads",
            f"experts {missing[:5].tolist()} have tokens but no replica",
        )
    r = route_batch(p2l, request.num_gpus, loads)
    even = even_split_loads(p2l, request.num_gpus, loads.astype(float))
    return RouteResponse(
        tokens_per_slot=r.tokens_per_slot.tolist(),
        gpu_loads=r.gpu_loads.tolist(),
        max_load=r.max_load,
        balancedness=float(r.gpu_loads.mean() / r.max_load) if r.max_load else 1.0,
        even_split_balancedness=float(even.mean() / even.max()) if even.max() > 0 else 1.0,
    )


def simulate_plan(request: SimulateRequest, settings: Settings, timeline: bool) -> SimulateResponse:
    """Check a client's plan and simulate it; violations are reported, not raised."""
    hardware, model = check_problem(request, settings, request.workload, len(request.plan.tasks))
    report = simulate(
        hardware, model, request.plan, request.workload, request.residency, timeline,
        request.context_tokens,
    )  # fmt: skip
    return SimulateResponse(report=report)
