"""Benchmarks, run as `moesched bench NAME --json PATH [--quick]`; registry in BENCHMARKS."""

from __future__ import annotations

from collections.abc import Callable

from bench import (
    balance,
    cache,
    dep,
    eplb,
    executor_speed,
    ndp,
    reliability,
    service,
    solvers,
    sweep_speed,
)
from bench.common import BenchResult

BENCHMARKS: dict[str, Callable[[bool], BenchResult]] = {
    "executor": executor_speed.run,
    "solvers": solvers.run,
    "eplb": eplb.run,
    "dep": dep.run,
    "service": service.run,
    "reliability": reliability.run,
    "balance": balance.run,
    "cache": cache.run,
    "ndp": ndp.run,
    "sweep": sweep_speed.run,
}
