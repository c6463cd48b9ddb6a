"""Sweeps as HTTP jobs: one background thread a job, the rows in a CSV under the sweep dir.

A job is bounded: its points are capped by ``max_sweep_points``, their simulated tokens by
``max_sweep_tokens``, and at most ``max_running_sweeps`` run at once: each holds a ``sweep``
slot of the server's admission from submission to its end, and more get 503 + Retry-After like
any full class. ``cancel`` stops it between points. Jobs live in this process (the CSV outlives
it, so a re-submitted spec reuses finished points).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.sweep import SweepOutcome, SweepSpec, point_key, run_sweep
from service.admission import Admission
from service.errors import DomainError
from service.settings import Settings


@dataclass
class SweepJob:
    """One sweep submitted over HTTP."""

    id: str
    spec: SweepSpec
    out: Path
    state: str = "queued"  # queued, running, done, failed, cancelled
    done: int = 0
    total: int = 0
    error: str = ""
    started_s: float = field(default_factory=time.monotonic)
    outcome: SweepOutcome | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    release: Callable[[], None] = lambda: None  # gives back its admission slot


class SweepJobs:
    """The process's sweep jobs."""

    def __init__(self, settings: Settings, admission: Admission | None = None) -> None:
        self.settings = settings
        self.admission = admission  # a running job holds one of its sweep slots
        self._jobs: dict[str, SweepJob] = {}
        self._lock = threading.Lock()

    def submit(self, spec: SweepSpec) -> SweepJob:
        """Start a job; 422 when it has too many points, 503 when enough jobs run already."""
        points = spec.points()
        if len(points) > self.settings.max_sweep_points:
            raise DomainError(
                422, "too_large", "spec.axes",
                f"{len(points)} points exceed the server's limit of "
                f"{self.settings.max_sweep_points}; run it with `moesched sweep`",
            )  # fmt: skip
        if spec.num_tokens() > self.settings.max_sweep_tokens:
            raise DomainError(
                422, "too_large", "spec",
                f"{spec.num_tokens()} prompt and decoded tokens over all points exceed the "
                f"server's limit of {self.settings.max_sweep_tokens}",
            )  # fmt: skip
        with self._lock:
            running = sum(j.state in ("queued", "running") for j in self._jobs.values())
            if self.admission is None and running >= self.settings.max_running_sweeps:
                raise DomainError(503, "busy", "spec", "a sweep is running; retry later")
            release = self.admission.hold("sweep") if self.admission is not None else None
            digest = point_key(spec.kind, {"spec": spec.model_dump()})
            job = SweepJob(uuid.uuid4().hex[:16], spec, self.settings.sweep_dir / f"{digest}.csv")
            job.total = len(points)
            if release is not None:
                job.release = release
            self._jobs[job.id] = job
        threading.Thread(target=self._run, args=(job,), daemon=True, name=f"sweep-{job.id}").start()
        return job

    def _run(self, job: SweepJob) -> None:
        job.state = "running"

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total

        try:
            job.outcome = run_sweep(
                job.spec, job.out, address=self.settings.ray_address,
                num_cpus=self.settings.sweep_workers, on_row=progress,
                should_stop=job.stop.is_set,
            )  # fmt: skip
            job.state = "cancelled" if job.stop.is_set() else "done"
        except Exception as exc:  # the job reports it; the server goes on
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            job.release()

    def get(self, job_id: str) -> SweepJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise DomainError(404, "not_found", "sweep_id", f"no sweep '{job_id}'")
        return job

    def cancel(self, job_id: str) -> SweepJob:
        job = self.get(job_id)
        job.stop.set()
        return job

    def close(self) -> None:
        for job in self._jobs.values():
            job.stop.set()
