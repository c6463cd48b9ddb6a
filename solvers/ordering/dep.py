"""Disaggregated expert parallelism (FinDEP, arXiv 2512.21487; MegaScale-Infer): one run of MoE
layers split into r micro-batches on an attention group (attention + shared experts) and an
expert group (routed experts), with dispatch (A2E) and combine (E2A) over the network.

The groups are symmetric (data-parallel attention GPUs, experts spread evenly over expert
GPUs, balanced routing), so one attention GPU, one expert GPU and their NICs stand for the
whole cluster: per micro-batch the attention GPU handles ``batch / num_attention_gpus / r``
tokens, sends their ``top_k`` copies over its A2E NIC, and the expert GPU computes its
``E / num_expert_gpus`` experts on its share of the rows and returns them over its E2A NIC.

Per micro-batch i of layer l: attention -> [shared experts] and A2E dispatch -> expert shards
-> E2A combine; layer l + 1's attention of i waits for l's combine and shared experts of i.

Policies, each scored on the executor:
* ``serial``: one micro-batch, nothing overlaps (shared experts before the dispatch).
* ``pppipe``: MegaScale-Infer's ping-pong: m micro-batches; the attention GPU runs attention
  and shared experts of each micro-batch back to back, in micro-batch order; m is searched.
* moesched: r is searched and the order of every task on every resource is solved
  (``solvers.ordering``), so shared experts fill the attention GPU's idle time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from hwmodel.plan import ComputeTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.spec import Hardware, ModelSpec
from solvers import portfolio, timing
from solvers.common import Backend, Budget, budget_of
from solvers.common import account as make_account
from solvers.ordering.graph import AnyTask, TaskGraph
from solvers.ordering.solve import ordering_portfolio

Policy = Literal["serial", "pppipe", "free"]


@dataclass(frozen=True)
class DepProblem:
    """A run of ``num_layers`` MoE layers for one decode step of ``batch_tokens`` tokens."""

    hardware: Hardware
    model: ModelSpec
    batch_tokens: int
    num_layers: int = 2
    context_tokens: int = 1024

    def check(self) -> list[str]:
        """Messages (field: reason) for every way the problem cannot be built."""
        out = []
        for group in ("attention", "experts"):
            if group not in self.hardware.groups:
                out.append(f"hardware.groups: needs an '{group}' group (a DEP preset has both)")
        if out:
            return out
        attn, exp = self.hardware.groups["attention"], self.hardware.groups["experts"]
        if (
            self.hardware.link_between(attn[0], exp[0]) is None
            or self.hardware.link_between(exp[0], attn[0]) is None
        ):
            out.append("hardware.links: need links both ways between the groups")
        if self.batch_tokens < len(attn):
            out.append(f"batch_tokens: fewer than one token per attention GPU ({len(attn)})")
        if self.model.num_routed_experts % len(exp):
            out.append("model.num_routed_experts: must divide evenly over the expert GPUs")
        return out

    def residency(self) -> Residency:
        """Every expert GPU holds its own experts (expert g * E/P .. ) for every layer."""
        exp_gpus = self.hardware.groups["experts"]
        per = self.model.num_routed_experts // len(exp_gpus)
        return Residency(
            by_memory={
                self.hardware.device(d).memory_id: tuple(
                    WeightSlice(expert=g * per + e) for e in range(per)
                )
                for g, d in enumerate(exp_gpus)
            }
        )


def _split(total: int, parts: int) -> list[int]:
    """``total`` into ``parts`` integers differing by at most one (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def dep_tasks(problem: DepProblem, r: int, policy: Policy) -> list[AnyTask]:
    """The task list of the run of layers with r micro-batches, in the policy's order."""
    hw, model = problem.hardware, problem.model
    attn_gpus, exp_gpus = hw.groups["attention"], hw.groups["experts"]
    attn, exp = attn_gpus[0], exp_gpus[0]
    a2e, e2a = hw.link_between(attn, exp), hw.link_between(exp, attn)
    assert a2e is not None and e2a is not None
    per_gpu = _split(problem.batch_tokens, len(attn_gpus))[0]
    micro = [t for t in _split(per_gpu, min(r, per_gpu)) if t > 0]
    experts_here = range(model.num_routed_experts // len(exp_gpus))
    tasks: list[AnyTask] = []
    done: dict[int, list[str]] = {}  # micro-batch -> tasks the next layer's attention waits on
    for layer in range(problem.num_layers):
        for i, tokens in enumerate(micro):
            p = f"L{layer}.mb{i}"
            # Rows of this micro-batch over the whole group, spread evenly over all experts.
            rows = _split(tokens * len(attn_gpus) * model.top_k, model.num_routed_experts)
            tasks.append(
                ComputeTask(
                    id=f"{p}.attn", device_id=attn, op="attention", layer=layer,
                    num_tokens=tokens, micro_batch=i, after=tuple(done.get(i, ())),
                )
            )  # fmt: skip
            waits = [f"{p}.attn"]
            if model.num_shared_experts:
                tasks.append(
                    ComputeTask(
                        id=f"{p}.shared", device_id=attn, op="shared_expert", layer=layer,
                        num_tokens=tokens, micro_batch=i, after=(f"{p}.attn",),
                    )
                )  # fmt: skip
                if policy == "serial":
                    waits = [f"{p}.shared"]
            tasks.append(
                TransferTask(
                    id=f"{p}.a2e", link_id=a2e.id, src_device_id=attn, dst_device_id=exp,
                    payload="activations", layer=layer, num_tokens=tokens * model.top_k,
                    micro_batch=i, after=tuple(waits),
                )
            )  # fmt: skip
            shard_ids = []
            for e in experts_here:
                if rows[e] == 0:
                    continue
                sid = f"{p}.e{e}"
                shard_ids.append(sid)
                tasks.append(
                    ComputeTask(
                        id=sid, device_id=exp, op="expert", layer=layer, expert=e,
                        num_tokens=rows[e], micro_batch=i, after=(f"{p}.a2e",),
                    )
                )  # fmt: skip
            tasks.append(
                TransferTask(
                    id=f"{p}.e2a", link_id=e2a.id, src_device_id=exp, dst_device_id=attn,
                    payload="activations", layer=layer,
                    num_tokens=sum(rows[e] for e in experts_here), micro_batch=i,
                    after=tuple(shard_ids),
                )
            )  # fmt: skip
            done[i] = [f"{p}.e2a"] + ([f"{p}.shared"] if model.num_shared_experts else [])
    return tasks


@dataclass
class DepSolution:
    """The chosen plan and what every policy reached, on the same executor model."""

    plan: Plan
    micro_batches: int
    makespan_cycles: int
    serial_cycles: int
    pppipe_cycles: int
    pppipe_micro_batches: int
    by_r: dict[int, int]  # moesched's makespan per micro-batch count tried
    why: str


def _predict(problem: DepProblem, tasks: list[AnyTask]) -> int:
    return timing.makespan(problem.hardware, problem.model, tasks, problem.context_tokens)


@dataclass(frozen=True)
class DepCandidate:
    """A micro-batch count and the run order of its tasks (``policy``: whose order it is)."""

    r: int
    tasks: list[AnyTask]
    policy: str


class _DepSearch:
    """The micro-batch search as one portfolio problem.

    Greedy: every r's list schedule and every m's PPPipe order (the baseline is itself a
    candidate, so moesched never returns worse than it); the best wins. Exact: the ordering's
    exact backend on the two most promising r, each hinted with its greedy order and given an
    equal part of the budget. The bound is the smallest over r of each r's bound (its graph's,
    raised by the exact backend's where it ran): no r can do better than that.
    """

    def __init__(self, problem: DepProblem, max_r: int) -> None:
        self.problem = problem
        self.graphs = {
            r: TaskGraph.of(
                problem.hardware, problem.model, dep_tasks(problem, r, "free"),
                problem.context_tokens,
            )
            for r in range(1, max_r + 1)
        }  # fmt: skip
        self.orders = {
            r: ordering_portfolio(problem.hardware, problem.model, g, problem.context_tokens)
            for r, g in self.graphs.items()
        }
        self.bound_r = {r: o.bound for r, o in self.orders.items()}
        self.by_r: dict[int, int] = {}
        self.greedy_r: dict[int, list[AnyTask]] = {}
        self.pppipe = {
            m: _predict(problem, dep_tasks(problem, m, "pppipe")) for m in range(1, max_r + 1)
        }

    def greedy(self) -> DepCandidate:
        for r, order in self.orders.items():
            self.greedy_r[r] = order.greedy()
            self.by_r[r] = _predict(self.problem, self.greedy_r[r])
        r = min(self.by_r, key=lambda r: (self.by_r[r], r))
        m = min(self.pppipe, key=lambda m: (self.pppipe[m], m))
        if self.pppipe[m] < self.by_r[r]:
            return DepCandidate(m, dep_tasks(self.problem, m, "pppipe"), "pppipe")
        return DepCandidate(r, self.greedy_r[r], "free")

    def exact(self, name: str) -> portfolio.Exact[DepCandidate]:
        def solve(hint: DepCandidate, budget: Budget) -> portfolio.Outcome[DepCandidate]:
            finalists = sorted(self.by_r, key=lambda r: (self.by_r[r], r))[:2]
            best: DepCandidate | None = None
            notes = []
            for k, r in enumerate(finalists):
                part = budget.part(len(finalists), len(finalists) - k)
                out = self.orders[r].exact[name](self.greedy_r[r], part)
                if out.bound is not None:
                    self.bound_r[r] = max(self.bound_r[r], out.bound)
                if out.note:
                    notes.append(f"r={r}: {out.note}")
                if out.solution is not None and not self.orders[r].check(out.solution):
                    cycles = _predict(self.problem, out.solution)
                    self.by_r[r] = min(self.by_r[r], cycles)
                    if best is None or cycles < _predict(self.problem, best.tasks):
                        best = DepCandidate(r, out.solution, "free")
            return portfolio.Outcome(
                best, "feasible" if best else "unknown", self.bound(), "; ".join(notes) or None
            )

        return solve

    def bound(self) -> float:
        return min(self.bound_r.values())

    def check(self, c: DepCandidate) -> list[str]:
        return self.orders[c.r].check(c.tasks)


def solve_dep(
    problem: DepProblem,
    backend: Backend = "auto",
    deadline_s: float = 5.0,
    max_r: int = 16,
    workers: int = 2,
    budget: Budget | None = None,
) -> DepSolution:
    """Best micro-batch count and order through the portfolio under ``budget`` (default:
    ``deadline_s`` seconds of wall clock); baselines computed alongside, each at its best."""
    budget = budget_of(deadline_s, workers, budget)
    started = time.perf_counter()
    serial = _predict(problem, dep_tasks(problem, 1, "serial"))
    search = _DepSearch(problem, max_r)
    res = portfolio.run(
        portfolio.Portfolio(
            name="dep",
            greedy=search.greedy,
            objective=lambda c: _predict(problem, c.tasks),
            check=search.check,
            bound=search.bound(),
            exact={"cpsat": search.exact("cpsat"), "milp": search.exact("milp")},
        ),
        backend,
        budget,
    )
    best_m = min(search.pppipe, key=lambda m: (search.pppipe[m], m))
    r_best, cycles = res.solution.r, int(res.objective)
    fixed = search.by_r.get(r_best + 1)
    why = (
        f"r={r_best}: {cycles} cycles; r={r_best + 1} gives {fixed} (per-micro-batch fixed costs "
        f"outweigh more overlap)"
        if fixed is not None
        else f"r={r_best}: {cycles} cycles (the largest tried)"
    )
    account = make_account(
        "ordering", backend, res.status, cycles, int(res.bound), time.perf_counter() - started,
        res.fallback_reason,
    )  # fmt: skip
    return DepSolution(
        plan=Plan(tasks=tuple(res.solution.tasks), account=account),
        micro_batches=r_best,
        makespan_cycles=cycles,
        serial_cycles=serial,
        pppipe_cycles=search.pppipe[best_m],
        pppipe_micro_batches=best_m,
        by_r=search.by_r,
        why=why,
    )


def run_time_s(problem: DepProblem, cycles: int) -> float:
    return cycles / problem.hardware.clock_hz


def throughput_tokens_per_s(problem: DepProblem, cycles: int) -> float:
    """Decode tokens per second of the whole cluster for this run of layers."""
    return problem.batch_tokens / run_time_s(problem, cycles)
