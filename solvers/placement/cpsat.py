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

from dataclasses import dataclass

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


def solve_cpsat(
    inst: PlacementInstance,
    hint: Assignment | None,
    horizon: int,
    budget: Budget,
) -> CpsatOutcome:
    """Minimize the layer makespan under ``budget``; ``horizon`` bounds it (the hint's
    makespan works)."""
    hw = inst.problem.hardware
    G, home, N = inst.G, inst.home, inst.problem.num_tokens
    m = cp_model.CpModel()
    y: dict[tuple[int, int, str], cp_model.IntVar] = {}
    for e in inst.experts:
        for g in range(G):
            for d in inst.holders[e][g]:
                y[e, g, d] = m.new_bool_var(f"y_e{e}_g{g}_{d}")
    load = {e: m.new_bool_var(f"load_e{e}") for e in inst.load_parts}
    # Hard: every granule of every activated expert runs exactly once (or its expert is loaded).
    for e in inst.experts:
        for g in range(G):
            terms = [y[e, g, d] for d in inst.holders[e][g]]
            m.add_exactly_one([*terms, load[e]] if e in load else terms)
    # Hard: loaded experts fit in the home device's free memory.
    if load:
        per = int(inst.expert_bytes)
        m.add(sum(load.values()) * per <= int(inst.home_free_bytes))

    dur: dict[tuple[int, str], cp_model.IntVar] = {}
    used_by: dict[tuple[int, str], cp_model.IntVar] = {}
    for e in inst.experts:
        for d in inst.devices:
            gs = [g for g in range(G) if (e, g, d) in y]
            if not gs:
                continue
            n = m.new_int_var(0, G, f"n_e{e}_{d}")
            m.add(n == sum(y[e, g, d] for g in gs))
            # Hard: one contiguous run per (expert, device), so one shard task each.
            starts = []
            for g in gs:
                s = m.new_bool_var(f"start_e{e}_g{g}_{d}")
                prev = y.get((e, g - 1, d))
                if prev is None:
                    m.add(s >= y[e, g, d])
                else:
                    m.add(s >= y[e, g, d] - prev)
                starts.append(s)
            m.add(sum(starts) <= 1)
            dur[e, d] = m.new_int_var(0, max(inst.shard[e][d]), f"dur_e{e}_{d}")
            m.add_element(n, inst.shard[e][d], dur[e, d])
            u = m.new_bool_var(f"uses_e{e}_{d}")
            m.add(n >= 1).only_enforce_if(u)
            m.add(n == 0).only_enforce_if(u.negated())
            used_by[e, d] = u

    # Remote devices: rows dispatched, dispatch and gather cycles, used flag.
    used: dict[str, cp_model.IntVar] = {}
    disp: dict[str, cp_model.IntVar] = {}
    gath: dict[str, cp_model.IntVar] = {}
    for d in inst.remote:
        us = [used_by[e, d] for e in inst.experts if (e, d) in used_by]
        used[d] = m.new_bool_var(f"used_{d}")
        if us:
            m.add_max_equality(used[d], us)
        else:
            m.add(used[d] == 0)
        routed = sum(inst.tokens[e] * used_by[e, d] for e in inst.experts if (e, d) in used_by)
        rows = m.new_int_var(0, N, f"rows_{d}")
        m.add_min_equality(rows, [routed, N])
        disp[d] = m.new_int_var(0, max(inst.dispatch[d]), f"dispatch_{d}")
        gath[d] = m.new_int_var(0, max(inst.gather[d]), f"gather_{d}")
        for var, link in ((disp[d], inst.link(home, d)), (gath[d], inst.link(d, home))):
            _transfer_cycles(
                m, var, rows, used[d], link, inst.problem.model.activation_bytes(1), hw.clock_hz
            )
    home_users = [used_by[e, home] for e in inst.experts if (e, home) in used_by] + list(
        load.values()
    )
    home_used = m.new_bool_var("used_home")
    if home_users:
        m.add_max_equality(home_used, home_users)
    else:
        m.add(home_used == 0)

    # Link chains, in the lowering's emission order: loads, dispatches, returns.
    loaded_order = sorted(load)
    # chains[link]: (label, cycles, ready time or None, presence) in the link's queue order.
    chains: dict[
        str, list[tuple[str, cp_model.IntVar, cp_model.LinearExpr | None, cp_model.IntVar | None]]
    ] = {}
    for e in loaded_order:
        for src, c0, _, cycles in inst.load_parts[e]:
            d_var = m.new_int_var(0, cycles, f"loadcyc_e{e}_c{c0}")
            m.add(d_var == cycles * load[e])
            link_id = inst.link(src, home).id
            chains.setdefault(link_id, []).append((f"load{e}_{c0}", d_var, None, load[e]))
    for d in inst.remote:
        chains.setdefault(inst.link(home, d).id, []).append((f"to_{d}", disp[d], None, used[d]))
    compute = {d: sum(dur[e, d] for e in inst.experts if (e, d) in dur) for d in inst.devices}
    # A remote device's return is ready when its shards finish (constrained below).
    finish = {d: m.new_int_var(0, horizon, f"finish_{d}") for d in inst.remote}
    for d in inst.remote:
        chains.setdefault(inst.link(d, home).id, []).append(
            (f"from_{d}", gath[d], finish[d], used[d])
        )
    end_of: dict[str, cp_model.IntVar] = {}
    lanes = {lk.id: lk.num_lanes for lk in hw.links}
    for link_id, items in chains.items():
        ends = _chain(
            m,
            [(dv, rd, pr) for _, dv, rd, pr in items],
            horizon,
            f"link_{link_id}",
            lanes[link_id] == 1,
        )
        for (label, *_), end in zip(items, ends, strict=True):
            end_of[label] = end
    for d in inst.remote:
        # A remote device starts after its dispatch ends and runs its shards back to back.
        m.add(finish[d] >= end_of[f"to_{d}"] + compute[d])
    # Home: resident shards from 0, then loaded experts in load order, each after its load.
    home_finish = m.new_int_var(0, horizon, "finish_home")
    f_prev: cp_model.LinearExpr | int = compute[home]
    for e in loaded_order:
        f = m.new_int_var(0, horizon, f"home_after_e{e}")
        cyc = inst.shard[e][home][G]
        m.add(f >= f_prev + cyc * load[e])
        for _, c0, _, _ in inst.load_parts[e]:
            m.add(f >= end_of[f"load{e}_{c0}"] + cyc).only_enforce_if(load[e])
        f_prev = f
    m.add(home_finish >= f_prev)
    # Reduce: after every return and the home shards, over all used devices' partial sums.
    partials = m.new_int_var(0, len(inst.devices), "partials")
    m.add(partials == sum(used.values()) + home_used)
    red = m.new_int_var(0, max(inst.reduce), "reduce")
    m.add_element(partials, inst.reduce, red)
    start_red = m.new_int_var(0, horizon, "reduce_start")
    m.add(start_red >= home_finish)
    for d in inst.remote:
        m.add(start_red >= end_of[f"from_{d}"])
    makespan = m.new_int_var(0, horizon, "makespan")
    m.add(makespan >= start_red + red)
    m.minimize(makespan)

    if hint is not None:
        for (e, g, d), var in y.items():
            hinted = hint.runs.get(e, ())
            m.add_hint(var, int(any(dev == d and g0 <= g < g1 for dev, g0, g1 in hinted)))
        for e, var in load.items():
            m.add_hint(var, int(e in hint.loaded))

    # Only large models need help completing the hint, and only a long solve can afford it.
    room = budget.deadline.left() if budget.work_s is None else budget.work_s
    if hint is not None and len(y) > 400 and room > 0.5:
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
    loaded = tuple(e for e in loaded_order if solver.value(load[e]))
    return CpsatOutcome(
        inst.assignment_from(lambda e, g, d: bool(solver.value(y[e, g, d])), loaded),
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
