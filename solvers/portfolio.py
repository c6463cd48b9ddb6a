"""The portfolio: the one place where a problem's backends are run and a winner is chosen.

Every problem (placement, ordering and the DEP micro-batch search, EPLB, prefetch) describes
itself as a ``Portfolio``: its greedy solver, its exact backends (each takes greedy's solution as
the hint and a ``Budget``), how to score a solution (an objective to minimize) and how to
validate one (every reason it is rejected), and a lower bound every solution respects. ``run``
applies the one rule:

1. greedy first (always available);
2. the exact backend (``cpsat`` for ``auto``) hinted with greedy's solution, under the budget;
   a backend that raises is caught and its error becomes the fallback reason. ``auto`` stops
   here, without running it, when greedy's valid solution already meets the lower bound
   (nothing can beat it: status ``optimal``, winner ``greedy``);
3. the better *validated* solution wins (ties keep greedy's: it is the hint); greedy's is
   checked only when it is kept, and not at all when greedy runs alone (the caller's executor
   run checks the plan it returns);
4. the lower bound is the best of the problem's own bound and the backends' proven ones, never
   clipped: a bound above the objective is a bug and raises ``InvalidBound``;
5. status: ``fallback`` when the requested backend crashed, returned a rejected solution,
   contradicted greedy (claimed infeasible), or, asked for explicitly, returned nothing;
   otherwise ``optimal`` only when a backend proved it or the bound meets the objective;
   otherwise ``feasible``. ``auto`` finding nothing better within its budget is not a failure:
   the reason says what happened, the status stays ``feasible``.

Budgets are deterministic in tests and benchmarks (``Budget.work``); wall time is measured and
reported beside, never used to pick a result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hwmodel.plan import SolveStatus
from solvers.common import Budget

S = TypeVar("S")


class InvalidBound(AssertionError):
    """A lower bound above the objective it bounds: the bound (or the objective) is wrong."""


@dataclass(frozen=True)
class Outcome(Generic[S]):
    """What one exact backend returned.

    ``status``: optimal | feasible | infeasible | unknown, or a backend's own word for not
    running (skipped, too_large); ``bound``: a proven lower bound on the objective, or None;
    ``note``: why it returned what it did (e.g. skipped for lack of time), or None.
    """

    solution: S | None
    status: str
    bound: float | None = None
    note: str | None = None


Exact = Callable[[S, Budget], Outcome[S]]


@dataclass(frozen=True)
class Portfolio(Generic[S]):
    """A problem as the portfolio sees it.

    ``greedy()``: a solution, fast and always available. ``exact[name](hint, budget)``: an exact
    backend. ``objective(s)``: what is minimized (cycles, a load, expected cycles not saved).
    ``check(s)``: every reason s is rejected (empty when valid). ``bound``: a lower bound on the
    objective of every solution (the problem's own, analytic). ``tolerance``: how far a float
    objective may sit below the bound by rounding (0 for integer cycles).
    """

    name: str
    greedy: Callable[[], S]
    objective: Callable[[S], float]
    check: Callable[[S], list[str]]
    bound: float
    exact: Mapping[str, Exact[S]] = field(default_factory=dict)
    tolerance: float = 0.0


@dataclass(frozen=True)
class Result(Generic[S]):
    """The winner and its account: objective, bound, status, which backend's solution it is,
    the fallback reason (or None) and the wall time spent (reported, never deciding)."""

    solution: S
    objective: float
    bound: float
    status: SolveStatus
    winner: str
    fallback_reason: str | None
    wall_time_s: float


def backends_of(portfolio: Portfolio[S]) -> tuple[str, ...]:
    """The backends a portfolio accepts: greedy, its exact ones, and auto when it has cpsat."""
    return ("greedy", *portfolio.exact, *(("auto",) if "cpsat" in portfolio.exact else ()))


def run(portfolio: Portfolio[S], backend: str, budget: Budget) -> Result[S]:
    """Solve ``portfolio`` with ``backend`` under ``budget`` by the rule of this module.

    Raises:
        ValueError: for a backend the problem does not have.
        InvalidBound: when a bound exceeds the winner's objective (a bug, never a result).
    """
    started = time.perf_counter()
    if backend not in backends_of(portfolio):
        raise ValueError(
            f"backend: {portfolio.name} has no backend '{backend}' "
            f"(one of {', '.join(backends_of(portfolio))})"
        )
    greedy = portfolio.greedy()
    best, best_obj, winner = greedy, portfolio.objective(greedy), "greedy"
    bound = portfolio.bound
    reason: str | None = None
    failed = proven = False
    # auto stops early when greedy meets the bound: no exact backend can do better.
    met = backend == "auto" and bound >= best_obj - portfolio.tolerance
    if backend != "greedy" and not (met and not portfolio.check(greedy)):
        exact = "cpsat" if backend == "auto" else backend
        try:
            out = portfolio.exact[exact](greedy, budget)
        except Exception as exc:  # a crashing backend must not take the request down
            out = Outcome(None, "error")
            failed, reason = True, f"{exact} failed: {type(exc).__name__}: {exc}"
        if out.bound is not None:
            bound = max(bound, out.bound)
        found: S | None = None
        if out.solution is not None:
            problems = portfolio.check(out.solution)
            if problems:
                failed, reason = True, f"{exact} plan rejected: {problems[0]}"
            else:
                found, reason = out.solution, out.note
        elif out.status == "infeasible":
            failed = True
            reason = f"{exact} claims the problem infeasible, but greedy found a plan"
        elif reason is None:
            reason = out.note or f"{exact} found no solution within its budget ({out.status})"
            failed = backend != "auto"
        obj = math.inf if found is None else portfolio.objective(found)
        if obj >= best_obj:  # greedy's plan is to be kept: it must pass the checks too
            rejected = portfolio.check(greedy)
            if rejected:
                reason = f"greedy plan rejected: {rejected[0]}" + (f"; {reason}" if reason else "")
                failed = found is None
                best_obj = math.inf if found is not None else best_obj
        if found is not None and obj < best_obj:
            best, best_obj, winner = found, obj, exact
        # Proven: the backend says optimal, its own bound (if any) agrees with the objective
        # re-scored here (a relaxed model's optimum is not), and its plan is as good as the kept.
        proven = (
            found is not None
            and out.status == "optimal"
            and (out.bound is None or out.bound >= obj - portfolio.tolerance)
            and obj <= best_obj
        )
    if bound > best_obj + portfolio.tolerance:
        raise InvalidBound(
            f"{portfolio.name}: lower bound {bound} exceeds the objective {best_obj} "
            f"of {winner}'s solution"
        )
    status: SolveStatus
    if failed:
        status = "fallback"
    elif proven or bound >= best_obj - portfolio.tolerance:
        status = "optimal"
    else:
        status = "feasible"
    return Result(best, best_obj, bound, status, winner, reason, time.perf_counter() - started)


def worst_status(statuses: list[SolveStatus]) -> SolveStatus:
    """The status of a solve made of parts (layers, micro-batch counts): the worst part's."""
    rank = {"optimal": 0, "feasible": 1, "given": 1, "fallback": 2, "infeasible": 3}
    return max(statuses, key=rank.__getitem__, default="optimal")
