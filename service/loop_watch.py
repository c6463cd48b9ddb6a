"""A watch on the event loop: how long it goes between two turns of a probe task, and why.

Every ``period_s`` the probe wakes and records, for the interval since its last turn:

* the wall lag (how much later than asked it woke): everything that kept the loop from it,
  including a loaded machine's scheduler, so it depends on machine load;
* the CPU seconds the loop thread itself spent (``time.thread_time``): work done on the
  loop, which ``/healthz`` waits behind. This does not depend on machine load: it is what a
  quiet machine's ``/healthz`` would wait at worst;
* the CPU seconds of the process's other threads (process CPU minus the loop thread's):
  work that holds the GIL the loop needs (also independent of load);
* the seconds the loop thread was ready to run but waited for a CPU (the kernel's run-queue
  delay, ``/proc/thread-self/schedstat``; Linux only, else not recorded). What is left of
  the lag beyond CPU and run-queue wait is the loop blocked: the GIL held elsewhere, or a
  blocking call.

Each goes into a histogram of ``service.metrics.Metrics`` (``/metrics``); no other state.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from service.metrics import Metrics

PERIOD_S = 0.01
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def runqueue_wait_s() -> float | None:
    """Seconds the calling thread has waited on a run queue since it started (None where
    the kernel does not say)."""
    try:
        return int(SCHEDSTAT.read_bytes().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


async def watch_loop(metrics: Metrics, period_s: float = PERIOD_S) -> None:
    """Probe forever (cancel the task to stop)."""
    wait0 = runqueue_wait_s()
    while True:
        wall0, loop0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
        await asyncio.sleep(period_s)
        loop_cpu_s = time.thread_time() - loop0
        metrics.loop_lag.observe(max(0.0, time.perf_counter() - wall0 - period_s))
        metrics.loop_cpu.observe(loop_cpu_s)
        metrics.loop_other_cpu.observe(max(0.0, time.process_time() - proc0 - loop_cpu_s))
        wait1 = runqueue_wait_s()
        if wait0 is not None and wait1 is not None:
            metrics.loop_runqueue.observe(wait1 - wait0)
        wait0 = wait1
