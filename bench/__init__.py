"""Benchmarks, run as `moesched bench NAME --json PATH [--quick]`; registry in BENCHMARKS.

The registry names each benchmark's module and imports it only when the benchmark runs, so
listing the names (`moesched bench --help`) loads no solver.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping

from bench.common import BenchResult

# name -> module whose ``run(quick: bool) -> BenchResult`` runs it
BENCHMARK_MODULES: dict[str, str] = {
    "executor": "bench.executor_speed",
    "solvers": "bench.solvers",
    "eplb": "bench.eplb",
    "dep": "bench.dep",
    "service": "bench.service",
    "reliability": "bench.reliability",
    "balance": "bench.balance",
    "cache": "bench.cache",
    "ndp": "bench.ndp",
    "sweep": "bench.sweep_speed",
    "cli": "bench.cli_startup",
    "runtimes": "bench.runtimes",
}


class _Registry(Mapping[str, Callable[[bool], BenchResult]]):
    """name -> run function, importing the benchmark's module on first use."""

    def __getitem__(self, name: str) -> Callable[[bool], BenchResult]:
        run: Callable[[bool], BenchResult] = importlib.import_module(BENCHMARK_MODULES[name]).run
        return run

    def __iter__(self) -> Iterator[str]:
        return iter(BENCHMARK_MODULES)

    def __len__(self) -> int:
        return len(BENCHMARK_MODULES)


BENCHMARKS: Mapping[str, Callable[[bool], BenchResult]] = _Registry()
