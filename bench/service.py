"""Service load on loopback: a uvicorn server with its own database, a sidecar session fed
observations as fast as one client (keep-alive) and as four concurrent clients can send them,
and /v1/schedule latency. Observations are real decode histograms (ESFT law trace).

The client runs on the same two cores, so its wall-clock latencies include its own work and the
machine's load (``load_average`` is recorded beside). The server's CPU time per observation
(``/proc/<pid>/stat``, user + system, every thread) is the figure independent of both."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.common import BenchResult, percentile
from bench.live import Server
from hwmodel.routing_traces import ESFT_FILES, load_esft, traces_dir
from service.examples import placement_example, session_example


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) the process has used, or None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(quick: bool = False) -> BenchResult:
    result = BenchResult("service")
    trace = load_esft(traces_dir() / ESFT_FILES["law"])
    n = 300 if quick else 2000
    hists = [trace.histogram(slice(t, t + 1)).tolist() for t in range(1000, 1000 + n)]
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "bench.db")
        server.start()
        url = server.url
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                floor = []
                for _ in range(200):
                    s = time.perf_counter()
                    client.get("/healthz")
                    floor.append(time.perf_counter() - s)
                spec = session_example() | {"policy": {"backend": "greedy", "drift_threshold": 1.0}}
                sid = client.post("/v1/sessions", json=spec).json()["id"]
                lat = []
                assert server.proc is not None
                pid = server.proc.pid
                load_before = os.getloadavg()[0]
                cpu0 = process_cpu_s(pid)
                t0 = time.perf_counter()
                for h in hists:
                    s = time.perf_counter()
                    r = client.post(f"/v1/sessions/{sid}/observations", json={"histogram": h})
                    lat.append(time.perf_counter() - s)
                    assert r.status_code == 200, r.text
                serial_rps = n / (time.perf_counter() - t0)
                cpu1 = process_cpu_s(pid)
                server_cpu_ms = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / n * 1e3
                # Four concurrent clients on the same session: throughput and no lost counts.
                per = n // 4
                errors: list[str] = []

                def feed(k: int) -> None:
                    with httpx.Client(base_url=url, timeout=30) as c:
                        for h in hists[k * per : (k + 1) * per]:
                            if (
                                c.post(
                                    f"/v1/sessions/{sid}/observations", json={"histogram": h}
                                ).status_code
                                != 200
                            ):
                                errors.append("non-200")

                t1 = time.perf_counter()
                threads = [threading.Thread(target=feed, args=(k,)) for k in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                concurrent_rps = 4 * per / (time.perf_counter() - t1)
                observed = client.get(f"/v1/sessions/{sid}/plan").json()["num_observations"]
                sched = []
                body = placement_example() | {"options": {"backend": "greedy"}}
                for _ in range(10 if quick else 30):
                    s = time.perf_counter()
                    assert client.post("/v1/schedule", json=body).status_code == 200
                    sched.append(time.perf_counter() - s)
        finally:
            server.stop()
    result.rows.append(
        {
            "hardware": "gpu-ndp-4dimm",
            "model": "deepseek-v2-lite",
            "trace": ESFT_FILES["law"],
            "observations": n,
            "observe_p50_ms": percentile(lat, 50) * 1e3,
            "observe_p99_ms": percentile(lat, 99) * 1e3,
            "observe_rps_one_client": serial_rps,
            "observe_rps_four_clients": concurrent_rps,
            "counts_lost": n + 4 * per - observed,
            "errors": len(errors),
            "server_cpu_ms_per_observation": server_cpu_ms,
            "load_average_1min": [load_before, os.getloadavg()[0]],
        }
    )
    result.summary = {
        "observe_p99_ms": percentile(lat, 99) * 1e3,
        "observe_rps": max(serial_rps, concurrent_rps),
        "schedule_p50_ms": percentile(sched, 50) * 1e3,
        "healthz_p50_ms": percentile(floor, 50) * 1e3,
        "counts_lost": n + 4 * per - observed,
        "server_cpu_ms_per_observation": server_cpu_ms,
        "observe_p50_ms": percentile(lat, 50) * 1e3,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "targets": {"observe_p99_ms": 5.0, "observe_rps": 1000},
    }
    return result
