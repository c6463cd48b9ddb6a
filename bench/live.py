"""A moesched server in a child process on a loopback port (for tests and benchmarks), and the
schemathesis fuzzing loop run against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``moesched serve`` with its own database; start, stop (SIGTERM) or kill (SIGKILL)."""

    def __init__(self, db: Path, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180) -> None:
        """Start it and wait until /healthz answers (a generous wait: on a loaded 2-core
        machine importing the service alone can take tens of seconds)."""
        env = os.environ | {"MOESCHED_DB_PATH": str(self.db)} | self.env
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"server exited: {err[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop(signal.SIGKILL)  # never leave a half-started server behind
        raise RuntimeError(f"server did not become healthy in {timeout_s} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self.proc = None


def fuzz(
    url: str,
    examples: int,
    progress: Path | None = None,
    skip: frozenset[str] = frozenset(),
    last: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Fuzz every operation of the live schema, valid and invalid inputs (schemathesis).

    With ``progress``, one JSON line per (operation, mode) is appended there as it ends.
    Pairs named in ``skip`` (``"POST /v1/simulate positive"``, as a progress line's operation
    and mode) are not run, so a stopped run can resume; operations in ``last`` run after the
    others (the slow ones, so a run stopped early has covered the most pairs).

    Returns counts: cases, server_errors (5xx but a 503 with Retry-After), busy_503 (those),
    schema_violations (responses that do not
    match their documented schema), the slowest response's wall time, and the first failures.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import response_schema_conformance
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    counts: dict[str, Any] = {
        "cases": 0,
        "server_errors": 0,
        "busy_503": 0,
        "schema_violations": 0,
    }
    failures: list[str] = []
    slowest = [0.0]

    def runner(operation: Any, mode: Any) -> Any:
        label = operation.label

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def run(case: Any) -> None:
            counts["cases"] += 1
            started = time.perf_counter()
            response = case.call(timeout=60)
            slowest[0] = max(slowest[0], time.perf_counter() - started)
            if response.status_code == 503 and "retry-after" in response.headers:
                # the documented overload answer (a slot busy, e.g. the one sweep slot held
                # by a sweep an earlier case started): counted, not a server error
                counts["busy_503"] += 1
            elif response.status_code >= 500:
                counts["server_errors"] += 1
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")
            try:
                case.validate_response(response, checks=[response_schema_conformance])
            except Exception as exc:
                counts["schema_violations"] += 1
                failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")

        return run

    operations = [r.ok() for r in schema.get_all_operations()]  # type: ignore[union-attr]
    operations.sort(key=lambda op: op.label in last)  # stable: the schema's order otherwise
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if f"{operation.label} {mode}" in skip:
                continue
            started, before = time.perf_counter(), dict(counts)
            try:
                runner(operation, mode)()
            except Unsatisfiable:  # no invalid input exists (e.g. GET /healthz has none)
                continue
            finally:
                if progress is not None:  # a long run keeps what it measured
                    row = {k: counts[k] - before[k] for k in before}
                    row |= {"operation": operation.label, "mode": str(mode)}
                    row["wall_s"] = time.perf_counter() - started
                    with progress.open("a") as f:
                        f.write(json.dumps(row) + "\n")
    counts["slowest_response_s"] = slowest[0]
    counts["first_failures"] = failures[:5]
    return counts
