"""MILP placement (PuLP + CBC): the CP-SAT model, linearized.

Same decisions (granule -> holder, expert loaded home) and timeline as ``cpsat.py``; shard
cycles by one-hot tables over the granule count; optional constraints by big-M with the
horizon; dispatch and gather cycles as continuous ``latency + rows x per-row`` (a relaxation
of the ceiling to whole cycles, so the MILP optimum is a valid lower bound). The assignment is
re-predicted exactly by the caller. CBC's ``status`` says Optimal even when it stopped on the
time limit with an integer solution; ``sol_status`` tells the two apart and is what is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulp

from solvers.common import Budget
from solvers.milp_run import cbc
from solvers.placement.problem import Assignment, PlacementInstance


@dataclass(frozen=True)
class MilpOutcome:
    """What CBC found: an assignment (or None), its status and the relaxed objective."""

    assignment: Assignment | None
    status: str  # optimal | feasible | infeasible | unknown
    objective: float | None


Expr = Any  # a PuLP affine expression or variable


@dataclass
class _Vars:
    """The model's variables and expressions, keyed by domain ids (as in ``cpsat.py``):
    ``y[e, g, d]``, ``load[e]``; ``dur[e, d]`` shard cycles by one-hot over the granule
    count; ``uses[e, d]``; ``used[d]``; ``disp[d]``/``gath[d]``; ``finish[d]``; ``end_of``."""

    y: dict[tuple[int, int, str], pulp.LpVariable]
    load: dict[int, pulp.LpVariable]
    dur: dict[tuple[int, str], Expr] = field(default_factory=dict)
    uses: dict[tuple[int, str], Expr] = field(default_factory=dict)
    used: dict[str, pulp.LpVariable] = field(default_factory=dict)
    disp: dict[str, pulp.LpVariable] = field(default_factory=dict)
    gath: dict[str, pulp.LpVariable] = field(default_factory=dict)
    finish: dict[str, pulp.LpVariable] = field(default_factory=dict)
    end_of: dict[str, pulp.LpVariable] = field(default_factory=dict)


def _decisions(prob: pulp.LpProblem, inst: PlacementInstance) -> _Vars:
    """The binary decisions: granule on holder, expert loaded whole to the home device."""
    y = {
        (e, g, d): prob.add_variable(f"y_e{e}_g{g}_{d}", cat="Binary")
        for e in inst.experts
        for g in range(inst.G)
        for d in inst.holders[e][g]
    }
    return _Vars(y, {e: prob.add_variable(f"load_e{e}", cat="Binary") for e in inst.load_parts})


def _each_granule_once(prob: pulp.LpProblem, inst: PlacementInstance, v: _Vars) -> None:
    """Hard: every granule of every activated expert runs exactly once (or its expert is
    loaded home)."""
    for e in inst.experts:
        for g in range(inst.G):
            terms = [v.y[e, g, d] for d in inst.holders[e][g]]
            terms += [v.load[e]] if e in v.load else []
            prob += pulp.lpSum(terms) == 1, f"once_e{e}_g{g}"


def _loads_fit_home(prob: pulp.LpProblem, inst: PlacementInstance, v: _Vars) -> None:
    """Hard: the loaded experts fit in the home device's free memory (bytes)."""
    if v.load:
        prob += (
            pulp.lpSum(v.load.values()) * inst.expert_bytes <= inst.home_free_bytes,
            "home_memory",
        )


def _one_shard_per_device(prob: pulp.LpProblem, inst: PlacementInstance, v: _Vars) -> None:
    """Hard: an expert's granules on one device are one contiguous run; its cycles are the
    shard table at the run's length (one-hot ``z`` over 0..G granules)."""
    G = inst.G
    for e in inst.experts:
        for d in inst.devices:
            gs = [g for g in range(G) if (e, g, d) in v.y]
            if not gs:
                continue
            z = [prob.add_variable(f"z_e{e}_{d}_n{k}", cat="Binary") for k in range(G + 1)]
            prob += pulp.lpSum(z) == 1, f"onehot_e{e}_{d}"
            prob += (
                pulp.lpSum(k * z[k] for k in range(G + 1)) == pulp.lpSum(v.y[e, g, d] for g in gs),
                f"count_e{e}_{d}",
            )
            starts = []
            for g in gs:
                s = prob.add_variable(f"start_e{e}_g{g}_{d}", cat="Binary")
                prev = v.y.get((e, g - 1, d))
                prob += s >= v.y[e, g, d] - (prev if prev is not None else 0), f"run_e{e}_g{g}_{d}"
                starts.append(s)
            prob += pulp.lpSum(starts) <= 1, f"contiguous_e{e}_{d}"
            v.dur[e, d] = pulp.lpSum(inst.shard[e][d][k] * z[k] for k in range(G + 1))
            v.uses[e, d] = 1 - z[0]


def _remote_transfer_cycles(prob: pulp.LpProblem, inst: PlacementInstance, v: _Vars) -> None:
    """Hard: a remote device is used when it computes anything; it receives min(num_tokens,
    tokens routed to it) rows (``capped`` picks the cap) and returns as many; dispatch and
    return cycles are at least latency + rows x per-row cycles (relaxed from whole cycles)."""
    hw, n_tokens, home = inst.problem.hardware, inst.problem.num_tokens, inst.home
    v.used.update({d: prob.add_variable(f"used_{d}", cat="Binary") for d in inst.remote})
    row_bytes = inst.problem.model.activation_bytes(1)
    for d in inst.remote:
        mine = [v.uses[e, d] for e in inst.experts if (e, d) in v.uses]
        for i, u in enumerate(mine):
            prob += v.used[d] >= u, f"used_{d}_{i}"
        prob += v.used[d] <= pulp.lpSum(mine), f"unused_{d}"
        routed = pulp.lpSum(inst.tokens[e] * v.uses[e, d] for e in inst.experts if (e, d) in v.uses)
        rows = prob.add_variable(f"rows_{d}", lowBound=0)
        capped = prob.add_variable(f"capped_{d}", cat="Binary")
        total = sum(inst.tokens.values())
        prob += rows >= routed - total * capped, f"rows_sum_{d}"
        prob += rows >= n_tokens * capped, f"rows_cap_{d}"
        for name, var_map, link in (
            ("dispatch", v.disp, inst.link(home, d)),
            ("gather", v.gath, inst.link(d, home)),
        ):
            var_map[d] = prob.add_variable(f"{name}_{d}", lowBound=0)
            lat = link.latency_s * hw.clock_hz
            per_row = row_bytes / link.bandwidth_bytes_per_s * hw.clock_hz
            prob += var_map[d] >= lat * v.used[d] + per_row * rows, f"{name}_time_{d}"


def _home_used(prob: pulp.LpProblem, inst: PlacementInstance, v: _Vars) -> pulp.LpVariable:
    """Hard: home counts as a partial sum when it computes a shard or a loaded expert."""
    home_used = prob.add_variable("used_home", cat="Binary")
    terms = [v.uses[e, inst.home] for e in inst.experts if (e, inst.home) in v.uses]
    for i, u in enumerate(terms + list(v.load.values())):
        prob += home_used >= u, f"used_home_{i}"
    return home_used


def _link_queues(
    prob: pulp.LpProblem, inst: PlacementInstance, v: _Vars
) -> dict[str, list[tuple[str, Any, Any, Any]]]:
    """Every link's queue in the lowering's emission order: loads, dispatches, returns (a
    return is ready when its device's shards finish)."""
    items: dict[str, list[tuple[str, Any, Any, Any]]] = {}
    for e in sorted(v.load):
        for src, c0, _, cycles in inst.load_parts[e]:
            items.setdefault(inst.link(src, inst.home).id, []).append(
                (f"load{e}_{c0}", cycles * v.load[e], None, None)
            )
    for d in inst.remote:
        items.setdefault(inst.link(inst.home, d).id, []).append((f"to_{d}", v.disp[d], None, None))
    v.finish.update({d: prob.add_variable(f"finish_{d}", lowBound=0) for d in inst.remote})
    for d in inst.remote:
        items.setdefault(inst.link(d, inst.home).id, []).append(
            (f"from_{d}", v.gath[d], v.finish[d], v.used[d])
        )
    return items


def _links_in_order(
    prob: pulp.LpProblem,
    inst: PlacementInstance,
    v: _Vars,
    items: dict[str, list[tuple[str, Any, Any, Any]]],
    big: float,
) -> None:
    """Hard: transfers on one link end in order (one after another on a single-lane link),
    each after its ready time when present (big-M ``big`` when absent)."""
    lanes = {lk.id: lk.num_lanes for lk in inst.problem.hardware.links}
    for link_id, its in items.items():
        prev = None
        for label, d_expr, ready, present in its:
            end = prob.add_variable(f"end_{label}", lowBound=0)
            after = prev if prev is not None and lanes[link_id] == 1 else 0
            prob.addConstraint(end >= d_expr + after, f"seq_{label}")
            if ready is not None:
                slack = big * (1 - present) if present is not None else 0
                prob.addConstraint(end >= ready + d_expr - slack, f"ready_{label}")
            v.end_of[label] = end
            prev = end


def _remote_finish(
    prob: pulp.LpProblem, inst: PlacementInstance, v: _Vars, compute: dict[str, Expr]
) -> None:
    """Hard: a remote device starts after its dispatch ends and runs its shards back to back."""
    for d in inst.remote:
        prob += v.finish[d] >= v.end_of[f"to_{d}"] + compute[d], f"finish_{d}"


def _home_finish(
    prob: pulp.LpProblem, inst: PlacementInstance, v: _Vars, compute: dict[str, Expr], big: float
) -> Expr:
    """Hard: home runs its resident shards from 0, then the loaded experts in load order, each
    after its chunks arrive (big-M when not loaded). Returns when home is done."""
    f_prev: Any = compute[inst.home]
    for e in sorted(v.load):
        f = prob.add_variable(f"home_after_e{e}", lowBound=0)
        cyc = inst.shard[e][inst.home][inst.G]
        prob += f >= f_prev + cyc * v.load[e], f"home_seq_e{e}"
        for _, c0, _, _ in inst.load_parts[e]:
            prob += (
                f >= v.end_of[f"load{e}_{c0}"] + cyc - big * (1 - v.load[e]),
                f"home_load_e{e}_{c0}",
            )
        f_prev = f
    return f_prev


def _reduce_makespan(
    prob: pulp.LpProblem,
    inst: PlacementInstance,
    v: _Vars,
    home_used: pulp.LpVariable,
    home_done: Expr,
    big: float,
) -> pulp.LpVariable:
    """Hard: the reduce starts after home and every return, lasts the reduce table's cycles at
    the number of partial sums (one-hot ``w``); the makespan (at most ``big``) is its end."""
    w = [prob.add_variable(f"partials_{p}", cat="Binary") for p in range(len(inst.devices) + 1)]
    prob += pulp.lpSum(w) == 1, "partials_onehot"
    prob += (
        pulp.lpSum(p * w[p] for p in range(len(w))) == pulp.lpSum(v.used.values()) + home_used,
        "partials",
    )
    red = pulp.lpSum(inst.reduce[p] * w[p] for p in range(len(w)))
    start_red = prob.add_variable("reduce_start", lowBound=0)
    prob += start_red >= home_done, "reduce_after_home"
    for d in inst.remote:
        prob += start_red >= v.end_of[f"from_{d}"], f"reduce_after_{d}"
    makespan = prob.add_variable("makespan", lowBound=0, upBound=big)
    prob += makespan >= start_red + red, "makespan"
    return makespan


def build_model(inst: PlacementInstance, horizon: int) -> tuple[pulp.LpProblem, _Vars]:
    """The layer's MILP, one function per constraint family, minimizing the makespan."""
    big = float(horizon)
    prob = pulp.LpProblem(f"placement_L{inst.problem.layer}", pulp.LpMinimize)
    v = _decisions(prob, inst)
    _each_granule_once(prob, inst, v)
    _loads_fit_home(prob, inst, v)
    _one_shard_per_device(prob, inst, v)
    _remote_transfer_cycles(prob, inst, v)
    home_used = _home_used(prob, inst, v)
    items = _link_queues(prob, inst, v)
    _links_in_order(prob, inst, v, items, big)
    compute = {
        d: pulp.lpSum(v.dur[e, d] for e in inst.experts if (e, d) in v.dur) for d in inst.devices
    }
    _remote_finish(prob, inst, v, compute)
    home_done = _home_finish(prob, inst, v, compute, big)
    prob += _reduce_makespan(prob, inst, v, home_used, home_done, big)
    return prob, v


def solve_milp(
    inst: PlacementInstance,
    hint: Assignment | None,
    horizon: int,
    budget: Budget,
) -> MilpOutcome:
    """Minimize the layer makespan with CBC under ``budget``."""
    prob, v = build_model(inst, horizon)
    if hint is not None:
        for (e, g, d), var in v.y.items():
            hinted = hint.runs.get(e, ())
            var.setInitialValue(int(any(dev == d and g0 <= g < g1 for dev, g0, g1 in hinted)))
        for e, var in v.load.items():
            var.setInitialValue(int(e in hint.loaded))
    prob.solve(cbc(budget, warm_start=hint is not None))
    if prob.sol_status == pulp.LpSolutionInfeasible:
        return MilpOutcome(None, "infeasible", None)
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return MilpOutcome(None, "unknown", None)
    loaded = tuple(e for e in sorted(v.load) if (v.load[e].value() or 0) > 0.5)
    status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible"
    chosen = inst.assignment_from(lambda e, g, d: (v.y[e, g, d].value() or 0) > 0.5, loaded)
    return MilpOutcome(chosen, status, pulp.value(prob.objective))
