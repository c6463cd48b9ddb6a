"""Prometheus metrics, one registry per app (no module-level mutable state)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass
class Metrics:
    """The app's collectors."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "moesched_http_requests_total",
            "HTTP requests by route and status code.",
            ["route", "method", "status"],
            registry=self.registry,
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
            registry=self.registry,
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
