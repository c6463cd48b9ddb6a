"""Admission over real HTTP (a server on a loopback port): a request whose client hangs up
has its worker stopped and its slot freed; a request past its deadline is stopped and told so
(422 naming the deadline), not left running; a full class of slots answers 503 at once while
/healthz still answers."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench.live import Server

# One 90-byte request that costs tens of seconds of CPU (EPLB at its caps).
HEAVY = {"num_layers": 256, "num_experts": 1024, "num_gpus": 512, "num_replicas": 8192}
SMALL = {"num_layers": 1, "num_experts": 8, "num_gpus": 2, "num_replicas": 8, "deadline_s": 60}


def test_a_disconnect_frees_the_slot_and_a_deadline_stops_the_work(tmp_path: Path) -> None:
    srv = Server(
        tmp_path / "a.db",
        env={
            "MOESCHED_MAX_CONCURRENT_SOLVES": "1",
            "MOESCHED_DEADLINE_GRACE_S": "0.5",
            "MOESCHED_MAX_DEADLINE_S": "30",
        },
    )
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=120) as c:
            c.post("/v1/route", json={"physical_to_logical": [0], "num_gpus": 1, "loads": [1]})
            # Hang up on a heavy request after 2 s: its worker must go, freeing the one slot.
            with contextlib.suppress(httpx.TimeoutException):
                httpx.post(f"{srv.url}/v1/ep-sessions", json=HEAVY | {"deadline_s": 600}, timeout=2)
            statuses = []
            give_up = time.monotonic() + 30  # far below the heavy request's own run time
            while time.monotonic() < give_up:
                r = c.post("/v1/ep-sessions", json=SMALL)
                statuses.append(r.status_code)
                if r.status_code == 201:
                    break
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                time.sleep(0.2)
            assert statuses[-1] == 201, statuses
            # A deadline of 1 s on the same heavy request: stopped and answered, not run out.
            r = c.post("/v1/ep-sessions", json=HEAVY | {"deadline_s": 1.0})
            assert r.status_code == 422, r.text
            assert r.json()["error_type"] == "deadline_exceeded"
            assert r.json()["detail"][0]["field"] == "body.deadline_s"
            assert c.get("/healthz").status_code == 200

            # The deadline counts from the request's arrival: a small request (answered in
            # milliseconds) whose body took 2 s to arrive is past a 0.5 s deadline + 0.5 s grace.
            def slow_body() -> Iterator[bytes]:
                text = json.dumps(SMALL | {"deadline_s": 0.5}).encode()
                yield text[:10]
                time.sleep(2.0)
                yield text[10:]

            r = c.post(
                "/v1/ep-sessions", content=slow_body(), headers={"content-type": "application/json"}
            )
            assert r.status_code == 422 and r.json()["error_type"] == "deadline_exceeded", r.text
    finally:
        srv.stop()


def _own_nice() -> int:
    import os

    return os.nice(0)


def test_workers_run_below_the_event_loops_priority(tmp_path: Path) -> None:
    """The loop's lag under load was its thread waiting for a CPU behind the workers (the
    probe's run-queue figure): workers start ``worker_nice`` below the server's priority."""
    import os

    from service.admission import Admission
    from service.settings import Settings

    admission = Admission(Settings(db_path=tmp_path / "n.db", worker_nice=5))
    try:
        pool = admission.classes["route"].workers()
        assert pool.schedule(_own_nice).result(timeout=300) == min(19, os.nice(0) + 5)
    finally:
        admission.close()


def test_the_loop_probe_reports_run_queue_wait() -> None:
    """On Linux the probe reads the loop thread's run-queue delay; it only grows."""
    import sys

    from service.loop_watch import runqueue_wait_s

    first = runqueue_wait_s()
    if sys.platform != "linux":
        assert first is None
        return
    assert first is not None and first >= 0
    sum(range(10**6))
    later = runqueue_wait_s()
    assert later is not None and later >= first


def test_closing_frees_a_thread_waiting_on_a_worker(tmp_path: Path) -> None:
    """A session's re-solve waits in ``run_background`` on its worker; a server closing
    meanwhile must end that wait at once (before, the thread waited on a stopped pool for
    ever, and the process hung at exit joining it)."""
    import threading
    from concurrent.futures import CancelledError
    from concurrent.futures.process import BrokenProcessPool

    from service.admission import Admission
    from service.settings import Settings

    admission = Admission(Settings(db_path=tmp_path / "c.db", max_deadline_s=600))
    admission.classes["solve"].ensure_warm()
    outcome: list[BaseException | None] = []

    def resolve() -> None:
        try:
            admission.run_background("solve", 600, time.sleep, 120)
            outcome.append(None)
        except BaseException as exc:  # the outcome is what the test checks
            outcome.append(exc)

    waiter = threading.Thread(target=resolve)
    waiter.start()
    give_up = time.monotonic() + 60
    while not admission.classes["solve"].pending and time.monotonic() < give_up:
        time.sleep(0.01)
    assert admission.busy("solve") == 1
    admission.close()
    waiter.join(timeout=30)
    assert not waiter.is_alive(), "the re-solve still waits on a stopped pool"
    # the worker killed under it or its future cancelled: either way the caller knows
    assert len(outcome) == 1 and isinstance(outcome[0], CancelledError | BrokenProcessPool)
    assert admission.busy("solve") == 0
