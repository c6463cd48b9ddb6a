"""CP-SAT placement: the layer's timeline as constraints, in exact integer cycles.

Decision variables (names built from domain ids):
    y[e,g,d]  granule g of expert e runs on holder d
    load[e]   expert e is loaded whole to the home device and computed there
Derived:
    n[e,d] granules of e on d (contiguous); dur[e,d] = shard table at n (element);
    rows[d] = min(num_tokens, tokens routed to d); dispatch/gather cycles from tables;
    per link, transfers in lowering order: loads, dispatches, returns, each ending no earlier
    than the previous one on the link plus its own cycles, and no earlier than it is ready.
Objective: the layer makespan (reduce end). Exact for single-lane links, where it equals the
timing model of ``PlacementInstance.predict``; on multi-lane links queueing is relaxed, so the
bound stays valid and the objective is re-predicted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from hwmodel.spec import Link
from solvers.common import Budget, Deadline
from solvers.cpsat_run import configure, cut_by_wall_clock
from solvers.cpsat_run import run as run_cpsat
from solvers.placement.problem import Assignment, PlacementInstance


@dataclass(frozen=True)
class CpsatOutcome:
    """What CP-SAT found: an assignment (or None), its status, bound and objective."""

    assignment: Assignment | None
    status: str  # optimal | feasible | infeasible | unknown
    objective: int | None
    bound: int | None
    note: str | None = None  # set when the wall-clock cap cut a deterministic solve


_SCALE = 10**6  # cycles are exact to 1e-6, as in costs.to_cycles


def _transfer_cycles(
    m: cp_model.CpModel,
    cycles: cp_model.IntVar,
    rows: cp_model.IntVar,
    used: cp_model.IntVar,
    link: Link,
    bytes_per_row: float,
    clock_hz: float,
) -> None:
    """Hard: cycles >= latency + rows x bytes_per_row / bandwidth when used (else >= 0).

    For an integer variable, ``x >= a + b * rows`` is ``x >= ceil(a + b * rows)``, which is the
    cost model's transfer time; minimization makes it equal wherever it matters. This keeps
    the model linear instead of a table over every row count.
    """
    latency = round(link.latency_s * clock_hz * _SCALE)
    per_row = round(bytes_per_row / link.bandwidth_bytes_per_s * clock_hz * _SCALE)
    m.add(cycles * _SCALE >= latency * used + per_row * rows)


def _chain(
    m: cp_model.CpModel,
    items: list[tuple[cp_model.IntVar, cp_model.LinearExpr | None, cp_model.IntVar | None]],
    horizon: int,
    name: str,
    single_lane: bool,
) -> list[cp_model.IntVar]:
    """Hard: transfers on one link end in order; each after its ready time when present.

    items: (duration, ready time or None, presence literal or None), in queue order.
    Returns the end variable of every item.
    """
    ends = []
    prev: cp_model.IntVar | None = None
    for i, (dur, ready, present) in enumerate(items):
        end = m.new_int_var(0, horizon, f"{name}_end{i}")
        if prev is not None and single_lane:
            m.add(end >= prev + dur)
        else:
            m.add(end >= dur)
        if ready is not None:
            c = m.add(end >= ready + dur)
            if present is not None:
                c.only_enforce_if(present)
        ends.append(end)
        prev = end
    return ends


Chain = list[tuple[str, cp_model.IntVar, cp_model.LinearExpr | None, cp_model.IntVar | None]]


@dataclass
class _Vars:
    """The model's variables, keyed by domain ids, as the constraint functions add them.

    ``y[e, g, d]`` granule g of expert e runs on holder d; ``load[e]`` expert e is loaded home;
    ``dur[e, d]`` cycles of e's shard on d; ``uses[e, d]`` d computes part of e; ``used[d]``
    remote d computes anything; ``disp[d]``/``gath[d]`` its dispatch and return cycles;
    ``finish[d]`` when its shards end; ``end_of[label]`` when a transfer on a link ends.
    """

    y: dict[tuple[int, int, str], cp_model.IntVar]
    load: dict[int, cp_model.IntVar]
    dur: dict[tuple[int, str], cp_model.IntVar] = field(default_factory=dict)
    uses: dict[tuple[int, str], cp_model.IntVar] = field(default_factory=dict)
    used: dict[str, cp_model.IntVar] = field(default_factory=dict)
    disp: dict[str, cp_model.IntVar] = field(default_factory=dict)
    gath: dict[str, cp_model.IntVar] = field(default_factory=dict)
    finish: dict[str, cp_model.IntVar] = field(default_factory=dict)
    end_of: dict[str, cp_model.IntVar] = field(default_factory=dict)


def _decisions(m: cp_model.CpModel, inst: PlacementInstance) -> _Vars:
    """The decisions: ``y[e, g, d]`` for every holder of every granule, ``load[e]`` for every
    expert that may be loaded whole to the home device."""
    y: dict[tuple[int, int, str], cp_model.IntVar] = {}
    for e in inst.experts:
        for g in range(inst.G):
            for d in inst.holders[e][g]:
                y[e, g, d] = m.new_bool_var(f"y_e{e}_g{g}_{d}")
    return _Vars(y, {e: m.new_bool_var(f"load_e{e}") for e in inst.load_parts})


def _each_granule_once(m: cp_model.CpModel, inst: PlacementInstance, v: _Vars) -> None:
    """Hard: every granule of every activated expert runs exactly once, on one of its holders
    or (the expert loaded) at home."""
    for e in inst.experts:
        for g in range(inst.G):
            terms = [v.y[e, g, d] for d in inst.holders[e][g]]
            m.add_exactly_one([*terms, v.load[e]] if e in v.load else terms)


def _loads_fit_home(m: cp_model.CpModel, inst: PlacementInstance, v: _Vars) -> None:
    """Hard: the experts loaded whole fit in the home device's free memory (bytes)."""
    if v.load:
        m.add(sum(v.load.values()) * int(inst.expert_bytes) <= int(inst.home_free_bytes))


def _one_shard_per_device(m: cp_model.CpModel, inst: PlacementInstance, v: _Vars) -> None:
    """Hard: the granules of an expert on one device are one contiguous run (one shard task),
    whose cycles ``dur[e, d]`` are the shard table at its granule count; ``uses[e, d]`` says
    whether the run is non-empty."""
    for e in inst.experts:
        for d in inst.devices:
            gs = [g for g in range(inst.G) if (e, g, d) in v.y]
            if not gs:
                continue
            n = m.new_int_var(0, inst.G, f"n_e{e}_{d}")
            m.add(n == sum(v.y[e, g, d] for g in gs))
            starts = []
            for g in gs:
                s = m.new_bool_var(f"start_e{e}_g{g}_{d}")
                prev = v.y.get((e, g - 1, d))
                if prev is None:
                    m.add(s >= v.y[e, g, d])
                else:
                    m.add(s >= v.y[e, g, d] - prev)
                starts.append(s)
            m.add(sum(starts) <= 1)
            v.dur[e, d] = m.new_int_var(0, max(inst.shard[e][d]), f"dur_e{e}_{d}")
            m.add_element(n, inst.shard[e][d], v.dur[e, d])
            u = m.new_bool_var(f"uses_e{e}_{d}")
            m.add(n >= 1).only_enforce_if(u)
            m.add(n == 0).only_enforce_if(u.negated())
            v.uses[e, d] = u


def _used(m: cp_model.CpModel, name: str, users: list[cp_model.IntVar]) -> cp_model.IntVar:
    """Hard: a device is used exactly when one of ``users`` (its runs or loads) is."""
    used = m.new_bool_var(name)
    if users:
        m.add_max_equality(used, users)
    else:
        m.add(used == 0)
    return used


def _remote_transfer_cycles(m: cp_model.CpModel, inst: PlacementInstance, v: _Vars) -> None:
    """Hard: a used remote device receives min(num_tokens, tokens routed to it) rows and sends
    as many back; its dispatch and return cycles are the links' transfer times for them."""
    hw, n_tokens = inst.problem.hardware, inst.problem.num_tokens
    for d in inst.remote:
        mine = [e for e in inst.experts if (e, d) in v.uses]
        v.used[d] = _used(m, f"used_{d}", [v.uses[e, d] for e in mine])
        routed = sum(inst.tokens[e] * v.uses[e, d] for e in mine)
        rows = m.new_int_var(0, n_tokens, f"rows_{d}")
        m.add_min_equality(rows, [routed, n_tokens])
        v.disp[d] = m.new_int_var(0, max(inst.dispatch[d]), f"dispatch_{d}")
        v.gath[d] = m.new_int_var(0, max(inst.gather[d]), f"gather_{d}")
        links = ((v.disp[d], inst.link(inst.home, d)), (v.gath[d], inst.link(d, inst.home)))
        for var, link in links:
            _transfer_cycles(
                m, var, rows, v.used[d], link, inst.problem.model.activation_bytes(1), hw.clock_hz
            )


def _link_queues(
    m: cp_model.CpModel, inst: PlacementInstance, v: _Vars, horizon: int
) -> dict[str, Chain]:
    """Every link's queue in the lowering's emission order: loads (experts ascending, chunks
    in order), dispatches, returns; a return is ready when its device's shards finish."""
    chains: dict[str, Chain] = {}
    for e in sorted(v.load):
        for src, c0, _, cycles in inst.load_parts[e]:
            d_var = m.new_int_var(0, cycles, f"loadcyc_e{e}_c{c0}")
            m.add(d_var == cycles * v.load[e])
            link_id = inst.link(src, inst.home).id
            chains.setdefault(link_id, []).append((f"load{e}_{c0}", d_var, None, v.load[e]))
    for d in inst.remote:
        chains.setdefault(inst.link(inst.home, d).id, []).append(
            (f"to_{d}", v.disp[d], None, v.used[d])
        )
    v.finish.update({d: m.new_int_var(0, horizon, f"finish_{d}") for d in inst.remote})
    for d in inst.remote:
        chains.setdefault(inst.link(d, inst.home).id, []).append(
            (f"from_{d}", v.gath[d], v.finish[d], v.used[d])
        )
    return chains


def _links_in_order(
    m: cp_model.CpModel, inst: PlacementInstance, v: _Vars, chains: dict[str, Chain], horizon: int
) -> None:
    """Hard: on every link the transfers end in queue order (one after another on a
    single-lane link), each no earlier than it is ready (``_chain``)."""
    lanes = {lk.id: lk.num_lanes for lk in inst.problem.hardware.links}
    for link_id, items in chains.items():
        ends = _chain(
            m,
            [(dv, rd, pr) for _, dv, rd, pr in items],
            horizon,
            f"link_{link_id}",
            lanes[link_id] == 1,
        )
        for (label, *_), end in zip(items, ends, strict=True):
            v.end_of[label] = end


def _compute(inst: PlacementInstance, v: _Vars) -> dict[str, cp_model.LinearExpr | int]:
    """Each device's shard cycles, back to back."""
    return {d: sum(v.dur[e, d] for e in inst.experts if (e, d) in v.dur) for d in inst.devices}


def _remote_finish(
    m: cp_model.CpModel,
    inst: PlacementInstance,
    v: _Vars,
    compute: dict[str, cp_model.LinearExpr | int],
) -> None:
    """Hard: a remote device starts after its dispatch ends and runs its shards back to back."""
    for d in inst.remote:
        m.add(v.finish[d] >= v.end_of[f"to_{d}"] + compute[d])


def _home_finish(
    m: cp_model.CpModel,
    inst: PlacementInstance,
    v: _Vars,
    compute: dict[str, cp_model.LinearExpr | int],
    horizon: int,
) -> cp_model.IntVar:
    """Hard: home runs its resident shards from cycle 0, then the loaded experts in load
    order, each after its last chunk arrives. Returns the cycle home is done."""
    home_finish = m.new_int_var(0, horizon, "finish_home")
    f_prev: cp_model.LinearExpr | int = compute[inst.home]
    for e in sorted(v.load):
        f = m.new_int_var(0, horizon, f"home_after_e{e}")
        cyc = inst.shard[e][inst.home][inst.G]
        m.add(f >= f_prev + cyc * v.load[e])
        for _, c0, _, _ in inst.load_parts[e]:
            m.add(f >= v.end_of[f"load{e}_{c0}"] + cyc).only_enforce_if(v.load[e])
        f_prev = f
    m.add(home_finish >= f_prev)
    return home_finish


def _reduce_makespan(
    m: cp_model.CpModel,
    inst: PlacementInstance,
    v: _Vars,
    home_used: cp_model.IntVar,
    home_finish: cp_model.IntVar,
    horizon: int,
) -> cp_model.IntVar:
    """Hard: the reduce starts after home is done and every return has arrived, and takes the
    reduce table's cycles at the number of partial sums (used devices); the makespan is its
    end (the objective)."""
    partials = m.new_int_var(0, len(inst.devices), "partials")
    m.add(partials == sum(v.used.values()) + home_used)
    red = m.new_int_var(0, max(inst.reduce), "reduce")
    m.add_element(partials, inst.reduce, red)
    start_red = m.new_int_var(0, horizon, "reduce_start")
    m.add(start_red >= home_finish)
    for d in inst.remote:
        m.add(start_red >= v.end_of[f"from_{d}"])
    makespan = m.new_int_var(0, horizon, "makespan")
    m.add(makespan >= start_red + red)
    return makespan


def _hint(m: cp_model.CpModel, v: _Vars, hint: Assignment) -> None:
    """Soft: start the search from ``hint`` (greedy's assignment)."""
    for (e, g, d), var in v.y.items():
        hinted = hint.runs.get(e, ())
        m.add_hint(var, int(any(dev == d and g0 <= g < g1 for dev, g0, g1 in hinted)))
    for e, var in v.load.items():
        m.add_hint(var, int(e in hint.loaded))


def build_model(inst: PlacementInstance, horizon: int) -> tuple[cp_model.CpModel, _Vars]:
    """The layer's CP-SAT model, one function per constraint family, minimizing the makespan
    (at most ``horizon`` cycles)."""
    m = cp_model.CpModel()
    v = _decisions(m, inst)
    _each_granule_once(m, inst, v)
    _loads_fit_home(m, inst, v)
    _one_shard_per_device(m, inst, v)
    _remote_transfer_cycles(m, inst, v)
    home_users = [v.uses[e, inst.home] for e in inst.experts if (e, inst.home) in v.uses]
    home_used = _used(m, "used_home", home_users + list(v.load.values()))
    chains = _link_queues(m, inst, v, horizon)
    _links_in_order(m, inst, v, chains, horizon)
    compute = _compute(inst, v)
    _remote_finish(m, inst, v, compute)
    home_finish = _home_finish(m, inst, v, compute, horizon)
    m.minimize(_reduce_makespan(m, inst, v, home_used, home_finish, horizon))
    return m, v


def solve_cpsat(
    inst: PlacementInstance,
    hint: Assignment | None,
    horizon: int,
    budget: Budget,
) -> CpsatOutcome:
    """Minimize the layer makespan under ``budget``; ``horizon`` bounds it (the hint's
    makespan works)."""
    m, v = build_model(inst, horizon)
    if hint is not None:
        _hint(m, v, hint)
    # Only large models need help completing the hint, and only a long solve can afford it.
    room = budget.deadline.left() if budget.work_s is None else budget.work_s
    if hint is not None and len(v.y) > 400 and room > 0.5:
        share = min(1.0, room / 4)
        fix = (
            Budget(Deadline(share), None, 1, budget.seed)
            if budget.work_s is None
            else Budget(budget.deadline, share, 1, budget.seed)
        )
        _complete_hint(m, fix)
    solver, status = run_cpsat(m, budget)
    if status not in ("optimal", "feasible"):
        return CpsatOutcome(None, status, None, None, cut_by_wall_clock(solver, budget))
    loaded = tuple(e for e in sorted(v.load) if solver.value(v.load[e]))
    return CpsatOutcome(
        inst.assignment_from(lambda e, g, d: bool(solver.value(v.y[e, g, d])), loaded),
        status,
        int(solver.objective_value),
        int(solver.best_objective_bound),
        cut_by_wall_clock(solver, budget),
    )


def _complete_hint(m: cp_model.CpModel, budget: Budget) -> None:
    """Turn a hint on the decision variables into a hint on every variable.

    CP-SAT is slow to complete a partial hint on large models; solving once with the hinted
    variables fixed derives all the others, which then become the hint.
    """
    fixer = cp_model.CpSolver()
    configure(fixer, budget)
    fixer.parameters.fix_variables_to_their_hinted_value = True
    if fixer.solve(m) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return
    variables = [m.get_int_var_from_proto_index(i) for i in range(len(m.proto.variables))]
    values = [fixer.value(v) for v in variables]
    m.clear_hints()
    for v, val in zip(variables, values, strict=True):
        m.add_hint(v, val)
