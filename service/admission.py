"""One admission rule for every request whose work can cost more than a millisecond.

Such a request takes a slot of its class (``solve``: solvers, simulations, charts, session
creation; ``route``: per-batch routing) or gets 503 + Retry-After at once. Its work runs in a
worker process of that class, with a deadline (the request's own, capped by
``Settings.max_deadline_s``; ``Settings.default_deadline_s`` where the request has none). The
worker is stopped (the process is terminated and replaced, which stops a CP-SAT search or a
greedy loop alike) when the deadline plus ``Settings.deadline_grace_s`` passes, answering 422
naming the deadline, or when the client disconnects; either way the slot is free again within
one poll (0.1 s) of the event. The event loop only waits, so ``/healthz`` never queues behind
this work.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import HTTPException, Request

__all__ = ["Admission", "ClientGone"]
from pebble import ProcessPool
from starlette.concurrency import run_in_threadpool

from service import jobs
from service.errors import ClientGone, DomainError
from service.settings import Settings

T = TypeVar("T")
Kind = Literal["solve", "route"]
POLL_S = 0.1


@dataclass
class _Class:
    """The slots and worker processes of one class of work."""

    slots: int
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    pool: ProcessPool | None = None
    stopped_by_deadline: int = 0
    stopped_by_disconnect: int = 0
    refused: int = 0

    def take(self) -> bool:
        with self.lock:
            if self.busy >= self.slots:
                self.refused += 1
                return False
            self.busy += 1
            return True

    def give(self) -> None:
        with self.lock:
            self.busy -= 1

    warm: bool = False

    def workers(self) -> ProcessPool:
        with self.lock:
            if self.pool is None:
                # forkserver: workers start from a clean, preloaded process (no threads of the
                # server copied into them), in milliseconds once it runs.
                ctx = multiprocessing.get_context("forkserver")
                ctx.set_forkserver_preload(list(jobs.PRELOAD))
                self.pool = ProcessPool(max_workers=self.slots, context=ctx)
            return self.pool

    def ensure_warm(self) -> None:
        """Block until the workers have run once (the first start of the forkserver and its
        imports takes seconds; no request's deadline should pay for it)."""
        if not self.warm:
            pool = self.workers()
            for f in [pool.schedule(_noop) for _ in range(self.slots)]:
                f.result(timeout=300)
            self.warm = True


def _stop(classes: dict[str, _Class]) -> None:
    """Stop every worker now: a stopping server must not wait for work nobody will read (nor
    for a worker still booting on a loaded machine)."""
    for c in classes.values():
        if c.pool is not None:
            manager = getattr(c.pool, "_pool_manager", None)
            workers = getattr(getattr(manager, "worker_manager", None), "workers", {})
            procs = list(workers.values())
            c.pool.stop()
            for proc in procs:
                if proc.is_alive():
                    proc.kill()
            with contextlib.suppress(RuntimeError):  # collected on one of the pool's threads
                c.pool.join(timeout=2)
            c.pool, c.warm = None, False


class Admission:
    """Slots and worker processes per class of work (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.classes: dict[str, _Class] = {
            "solve": _Class(settings.max_concurrent_solves),
            "route": _Class(settings.max_concurrent_routes),
        }
        self._finalizer = weakref.finalize(self, _stop, self.classes)

    def deadline_s(self, requested: float | None) -> float:
        """The request's deadline, capped; the default when it names none."""
        wanted = self.settings.default_deadline_s if requested is None else requested
        return min(wanted, self.settings.max_deadline_s)

    def warm(self) -> None:
        """Start the worker processes now rather than at the first request."""
        for c in self.classes.values():
            c.ensure_warm()

    def close(self) -> None:
        self._finalizer()

    def busy(self, kind: Kind) -> int:
        return self.classes[kind].busy

    def refuse_when_full(self, kind: Kind) -> None:
        """503 at once when every slot of ``kind`` is busy (before any other work is done);
        ``run`` still takes the slot itself."""
        cls = self.classes[kind]
        if cls.busy >= cls.slots:
            cls.refused += 1
            raise HTTPException(
                status_code=503,
                detail=f"all {cls.slots} {kind} slots are busy; retry shortly",
                headers={"Retry-After": "1"},
            )

    async def run(
        self,
        request: Request,
        kind: Kind,
        deadline_s: float | None,
        field_name: str,
        fn: Callable[..., T],
        *args: Any,
    ) -> T:
        """``fn(*args)`` in a worker of class ``kind``, or 503 when every slot is busy.

        Raises:
            HTTPException: 503 with Retry-After, no slot free.
            DomainError: 422 naming ``field_name`` when the deadline (+ grace) passed.
            ClientGone: the client disconnected (the work was stopped).
        """
        cls = self.classes[kind]
        if not cls.take():
            raise HTTPException(
                status_code=503,
                detail=f"all {cls.slots} {kind} slots are busy; retry shortly",
                headers={"Retry-After": "1"},
            )
        try:
            if not cls.warm:
                await run_in_threadpool(cls.ensure_warm)
            limit = self.deadline_s(deadline_s)
            future = cls.workers().schedule(fn, args=args)
            waiting = asyncio.wrap_future(future)
            loop = asyncio.get_running_loop()
            stop_at = loop.time() + limit + self.settings.deadline_grace_s
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=POLL_S)
                if done:
                    try:
                        return waiting.result()
                    except CancelledError:  # stopped below, raced with completion
                        raise ClientGone from None
                if await request.is_disconnected():
                    future.cancel()
                    cls.stopped_by_disconnect += 1
                    raise ClientGone
                if loop.time() >= stop_at:
                    future.cancel()
                    cls.stopped_by_deadline += 1
                    raise DomainError(
                        422, "deadline_exceeded", field_name,
                        f"not answered within the deadline of {limit} s (capped by the "
                        f"server at {self.settings.max_deadline_s} s): raise it or send a "
                        "smaller problem",
                    )  # fmt: skip
        finally:
            cls.give()


def _noop() -> None:
    return None
