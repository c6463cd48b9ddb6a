"""Prometheus metrics, one registry per app (no module-level mutable state).

Every label takes a bounded set of values: routes are templates, problems/backends/statuses come
from closed lists, and a fallback's free-text reason is reduced to a kind (``fallback_kind``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hwmodel.plan import SolverAccount
from service.answers import Dumped

SOLVE_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
FRACTION_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0)

# (substring of a fallback reason, its kind); first match wins
_FALLBACK_KINDS = (
    ("skipped", "skipped_no_time"),
    ("no time left", "skipped_no_time"),
    ("rejected by the executor", "rejected_by_executor"),
    ("failed the executor", "rejected_by_executor"),
    ("failed:", "backend_crashed"),
    ("found no", "no_solution_in_time"),
)


def fallback_kind(reason: str) -> str:
    """A fallback reason's kind: skipped_no_time, rejected_by_executor, backend_crashed,
    no_solution_in_time or other."""
    return next((kind for text, kind in _FALLBACK_KINDS if text in reason), "other")


class _SessionGauges(Collector):
    """Read at scrape time: sessions open and re-solves finished, from the session managers."""

    def __init__(self, sessions_open: Callable[[], int], resolves: Callable[[], int]) -> None:
        self.sessions_open = sessions_open
        self.resolves = resolves

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "moesched_sessions_open",
            "Sessions in the store (sidecar and EP).",
            value=self.sessions_open(),
        )
        yield CounterMetricFamily(
            "moesched_session_resolves", "Re-solves that finished.", value=self.resolves()
        )


@dataclass
class Metrics:
    """The app's collectors."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "moesched_http_requests_total",
            "HTTP requests by route and status code.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "moesched_http_request_seconds",
            "HTTP request latency by route.",
            ["route", "method"],
            buckets=(
                0.0005,
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1,
                2.5,
                5,
                10,
            ),
            registry=r,
        )
        self.sessions = Gauge(
            "moesched_sessions", "Sessions stored, by kind.", ["kind"], registry=self.registry
        )
        self.session_ttl = Gauge(
            "moesched_session_ttl_seconds",
            "Sessions unused this long are deleted (MOESCHED_SESSION_TTL_S).",
            registry=self.registry,
        )
        self.max_sessions = Gauge(
            "moesched_max_sessions",
            "Sessions of both kinds allowed at once (MOESCHED_MAX_SESSIONS).",
            registry=self.registry,
        )
        self.slots_busy = Gauge(
            "moesched_slots_busy", "Admission slots in use, by class.", ["cls"],
            registry=self.registry,
        )  # fmt: skip

        self.solves = Counter(
            "moesched_solves_total",
            "Solves by problem (placement, ordering, schedule, eplb), backend and status.",
            ["problem", "backend", "status"],
            registry=r,
        )
        self.fallbacks = Counter(
            "moesched_fallbacks_total",
            "Solves answered by a simpler backend, by kind of reason.",
            ["problem", "reason"],
            registry=r,
        )
        self.solve_seconds = Histogram(
            "moesched_solve_seconds",
            "Solver wall time by problem.",
            ["problem"],
            buckets=SOLVE_BUCKETS_S,
            registry=r,
        )
        self.observations = Counter(
            "moesched_observations_total", "Sidecar observations received.", registry=r
        )
        self.resolves_started = Counter(
            "moesched_resolves_started_total",
            "Re-solves started by drift (sidecar) or by low balance (EP, re-placements).",
            ["kind"],
            registry=r,
        )
        self.drift = Histogram(
            "moesched_session_drift",
            "Drift of a sidecar session's running counts from its plan's, at each observation.",
            buckets=FRACTION_BUCKETS,
            registry=r,
        )
        self.ep_batches = Counter("moesched_ep_batches_total", "EP batches routed.", registry=r)
        self.ep_balancedness = Histogram(
            "moesched_ep_window_balancedness",
            "EP sessions' routed balancedness (mean / max GPU load) over the window, per batch.",
            buckets=FRACTION_BUCKETS,
            registry=r,
        )
        self.overloaded = Counter(
            "moesched_overloaded_total", "503 answers by cause.", ["cause"], registry=r
        )
        loop_buckets = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
        self.loop_lag = Histogram(
            "moesched_loop_lag_seconds",
            "Event-loop probe: how late each 10 ms turn woke (wall; includes machine load).",
            buckets=loop_buckets,
            registry=r,
        )
        self.loop_cpu = Histogram(
            "moesched_loop_turn_cpu_seconds",
            "Event-loop probe: CPU seconds the loop thread spent between two turns "
            "(work on the loop; independent of machine load).",
            buckets=loop_buckets,
            registry=r,
        )
        self.loop_other_cpu = Histogram(
            "moesched_loop_turn_other_threads_cpu_seconds",
            "Event-loop probe: CPU seconds of the server's other threads between two turns "
            "(they hold the GIL the loop needs; independent of machine load).",
            buckets=loop_buckets,
            registry=r,
        )
        self.loop_runqueue = Histogram(
            "moesched_loop_turn_runqueue_seconds",
            "Event-loop probe: seconds the loop thread was ready but waited for a CPU between "
            "two turns (the kernel's run-queue delay; Linux only).",
            buckets=loop_buckets,
            registry=r,
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def record_solve(
        self, problem: str, backend: str, status: str, reason: str | None, wall_time_s: float
    ) -> None:
        """Count one answered solve, its fallback (if any) and its wall time."""
        self.solves.labels(problem, backend, status).inc()
        if status == "fallback":
            self.fallbacks.labels(problem, fallback_kind(reason or "")).inc()
        self.solve_seconds.labels(problem).observe(wall_time_s)

    def record_answer(self, problem: str, answer: Dumped) -> None:
        """``record_solve`` from a worker's encoded answer (when it was a solve)."""
        if answer.solve is not None:
            self.record_solve(problem, *answer.solve)

    def record_account(self, problem: str, account: SolverAccount) -> None:
        """``record_solve`` from a solver's account."""
        self.record_solve(
            problem, account.backend, account.status, account.fallback_reason, account.wall_time_s
        )

    def watch_sessions(self, sessions_open: Callable[[], int], resolves: Callable[[], int]) -> None:
        """Report the session managers' figures at every scrape (a restarted app's lifespan
        points the same collector at its new managers)."""
        gauges = getattr(self, "_session_gauges", None)
        if gauges is None:
            self._session_gauges = _SessionGauges(sessions_open, resolves)
            self.registry.register(self._session_gauges)
        else:
            gauges.sessions_open, gauges.resolves = sessions_open, resolves
