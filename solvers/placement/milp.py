"""MILP placement (PuLP + CBC): the CP-SAT model, linearized.

Same decisions (granule -> holder, expert loaded home) and timeline as ``cpsat.py``; shard
cycles by one-hot tables over the granule count; optional constraints by big-M with the
horizon; dispatch and gather cycles as continuous ``latency + rows x per-row`` (a relaxation
of the ceiling to whole cycles, so the MILP optimum is a valid lower bound). The assignment is
re-predicted exactly by the caller. CBC's ``status`` says Optimal even when it stopped on the
time limit with an integer solution; ``sol_status`` tells the two apart and is what is read.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def solve_milp(
    inst: PlacementInstance,
    hint: Assignment | None,
    horizon: int,
    budget: Budget,
) -> MilpOutcome:
    """Minimize the layer makespan with CBC under ``budget``."""
    hw, model = inst.problem.hardware, inst.problem.model
    G, home, N = inst.G, inst.home, inst.problem.num_tokens
    big = float(horizon)
    prob = pulp.LpProblem(f"placement_L{inst.problem.layer}", pulp.LpMinimize)
    y = {
        (e, g, d): prob.add_variable(f"y_e{e}_g{g}_{d}", cat="Binary")
        for e in inst.experts
        for g in range(G)
        for d in inst.holders[e][g]
    }
    load = {e: prob.add_variable(f"load_e{e}", cat="Binary") for e in inst.load_parts}
    for e in inst.experts:
        for g in range(G):
            terms = [y[e, g, d] for d in inst.holders[e][g]] + ([load[e]] if e in load else [])
            prob += pulp.lpSum(terms) == 1, f"once_e{e}_g{g}"
    if load:
        prob += pulp.lpSum(load.values()) * inst.expert_bytes <= inst.home_free_bytes, "home_memory"

    dur: dict[tuple[int, str], pulp.LpAffineExpression] = {}
    uses: dict[tuple[int, str], pulp.LpAffineExpression] = {}
    for e in inst.experts:
        for d in inst.devices:
            gs = [g for g in range(G) if (e, g, d) in y]
            if not gs:
                continue
            z = [prob.add_variable(f"z_e{e}_{d}_n{k}", cat="Binary") for k in range(G + 1)]
            prob += pulp.lpSum(z) == 1, f"onehot_e{e}_{d}"
            prob += (
                pulp.lpSum(k * z[k] for k in range(G + 1)) == pulp.lpSum(y[e, g, d] for g in gs),
                f"count_e{e}_{d}",
            )
            starts = []
            for g in gs:
                s = prob.add_variable(f"start_e{e}_g{g}_{d}", cat="Binary")
                prev = y.get((e, g - 1, d))
                prob += s >= y[e, g, d] - (prev if prev is not None else 0), f"run_e{e}_g{g}_{d}"
                starts.append(s)
            prob += pulp.lpSum(starts) <= 1, f"contiguous_e{e}_{d}"
            dur[e, d] = pulp.lpSum(inst.shard[e][d][k] * z[k] for k in range(G + 1))
            uses[e, d] = 1 - z[0]

    used = {d: prob.add_variable(f"used_{d}", cat="Binary") for d in inst.remote}
    disp: dict[str, pulp.LpVariable] = {}
    gath: dict[str, pulp.LpVariable] = {}
    row_bytes = model.activation_bytes(1)
    for d in inst.remote:
        mine = [uses[e, d] for e in inst.experts if (e, d) in uses]
        for i, u in enumerate(mine):
            prob += used[d] >= u, f"used_{d}_{i}"
        prob += used[d] <= pulp.lpSum(mine), f"unused_{d}"
        routed = pulp.lpSum(inst.tokens[e] * uses[e, d] for e in inst.experts if (e, d) in uses)
        rows = prob.add_variable(f"rows_{d}", lowBound=0)
        capped = prob.add_variable(f"capped_{d}", cat="Binary")
        total = sum(inst.tokens.values())
        prob += rows >= routed - total * capped, f"rows_sum_{d}"
        prob += rows >= N * capped, f"rows_cap_{d}"
        for name, var_map, link in (
            ("dispatch", disp, inst.link(home, d)),
            ("gather", gath, inst.link(d, home)),
        ):
            var_map[d] = prob.add_variable(f"{name}_{d}", lowBound=0)
            lat = link.latency_s * hw.clock_hz
            per_row = row_bytes / link.bandwidth_bytes_per_s * hw.clock_hz
            prob += var_map[d] >= lat * used[d] + per_row * rows, f"{name}_time_{d}"
    home_used = prob.add_variable("used_home", cat="Binary")
    home_terms = [uses[e, home] for e in inst.experts if (e, home) in uses] + list(load.values())
    for i, u in enumerate(home_terms):
        prob += home_used >= u, f"used_home_{i}"

    def chain(link_id: str, items: list[tuple[str, Any, Any, Any]]) -> dict[str, pulp.LpVariable]:
        """Hard: transfers on one link end in order, each after its ready time when present."""
        single = next(lk for lk in hw.links if lk.id == link_id).num_lanes == 1
        ends: dict[str, pulp.LpVariable] = {}
        prev = None
        for label, d_expr, ready, present in items:
            end = prob.add_variable(f"end_{label}", lowBound=0)
            prob.addConstraint(
                end >= d_expr + (prev if prev is not None and single else 0), f"seq_{label}"
            )
            if ready is not None:
                slack = big * (1 - present) if present is not None else 0
                prob.addConstraint(end >= ready + d_expr - slack, f"ready_{label}")
            ends[label] = end
            prev = end
        return ends

    items: dict[str, list[tuple[str, Any, Any, Any]]] = {}
    loaded_order = sorted(load)
    for e in loaded_order:
        for src, c0, _, cycles in inst.load_parts[e]:
            items.setdefault(inst.link(src, home).id, []).append(
                (f"load{e}_{c0}", cycles * load[e], None, None)
            )
    for d in inst.remote:
        items.setdefault(inst.link(home, d).id, []).append((f"to_{d}", disp[d], None, None))
    finish = {d: prob.add_variable(f"finish_{d}", lowBound=0) for d in inst.remote}
    for d in inst.remote:
        items.setdefault(inst.link(d, home).id, []).append(
            (f"from_{d}", gath[d], finish[d], used[d])
        )
    end_of: dict[str, pulp.LpVariable] = {}
    for link_id, its in items.items():
        end_of.update(chain(link_id, its))
    compute = {
        d: pulp.lpSum(dur[e, d] for e in inst.experts if (e, d) in dur) for d in inst.devices
    }
    for d in inst.remote:
        prob += finish[d] >= end_of[f"to_{d}"] + compute[d], f"finish_{d}"
    f_prev: Any = compute[home]
    for e in loaded_order:
        f = prob.add_variable(f"home_after_e{e}", lowBound=0)
        cyc = inst.shard[e][home][G]
        prob += f >= f_prev + cyc * load[e], f"home_seq_e{e}"
        for _, c0, _, _ in inst.load_parts[e]:
            prob += f >= end_of[f"load{e}_{c0}"] + cyc - big * (1 - load[e]), f"home_load_e{e}_{c0}"
        f_prev = f
    w = [prob.add_variable(f"partials_{p}", cat="Binary") for p in range(len(inst.devices) + 1)]
    prob += pulp.lpSum(w) == 1, "partials_onehot"
    prob += (
        pulp.lpSum(p * w[p] for p in range(len(w))) == pulp.lpSum(used.values()) + home_used,
        "partials",
    )
    red = pulp.lpSum(inst.reduce[p] * w[p] for p in range(len(w)))
    start_red = prob.add_variable("reduce_start", lowBound=0)
    prob += start_red >= f_prev, "reduce_after_home"
    for d in inst.remote:
        prob += start_red >= end_of[f"from_{d}"], f"reduce_after_{d}"
    makespan = prob.add_variable("makespan", lowBound=0, upBound=big)
    prob += makespan >= start_red + red, "makespan"
    prob += makespan

    if hint is not None:
        for (e, g, d), var in y.items():
            hinted = hint.runs.get(e, ())
            var.setInitialValue(int(any(dev == d and g0 <= g < g1 for dev, g0, g1 in hinted)))
        for e, var in load.items():
            var.setInitialValue(int(e in hint.loaded))
    prob.solve(cbc(budget, warm_start=hint is not None))
    if prob.sol_status == pulp.LpSolutionInfeasible:
        return MilpOutcome(None, "infeasible", None)
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return MilpOutcome(None, "unknown", None)
    loaded = tuple(e for e in loaded_order if (load[e].value() or 0) > 0.5)
    status = "optimal" if prob.sol_status == pulp.LpSolutionOptimal else "feasible"
    chosen = inst.assignment_from(lambda e, g, d: (y[e, g, d].value() or 0) > 0.5, loaded)
    return MilpOutcome(chosen, status, pulp.value(prob.objective))
