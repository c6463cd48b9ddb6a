"""One admission rule for every request whose work can cost more than a millisecond.

Such a request takes a slot of its class (``solve``: solvers, simulations, charts, session
creation; ``route``: per-batch routing) or gets 503 + Retry-After at once. Its work runs in a
worker process of that class, with a deadline (the request's own, capped by
``Settings.max_deadline_s``; ``Settings.default_deadline_s`` where the request has none). The
worker is stopped (the process is terminated and replaced, which stops a CP-SAT search or a
greedy loop alike) when the deadline plus ``Settings.deadline_grace_s`` passes, counted from the
request's arrival (reading and parsing its body count), answering 422 naming the deadline, or
when the client disconnects (the ASGI disconnect event, not a poll); either way the slot is
free again at once. The event loop only waits, so ``/healthz`` never queues behind
this work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import weakref
from collections.abc import Callable, MutableMapping
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from fastapi import HTTPException, Request

__all__ = ["Admission", "ClientGone", "Kind"]
from pebble import ProcessPool
from starlette.concurrency import run_in_threadpool

from service import jobs
from service.errors import ClientGone, DomainError
from service.settings import Settings

T = TypeVar("T")
log = logging.getLogger("moesched")
Kind = Literal["solve", "route", "sweep"]


@dataclass
class _Class:
    """The slots and worker processes of one class of work."""

    slots: int
    has_workers: bool = True  # sweeps run on Ray: slots only
    worker_nice: int = 0  # added to each worker's nice value (see Settings.worker_nice)
    busy: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    pool: ProcessPool | None = None
    stopped_by_deadline: int = 0
    stopped_by_disconnect: int = 0
    refused: int = 0
    # Every future of this class's workers not yet done: a stop cancels them, so no thread
    # (a session's re-solve, a warm-up) waits on a pool that will never answer.
    pending: set[Future[Any]] = field(default_factory=set)

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
                self.pool = ProcessPool(
                    max_workers=self.slots,
                    context=ctx,
                    initializer=_lower_priority,
                    initargs=(self.worker_nice,),
                )
            return self.pool

    def schedule(
        self, fn: Callable[..., T], args: tuple[Any, ...] = (), timeout: float | None = None
    ) -> Future[T]:
        """``fn(*args)`` in one of the workers (stopped after ``timeout`` s), tracked until
        done so that a stop can cancel it."""
        future: Future[T] = self.workers().schedule(fn, args=args, timeout=timeout)
        with self.lock:
            self.pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        with self.lock:
            self.pending.discard(future)

    def cancel_pending(self) -> None:
        with self.lock:
            pending, self.pending = list(self.pending), set()
        for future in pending:
            future.cancel()

    def ensure_warm(self) -> None:
        """Block until the workers have run once (the first start of the forkserver and its
        imports takes seconds; no request's deadline should pay for it)."""
        if not self.warm:
            for f in [self.schedule(_noop) for _ in range(self.slots)]:
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
        c.cancel_pending()


class Admission:
    """Slots and worker processes per class of work (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.classes: dict[str, _Class] = {
            "solve": _Class(settings.max_concurrent_solves, worker_nice=settings.worker_nice),
            "route": _Class(settings.max_concurrent_routes, worker_nice=settings.worker_nice),
            # a sweep job holds its slot from submission to its end (its points run on Ray)
            "sweep": _Class(settings.max_running_sweeps, has_workers=False),
        }
        self._finalizer = weakref.finalize(self, _stop, self.classes)

    def deadline_s(self, requested: float | None) -> float:
        """The request's deadline, capped; the default when it names none."""
        wanted = self.settings.default_deadline_s if requested is None else requested
        return min(wanted, self.settings.max_deadline_s)

    def warm(self) -> None:
        """Start the worker processes now rather than at the first request (best effort: a
        server stopping meanwhile breaks the pools, and a request warms them again)."""
        try:
            for c in self.classes.values():
                if c.has_workers:
                    c.ensure_warm()
        except (BrokenProcessPool, CancelledError, OSError, RuntimeError) as exc:
            log.info("worker processes not warmed: %r", exc)

    def close(self) -> None:
        self._finalizer()

    def busy(self, kind: Kind) -> int:
        return self.classes[kind].busy

    def hold(self, kind: Kind) -> Callable[[], None]:
        """Take a slot of ``kind`` for work that runs elsewhere (a sweep on Ray), or 503 at
        once; returns the call that gives it back."""
        cls = self.classes[kind]
        if not cls.take():
            raise _busy(cls, kind)
        return cls.give

    def full(self, kind: Kind) -> bool:
        """True (and counted as a refusal) when every slot of ``kind`` is busy."""
        cls = self.classes[kind]
        if cls.busy >= cls.slots:
            cls.refused += 1
            return True
        return False

    def refuse_when_full(self, kind: Kind) -> None:
        """503 at once when every slot of ``kind`` is busy (before any other work is done);
        ``run`` still takes the slot itself."""
        cls = self.classes[kind]
        if cls.busy >= cls.slots:
            cls.refused += 1
            raise _busy(cls, kind)

    def run_background(
        self, kind: Kind, deadline_s: float | None, fn: Callable[..., T], *args: Any
    ) -> T | None:
        """``fn(*args)`` in a worker of class ``kind`` for a background thread (a session's
        re-solve): the same slots, deadline and stop as a request; None when every slot is
        busy (the caller tries again at its next trigger).

        Raises:
            TimeoutError: the deadline (+ grace) passed; the worker was stopped.
            concurrent.futures.CancelledError: the server stopped the workers first.
        """
        cls = self.classes[kind]
        if not cls.take():
            return None
        try:
            cls.ensure_warm()
            limit = self.deadline_s(deadline_s) + self.settings.deadline_grace_s
            future = cls.schedule(fn, args=args, timeout=limit)
            try:
                # The pool stops the worker at ``limit``; the wait's own bound covers a pool
                # stopped meanwhile (``_stop`` cancels the future; this is the backstop).
                result: T = future.result(timeout=limit + self.settings.deadline_grace_s)
            except TimeoutError:
                future.cancel()
                cls.stopped_by_deadline += 1
                raise
            return result
        finally:
            cls.give()

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
            raise _busy(cls, kind)
        loop = asyncio.get_running_loop()
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            limit = self.deadline_s(deadline_s)
            # The clock started when the request arrived (``arrival_s``), not now: parsing,
            # checks and waiting count against the deadline too.
            stop_at = arrival_s(request) + limit + self.settings.deadline_grace_s
            if not cls.warm:  # the first start of the workers is no request's deadline
                warm_from = loop.time()
                await run_in_threadpool(cls.ensure_warm)
                stop_at += loop.time() - warm_from
            if loop.time() < stop_at:  # else past its deadline already: no work started
                future = cls.schedule(fn, args=args)
                waiting = asyncio.wrap_future(future)
                both: set[asyncio.Future[Any]] = {waiting, gone}
                done, _ = await asyncio.wait(
                    both,
                    timeout=max(0.0, stop_at - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if waiting in done:
                    try:
                        return waiting.result()
                    except CancelledError:  # stopped below, raced with completion
                        raise ClientGone from None
                future.cancel()
                if gone in done:
                    cls.stopped_by_disconnect += 1
                    raise ClientGone
            cls.stopped_by_deadline += 1
            raise DomainError(
                422, "deadline_exceeded", field_name,
                f"not answered within the deadline of {limit} s (capped by the server at "
                f"{self.settings.max_deadline_s} s): raise it or send a smaller problem",
            )  # fmt: skip
        finally:
            gone.cancel()
            cls.give()


ARRIVAL_KEY = "moesched.arrival_s"


def stamp_arrival(scope: MutableMapping[str, Any]) -> None:
    """Note the loop time a request arrived (``service.main.Guard`` does, first thing)."""
    scope.setdefault("state", {})[ARRIVAL_KEY] = asyncio.get_running_loop().time()


def arrival_s(request: Request) -> float:
    """The loop time the request arrived (now, for a request no ``Guard`` stamped)."""
    arrived: float | None = request.scope.get("state", {}).get(ARRIVAL_KEY)
    return asyncio.get_running_loop().time() if arrived is None else arrived


async def _disconnected(request: Request) -> None:
    """Return when the client disconnects: the ASGI ``http.disconnect`` event, which the
    server sends the moment the connection drops (the body was read before the route ran,
    so nothing else is waiting on ``receive``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _busy(cls: _Class, kind: str) -> HTTPException:
    return HTTPException(
        status_code=503,
        detail=f"all {cls.slots} {kind} slots are busy; retry shortly",
        headers={"Retry-After": "1"},
    )


def _noop() -> None:
    return None


def _lower_priority(increment: int) -> None:
    """Run in each worker as it starts: yield the CPU to the server's event loop. On a busy
    machine, workers at the server's own priority kept the loop waiting for a CPU (its
    run-queue delay, ``service.loop_watch``) for most of every second."""
    if increment > 0:
        os.nice(increment)
