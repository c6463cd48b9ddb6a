"""What every benchmark shares: the result shape, timing helpers, JSON output."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass
class BenchResult:
    """``{"benchmark": name, "rows": [...], "summary": {...}}``: rows are measured cases."""

    benchmark: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "rows": self.rows, "summary": self.summary}

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def time_calls(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    if len(values) == 1 or q <= 0:
        return min(values)
    if q >= 100:
        return max(values)
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def mean_or_none(values: list[float]) -> float | None:
    """The mean, or None when no row measured it (a JSON figure, never NaN or a made-up 0)."""
    return float(np.mean(values)) if values else None


# A progress hook for long loops: the CLI installs a reporter (a rich progress bar on a
# terminal); benchmarks call ``tracked`` and stay silent when none is installed.
Reporter = Callable[[str, int | None], Callable[[], None]]
"""``reporter(label, total)`` starts a task and returns the function that advances it by one."""

_reporter: ContextVar[Reporter | None] = ContextVar("bench_progress_reporter", default=None)


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Send every ``tracked`` loop inside this block to ``reporter``."""
    token = _reporter.set(reporter)
    try:
        yield
    finally:
        _reporter.reset(token)


def tracked(items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, advancing a progress task called ``label`` after each one."""
    reporter = _reporter.get()
    if reporter is None:
        yield from items
        return
    if total is None and isinstance(items, Sized):
        total = len(items)
    advance = reporter(label, total)
    for item in items:
        yield item
        advance()
