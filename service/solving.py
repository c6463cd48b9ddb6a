"""From requests to solver calls and back, shared by the HTTP routes, the CLI and sessions.

A request is resolved once, at the edge, into domain objects (``resolve_problem``,
``resolve_placement``): its hardware and model presets are looked up there and nowhere
below, and what travels down is a ``PlacementCase`` (hardware, model, workload, residency,
granules, solving options), never the request. One deadline per request: its stages
(placement, then ordering) share it. Each answer's whole plan is simulated once, with the
timeline when one is asked for; only when an ordered plan fails the executor is the unordered
one simulated as well, to be returned instead.

Every plan returned here has passed the executor (the portfolio validates every layer's plan
before it wins); when no valid plan exists the caller gets a DomainError (a 4xx), never a 5xx.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hwmodel.executor import simulate
from hwmodel.plan import Plan, Residency
from hwmodel.plan_builder import (
    Layout,
    effective_granules,
    layout_residency,
    stripe_granules,
)
from hwmodel.report import Report
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
from solvers.common import Backend, Budget
from solvers.eplb.routing import even_split_loads, route_batch
from solvers.ordering.dep import DepProblem, solve_dep, throughput_tokens_per_s
from solvers.ordering.solve import solve_order
from solvers.placement.solve import PlacementSolution, solve_placement


def check_limits(
    settings: Settings,
    hardware: Hardware,
    model: ModelSpec,
    workload: Workload | None = None,
    num_tasks: int | None = None,
) -> None:
    """Refuse (413) what exceeds the server's limits before any solver or simulation runs,
    and refuse (422) a workload that does not fit the model."""
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


def resolve_problem(
    request: ProblemRequest,
    settings: Settings,
    workload: Workload | None = None,
    num_tasks: int | None = None,
) -> tuple[Hardware, ModelSpec]:
    """The request's hardware and model (presets looked up here, once), within the limits."""
    hardware, model = request.resolved_hardware(), request.resolved_model()
    check_limits(settings, hardware, model, workload, num_tasks)
    return hardware, model


@dataclass(frozen=True)
class PlacementCase:
    """A placement problem as the solvers take it: the request resolved into domain objects.

    ``num_granules`` is the grid actually solved on (raised for a striped layout so every
    stripe is runnable); ``deadline_s`` the wall-clock budget already capped by the server.
    """

    hardware: Hardware
    model: ModelSpec
    workload: Workload
    residency: Residency
    num_granules: int
    backend: Backend
    deadline_s: float
    allow_loads: bool = True
    attention: bool = False


def layout_granules(
    hardware: Hardware, model: ModelSpec, layout: str | None, requested: int
) -> int:
    """The granule count to solve with: the requested one (rounded to a divisor of the FFN),
    raised for a striped layout to the grid on which its stripes fall evenly
    (``stripe_granules``), so every stripe is runnable."""
    g = effective_granules(model.expert_ffn_size, requested)
    if layout == "striped":
        ndps = sum(1 for d in hardware.devices if d.kind == "ndp")
        if ndps:
            g = stripe_granules(model.expert_ffn_size, ndps, least=g)
    return g


def named_layout(
    hardware: Hardware,
    model: ModelSpec,
    layout: Layout,
    cached_experts: tuple[int, ...],
    num_granules: int,
) -> Residency:
    """The residency a named layout gives (422 naming ``body.layout`` when it cannot)."""
    try:
        return layout_residency(hardware, model, layout, cached_experts, num_granules=num_granules)
    except ValueError as exc:
        field = "cached_experts" if str(exc).startswith("cached_experts:") else "layout"
        raise DomainError(422, "validation", f"body.{field}", str(exc)) from None


def resolve_placement(request: PlacementRequest, settings: Settings) -> PlacementCase:
    """Resolve a placement request once: presets, limits, granules, residency, deadline."""
    hardware, model = resolve_problem(request, settings, request.workload)
    opts = request.options
    layout = request.layout if request.residency is None else None
    granules = layout_granules(hardware, model, layout, opts.num_granules)
    if request.residency is not None:
        residency = request.residency
        problems = residency.problems(model, {m.id for m in hardware.memories})
        if problems:
            raise DomainError(422, "validation", "body.residency", "; ".join(problems[:3]))
    else:
        assert request.layout is not None
        residency = named_layout(hardware, model, request.layout, request.cached_experts, granules)
    return PlacementCase(
        hardware, model, request.workload, residency, granules, opts.backend,
        min(opts.deadline_s, settings.max_deadline_s), opts.allow_loads, opts.attention,
    )  # fmt: skip


def solve_case(case: PlacementCase, settings: Settings, budget: Budget) -> PlacementSolution:
    """Solve a resolved placement under ``budget``; 422 when some layer is infeasible."""
    solution = solve_placement(
        case.hardware,
        case.model,
        case.workload,
        case.residency,
        case.backend,
        workers=settings.solver_workers,
        num_granules=case.num_granules,
        allow_loads=case.allow_loads,
        attention=case.attention,
        budget=budget,
    )
    if solution.account.status == "infeasible":
        raise DomainError(
            422, "infeasible", "body.residency", solution.account.fallback_reason or "infeasible"
        )
    return solution


def checked(
    case: PlacementCase, solution: PlacementSolution, settings: Settings, include_timeline: bool
) -> tuple[PlacementSolution, Report]:
    """The solution and the executor's report on its whole plan, simulated once when valid.

    Each layer is solved with the home memory's free bytes to itself, so the loads of layers
    in flight together can overflow it (the executor's ``memory_capacity``): the case is then
    solved again by the greedy without loads, which keeps every layer within what is resident,
    and the answer says so (``fallback`` and why).

    Raises:
        DomainError: 422 ``no_valid_plan`` when no plan passes the executor.
    """
    report = simulate(
        case.hardware, case.model, solution.plan, case.workload, case.residency, include_timeline
    )
    if report.valid:
        return solution, report
    why = report.violations[0].message
    if not case.allow_loads or all(v.code != "memory_capacity" for v in report.violations):
        raise DomainError(422, "no_valid_plan", "body", why)
    retry = replace(case, allow_loads=False, backend="greedy")
    try:
        again = solve_case(retry, settings, Budget.wall(case.deadline_s, settings.solver_workers))
    except DomainError:  # some expert is held nowhere it can run without a load
        raise DomainError(422, "no_valid_plan", "body", why) from None
    report = simulate(
        case.hardware, case.model, again.plan, case.workload, case.residency, include_timeline
    )
    if not report.valid:
        raise DomainError(422, "no_valid_plan", "body", why)
    account = again.plan.account.model_copy(
        update={
            "status": "fallback",
            "fallback_reason": f"the plan with loads overflowed a memory ({why}); solved "
            "again by the greedy without loads",
        }
    )
    plan = again.plan.model_copy(update={"account": account})
    return replace(again, plan=plan), report


def placement_response(
    solution: PlacementSolution, plan: Plan, report: Report
) -> PlacementResponse:
    """The answer: the plan, its account, every layer's account and the executor's report."""
    return PlacementResponse(
        plan=plan,
        account=plan.account,
        layers=[
            LayerAccountOut(layer=s.instance.problem.layer, account=s.account)
            for s in solution.layers
        ],
        report=report,
    )


def place_case(
    case: PlacementCase, settings: Settings, include_timeline: bool = False
) -> PlacementResponse:
    """Solve a resolved placement and validate its plan with the executor (one run)."""
    solution = solve_case(case, settings, Budget.wall(case.deadline_s, settings.solver_workers))
    solution, report = checked(case, solution, settings, include_timeline)
    return placement_response(solution, solution.plan, report)


def place(
    request: PlacementRequest, settings: Settings, include_timeline: bool = False
) -> PlacementResponse:
    """Solve placement, validate the plan with the executor, and report."""
    return place_case(resolve_placement(request, settings), settings, include_timeline)


def order_resolved(
    request: OrderingRequest,
    hardware: Hardware,
    model: ModelSpec,
    settings: Settings,
    include_timeline: bool = False,
) -> OrderingResponse:
    """Solve the DEP pipeline on resolved hardware and model; validate it with the executor."""
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


def order(
    request: OrderingRequest, settings: Settings, include_timeline: bool = False
) -> OrderingResponse:
    """Solve the DEP pipeline and validate the plan with the executor."""
    hardware, model = resolve_problem(request, settings)
    return order_resolved(request, hardware, model, settings, include_timeline)


def schedule_case(
    case: PlacementCase,
    ordering: bool,
    settings: Settings,
    include_timeline: bool = False,
) -> ScheduleResponse:
    """Placement, then (``ordering``) the order of the whole plan, under the case's one
    deadline: placement may spend half of it, ordering what is left.

    The ordered plan is kept when its predicted makespan (the forward pass, which the executor
    reproduces) is no worse than the unordered plan's; the kept plan is simulated once. Should
    the executor reject an ordered plan, the unordered one is simulated and returned instead.
    """
    budget = Budget.wall(case.deadline_s, settings.solver_workers)
    placed = solve_case(case, settings, budget.part(2, 2) if ordering else budget)
    if not ordering:
        placed, report = checked(case, placed, settings, include_timeline)
        return ScheduleResponse(
            **placement_response(placed, placed.plan, report).model_dump(), ordering=None
        )
    ordered = solve_order(
        case.hardware, case.model, placed.plan.tasks, case.backend,
        context_tokens=case.workload.context_tokens, workers=settings.solver_workers,
        budget=budget.part(2, 1),
    )  # fmt: skip
    placed_cycles = placed.account.predicted_makespan_cycles
    if placed_cycles is None or ordered.makespan_cycles <= placed_cycles:
        account = placed.account.model_copy(
            update={"predicted_makespan_cycles": ordered.makespan_cycles}
        )
        plan = Plan(tasks=tuple(ordered.tasks), account=account)
        report = simulate(
            case.hardware, case.model, plan, case.workload, case.residency, include_timeline
        )
        if report.valid:
            return ScheduleResponse(
                **placement_response(placed, plan, report).model_dump(),
                ordering=ordered.account,
            )
    placed, report = checked(case, placed, settings, include_timeline)
    return ScheduleResponse(
        **placement_response(placed, placed.plan, report).model_dump(), ordering=ordered.account
    )


def schedule(
    request: ScheduleRequest, settings: Settings, include_timeline: bool = False
) -> ScheduleResponse:
    """Placement, then ordering of the whole plan; the result has passed the executor."""
    case = resolve_placement(request, settings)
    return schedule_case(case, "ordering" in request.problems, settings, include_timeline)


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
    hardware, model = resolve_problem(request, settings, request.workload, len(request.plan.tasks))
    report = simulate(
        hardware, model, request.plan, request.workload, request.residency, timeline,
        request.context_tokens,
    )  # fmt: skip
    return SimulateResponse(report=report)
