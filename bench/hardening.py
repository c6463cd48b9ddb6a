"""Hardening measurements for ``moesched bench reliability`` (issue 19), each against a live
server on a loopback port: body attacks, health under load, disconnects, deadlines at caps,
kill -9 during EP batches, a long EP session, damaged databases, and the numeric-leaf fuzz.

Every figure here is wall time or memory by nature (latency of /healthz, RSS); none decides
a solver's result. Each is reported with the bound it is compared with.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import numeric_fuzz
from bench.live import Server, fuzz
from hwmodel.presets import gpu_ndp, model_preset
from service.examples import (
    ep_session_bounds,
    response_models,
    seed_ep_session,
    simulate_example,
)

HEAVY_EP = {"num_layers": 256, "num_experts": 1024, "num_gpus": 512, "num_replicas": 8192}
RSS_SLACK_BYTES = 2**20  # the allocator's: an RSS this close to its warm value is flat
SMALL_EP = {"num_layers": 2, "num_experts": 8, "num_gpus": 2, "num_replicas": 8, "window": 8}


def _rss_bytes(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _pid(server: Server) -> int:
    assert server.proc is not None
    return server.proc.pid


def chunked_body(db: Path) -> dict[str, Any]:
    """A chunked body of 4x the limit: 413, and the server's peak RSS rises by less than 2x
    the limit."""
    limit = 8 * 2**20
    server = Server(db, env={"MOESCHED_MAX_BODY_BYTES": str(limit)})
    server.start()
    try:
        before = _rss_bytes(_pid(server), "VmHWM")

        def chunks() -> Iterator[bytes]:
            yield b'{"weights": [['
            for _ in range(4 * limit // 2**16):
                yield b"1," * 2**15

        with httpx.Client(base_url=server.url, timeout=120) as c:
            r = c.post("/v1/eplb", content=chunks(), headers={"content-type": "application/json"})
            after = _rss_bytes(_pid(server), "VmHWM")
            health = c.get("/healthz").status_code
    finally:
        server.stop()
    return {
        "limit_bytes": limit,
        "sent_bytes": 4 * limit,
        "status": r.status_code,
        "peak_rss_rise_bytes": after - before,
        "bound_bytes": 2 * limit,
        "health_after": health,
    }


LOOP_HISTOGRAMS = {
    "loop_cpu": "moesched_loop_turn_cpu_seconds",
    "other_threads_cpu": "moesched_loop_turn_other_threads_cpu_seconds",
    "lag": "moesched_loop_lag_seconds",
    "runqueue": "moesched_loop_turn_runqueue_seconds",
}


def _buckets(metrics_text: str, name: str) -> dict[float, float]:
    """A Prometheus histogram's cumulative bucket counts, by upper bound."""
    got: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            got[float(le)] = float(line.split()[-1])
    return got


def _sum(metrics_text: str, name: str) -> float:
    """A Prometheus histogram's sum (0 when absent)."""
    for line in metrics_text.splitlines():
        if line.startswith(name + "_sum "):
            return float(line.split()[-1])
    return 0.0


def loop_figures(before: str, after: str) -> dict[str, Any]:
    """The event-loop probe's histograms between two ``/metrics`` scrapes: for each (loop
    thread CPU, other threads' CPU, wall lag, the loop thread's run-queue wait) the total
    seconds, the turns over 10, 50 and 100 ms, and the bucket bound the worst turn stayed
    under (inf: over the largest bucket)."""
    out: dict[str, Any] = {}
    for key, name in LOOP_HISTOGRAMS.items():
        out[f"{key}_total_s"] = _sum(after, name) - _sum(before, name)
        b0, b1 = _buckets(before, name), _buckets(after, name)
        diff = {le: b1[le] - b0.get(le, 0.0) for le in sorted(b1)}
        total = diff.get(float("inf"), 0.0)
        out[f"{key}_turns"] = int(total)
        for ms in (10, 50, 100):
            out[f"{key}_turns_over_{ms}ms"] = int(total - diff.get(ms / 1000, total))
        out[f"{key}_worst_under_s"] = next(
            (le for le, n in diff.items() if n >= total), float("inf")
        )
    return out


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health_under_load(
    db: Path, each: int = 48, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """``each`` concurrent EP creations (each a 90-byte request costing tens of CPU seconds,
    answering a [256, 8192] placement) and ``each`` Gantt renders, while /healthz is polled.

    Reported: /healthz latency percentiles (wall time: depends on machine load, quoted with
    the load average), and what does not depend on load: the server's event-loop probe (CPU
    seconds its loop thread, and its other threads, spent between two 10 ms turns; a turn's
    CPU is what a quiet machine's /healthz would wait behind) and the server process's own
    CPU seconds beside its workers'."""
    server = Server(db, env=env)
    server.start()
    with httpx.Client(base_url=server.url, timeout=60) as c:  # workers up before the clock
        c.post("/v1/simulate", json=simulate_example())
        time.sleep(1.0)
        metrics_before = c.get("/metrics").text
    cpu_before = _cpu_s(_pid(server))
    client_cpu_before = time.process_time()
    load_before = os.getloadavg()[0]
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    stop = threading.Event()

    def watch() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                t = time.perf_counter()
                ok = c.get("/healthz").status_code == 200
                latencies.append(time.perf_counter() - t if ok else 30.0)
                time.sleep(0.02)

    # One client for all the load, its connections and the bodies made before the clock: 96
    # clients made at once (an SSL context each) cost this process 6 s of CPU on the cores
    # the server needs, which was load of the benchmark's own making.
    limits = httpx.Limits(max_connections=2 * each, max_keepalive_connections=2 * each)
    loader = httpx.Client(base_url=server.url, timeout=300, limits=limits)
    gantt_body = json.dumps(simulate_example()).encode()
    ep_body = json.dumps(HEAVY_EP).encode()

    def post(path: str, body: bytes) -> None:
        r = loader.post(path, content=body, headers={"content-type": "application/json"})
        code = str(r.status_code)
        statuses[code] = statuses.get(code, 0) + 1

    try:
        watcher = threading.Thread(target=watch)
        watcher.start()
        time.sleep(1.0)
        work: list[threading.Thread] = []
        for _ in range(each):
            work.append(threading.Thread(target=post, args=("/v1/ep-sessions", ep_body)))
            work.append(threading.Thread(target=post, args=("/v1/simulate/gantt", gantt_body)))
        for t in work:
            t.start()
        for t in work:
            t.join()
        time.sleep(0.5)
        stop.set()
        watcher.join()
        server_cpu_s = _cpu_s(_pid(server)) - cpu_before
        client_cpu_s = time.process_time() - client_cpu_before
        with httpx.Client(base_url=server.url, timeout=60) as c:
            loop = loop_figures(metrics_before, c.get("/metrics").text)
    finally:
        loader.close()
        server.stop()
    lat = np.asarray(latencies)
    return {
        "requests": 2 * each,
        "statuses": statuses,
        "health_checks": len(lat),
        "health_p50_s": float(np.percentile(lat, 50)),
        "health_p99_s": float(np.percentile(lat, 99)),
        "health_max_s": float(lat.max()),
        "bound_p99_s": 0.1,
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "server_process_cpu_s": server_cpu_s,
        # this load generator's own CPU on the same cores (96 clients and the watcher)
        "client_process_cpu_s": client_cpu_s,
        **loop,
        # the loop's lag beyond its own CPU and its wait for a CPU: the loop blocked (the
        # GIL held by another thread, or a blocking call)
        "lag_not_cpu_nor_runqueue_s": loop["lag_total_s"]
        - loop["runqueue_total_s"]
        - loop["loop_cpu_total_s"],
    }


def health_worker_nice_ab(db: Path, each: int = 48) -> dict[str, Any]:
    """``health_under_load`` twice, back to back: workers at the server's own priority
    (``MOESCHED_WORKER_NICE=0``) and at the default (10 below it). On a quiet machine the
    difference is what the workers' priority does to the loop's run-queue wait."""
    rows = {}
    for nice in ("0", "10"):
        got = health_under_load(db.with_name(f"{db.stem}-nice{nice}.db"), each, {
            "MOESCHED_WORKER_NICE": nice
        })  # fmt: skip
        rows[f"worker_nice_{nice}"] = {
            k: v
            for k, v in got.items()
            if k.startswith(("health_", "load_", "statuses", "client_", "server_"))
            or k.endswith("_total_s")
            or "over_100ms" in k
        }
    return rows


BIG_ANSWER_EP = {"num_layers": 256, "num_experts": 1024, "num_gpus": 8, "num_replicas": 2048}


def big_answers_loop_cpu(db: Path, runs: int = 3) -> dict[str, Any]:
    """Requests whose answers are big (an EP session of 256 layers x 2048 slots: its creation,
    its placement read back, a batch routed over it), one at a time, while the server's
    event-loop probe watches: the CPU its loop thread (and its other threads) spent in any
    one 10 ms turn meanwhile. Beside it, the CPU (in this process, ``time.process_time``) that
    validating and encoding the same placement answer as FastAPI does would have cost on the
    loop. Neither depends on machine load."""
    import time as _time

    EpSessionInfo = response_models()["/v1/ep-sessions"]  # the answer type of the route

    server = Server(db, env={"MOESCHED_MAX_DEADLINE_S": "120", "MOESCHED_DEFAULT_DEADLINE_S": "60"})
    server.start()
    rng = np.random.default_rng(0)
    sizes: list[int] = []
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            c.post("/v1/simulate", json=simulate_example())  # workers up
            time.sleep(1.0)
            before = c.get("/metrics").text
            for _ in range(runs):
                r = c.post("/v1/ep-sessions", json=BIG_ANSWER_EP | {"deadline_s": 120})
                assert r.status_code == 201, r.text
                sizes.append(len(r.content))
                sid = r.json()["id"]
                sizes.append(len(c.get(f"/v1/ep-sessions/{sid}").content))
                hist = rng.integers(0, 64, (256, 1024)).tolist()
                b = c.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": hist})
                assert b.status_code == 200, b.text
                sizes.append(len(b.content))
            placement = r.json()["physical_to_logical"]
            after = c.get("/metrics").text
    finally:
        server.stop()
    started = _time.process_time()
    info = EpSessionInfo(
        id="x", version=1, num_batches=0, physical_to_logical=placement, moved_replicas_last=0
    )
    json.dumps(EpSessionInfo.model_validate(info).model_dump(mode="json"))
    fastapi_path_cpu_s = _time.process_time() - started
    return {
        "requests": 3 * runs,
        "largest_answer_bytes": max(sizes),
        "fastapi_encode_on_loop_cpu_s": fastapi_path_cpu_s,
        **loop_figures(before, after),
    }


def disconnect_frees_slot(db: Path, runs: int = 3) -> dict[str, Any]:
    """One solve slot; a heavy request whose client hangs up after 1 s; the time from the
    hang-up until the slot is free (the server's busy-slot gauge reads 0), and until a small
    request admitted next has been answered (201; it waits for a fresh worker process)."""
    server = Server(db, env={"MOESCHED_MAX_CONCURRENT_SOLVES": "1"})
    server.start()
    freed: list[float] = []
    answered: list[float] = []
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            c.post("/v1/ep-sessions", json=SMALL_EP | {"deadline_s": 60})  # warm
            for _ in range(runs):
                with contextlib.suppress(httpx.TimeoutException):
                    httpx.post(
                        f"{server.url}/v1/ep-sessions",
                        json=HEAVY_EP | {"deadline_s": 600},
                        timeout=1.0,
                    )
                gone = time.perf_counter()
                while _slots_busy(c) > 0:  # the server's own gauge of busy solve slots
                    time.sleep(0.02)
                freed.append(time.perf_counter() - gone)
                while (
                    c.post("/v1/ep-sessions", json=SMALL_EP | {"deadline_s": 60}).status_code != 201
                ):
                    time.sleep(0.05)
                answered.append(time.perf_counter() - gone)
    finally:
        server.stop()
    return {
        "runs": runs,
        "slot_freed_after_s": freed,
        "next_request_answered_after_s": answered,
        "max_s": max(freed),
        "bound_s": 1.0,
    }


def _slots_busy(c: httpx.Client, cls: str = "solve") -> float:
    for line in c.get("/metrics").text.splitlines():
        if line.startswith(f'moesched_slots_busy{{cls="{cls}"}}'):
            return float(line.split()[-1])
    return 0.0


def _big_placement() -> dict[str, Any]:
    hw, model = gpu_ndp(16), model_preset("qwen3-30b-a3b")
    rng = np.random.default_rng(0)
    rows = [
        [int(v) for v in rng.multinomial(64 * model.top_k, np.ones(128) / 128).clip(0, 64)]
        for _ in range(model.num_moe_layers)
    ]
    return {
        "hardware": hw.model_dump(mode="json"),
        "model_preset": "qwen3-30b-a3b",
        "workload": {
            "layer_ids": list(range(model.num_moe_layers)),
            "tokens_per_expert": rows,
            "num_tokens": 64,
        },
        "layout": "striped",
        "cached_experts": list(range(8)),
        "options": {"backend": "cpsat", "deadline_s": 600, "num_granules": 16},
    }


def _big_simulate() -> dict[str, Any]:
    body = simulate_example()
    return body


def deadlines_at_caps(db: Path) -> dict[str, Any]:
    """Every POST route at (or near) its caps, with the server's deadline cap at 0.5 s and a
    grace of 1 s: the wall time of each answer (bound 2 s)."""
    ep_db = db.with_name("caps-ep.db")
    reps = HEAVY_EP["num_replicas"] // HEAVY_EP["num_experts"]
    placement = np.tile(np.arange(HEAVY_EP["num_experts"]), (HEAVY_EP["num_layers"], reps))
    seed_ep_session(ep_db, "caps", HEAVY_EP | {"window": 4}, placement)
    server = Server(
        ep_db,
        env={
            "MOESCHED_MAX_DEADLINE_S": "0.5",
            "MOESCHED_DEADLINE_GRACE_S": "1.0",
            "MOESCHED_DEFAULT_DEADLINE_S": "0.5",
        },
    )
    server.start()
    rng = np.random.default_rng(0)
    big_place = _big_placement()
    cases: list[tuple[str, dict[str, Any]]] = [
        ("/v1/placement", big_place),
        ("/v1/schedule", big_place),
        (
            "/v1/ordering",
            {
                "hardware_preset": "dep-h20",
                "model_preset": "deepseek-v2",
                "batch_tokens": 1_000_000,
                "num_layers": 16,
                "options": {"backend": "cpsat", "deadline_s": 600, "max_micro_batches": 64},
            },
        ),
        (
            "/v1/eplb",
            {
                "weights": rng.integers(0, 1000, (256, 1024)).tolist(),
                "num_replicas": 8192,
                "num_groups": 1,
                "num_nodes": 1,
                "num_gpus": 512,
                "backend": "cpsat",
                "deadline_s": 600,
            },
        ),
        (
            "/v1/route",
            {
                "physical_to_logical": (np.arange(65536) % 16384).tolist(),
                "num_gpus": 4096,
                "loads": rng.integers(0, 2**14, 16384).tolist(),
            },
        ),
        ("/v1/simulate", _big_simulate()),
        ("/v1/simulate/trace", _big_simulate()),
        ("/v1/simulate/gantt", _big_simulate()),
        (
            "/v1/sessions",
            {k: v for k, v in big_place.items() if k not in ("workload", "options")}
            | {"policy": {"backend": "cpsat", "deadline_s": 600, "plan_batch_tokens": 64}},
        ),
        ("/v1/ep-sessions", HEAVY_EP | {"deadline_s": 600}),
        (
            "/v1/ep-sessions/caps/batches",
            {"histogram": rng.integers(0, 2**10, (256, 1024)).tolist()},
        ),
    ]
    rows: list[dict[str, Any]] = []
    try:
        with httpx.Client(base_url=server.url, timeout=300) as c:
            # Warm both classes of workers first: the first start of the worker processes is
            # not any request's deadline.
            c.post("/v1/route", json={"physical_to_logical": [0], "num_gpus": 1, "loads": [1]})
            c.post("/v1/simulate", json=simulate_example())
            for path, body in cases:
                t = time.perf_counter()
                r = c.post(path, json=body)
                rows.append(
                    {
                        "route": path,
                        "status": r.status_code,
                        "error_type": r.json().get("error_type")
                        if r.status_code >= 400 and "json" in r.headers.get("content-type", "")
                        else None,
                        "wall_s": time.perf_counter() - t,
                    }
                )
    finally:
        server.stop()
    return {
        "rows": rows,
        "max_wall_s": max(r["wall_s"] for r in rows),
        "server_errors": sum(1 for r in rows if r["status"] >= 500),
        "bound_s": 2.0,
    }


def kill9_ep(db_dir: Path, runs: int = 20, seed: int = 0) -> dict[str, Any]:
    """EP batches streamed while the server is killed (SIGKILL): each run kills it a random
    0-20 ms after a random number (20-200) of batches were acknowledged, so that every run
    acknowledges many (a kill at a random wall time hit most runs of a loaded machine
    before their first answer). After a restart the session must hold every acknowledged
    batch, and at most the one in flight beyond them."""
    rng = np.random.default_rng(seed)
    db = db_dir / "kill9-ep.db"
    server = Server(db)
    server.start()
    lost, extra, details = 0, 0, []
    hist = {"histogram": [[3, 1, 0, 0, 2, 0, 1, 1]] * 2}
    try:
        for _ in range(runs):
            target, after_s = int(rng.integers(20, 201)), float(rng.uniform(0.0, 0.02))
            acked = [0]
            with httpx.Client(base_url=server.url, timeout=30) as c:
                sid = c.post("/v1/ep-sessions", json=SMALL_EP).json()["id"]

                def stream(c: httpx.Client = c, sid: str = sid, acked: list[int] = acked) -> None:
                    while True:
                        try:
                            r = c.post(f"/v1/ep-sessions/{sid}/batches", json=hist)
                        except httpx.HTTPError:
                            return
                        if r.status_code != 200:
                            return
                        acked[0] += 1

                streamer = threading.Thread(target=stream)
                streamer.start()
                while acked[0] < target and streamer.is_alive():
                    time.sleep(0.001)
                time.sleep(after_s)
                server.stop(signal.SIGKILL)
                streamer.join()
            server.start()
            with httpx.Client(base_url=server.url, timeout=30) as c:
                stored = c.get(f"/v1/ep-sessions/{sid}").json()["num_batches"]
            lost += max(0, acked[0] - stored)
            extra += max(0, stored - acked[0] - 1)
            details.append({"acked": acked[0], "after_restart": stored})
    finally:
        server.stop()
    return {
        "runs": runs,
        "acked_total": sum(d["acked"] for d in details),
        "lost": lost,
        "stored_beyond_the_one_in_flight": extra,
        "details": details,
    }


def long_ep_session(db: Path, batches: int = 10_000) -> dict[str, Any]:
    """One EP session (26 layers x 64 experts) streamed ``batches`` batches, window bound 1 MiB:
    the server's RSS and the database's size as it goes, the window rows on disk, and both
    checked against the bounds the settings give (``EpBounds``): the database files under
    ``db_bytes``; the RSS under its value after the session's creation plus the session's
    ``memory_bytes`` plus the store's page caches (``(READERS_KEPT + 1) x CACHE_BYTES``), and
    flat after warm-up (batch 1,000 to the end within ``RSS_SLACK_BYTES``, the allocator's)."""
    bound = 2**20
    env = {"MOESCHED_EP_WINDOW_MAX_BYTES": str(bound), "MOESCHED_MAX_DEADLINE_S": "30"}
    server = Server(db, env=env)
    server.start()
    spec: dict[str, Any] = {"num_layers": 26, "num_experts": 64, "num_gpus": 8}
    spec |= {"num_replicas": 72, "window": 1024}
    spec["rebalance_below"] = 0.01  # routing and storage only, no re-placement
    bounds = ep_session_bounds(spec, env)
    db_bound = bounds["db_bytes"]
    rng = np.random.default_rng(0)
    samples: list[dict[str, int]] = []

    def sample(k: int) -> None:
        files = {p.name: p.stat().st_size for p in db.parent.glob(db.name + "*")}
        rss = _rss_bytes(_pid(server))
        samples.append({"batches": k, "rss_bytes": rss, "db_bytes": sum(files.values())})

    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            sid = c.post("/v1/ep-sessions", json=spec).json()["id"]
            sample(0)
            for k in range(1, batches + 1):
                hist = rng.integers(0, 64, (26, 64)).tolist()
                r = c.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": hist})
                assert r.status_code == 200, r.text
                if k in (100, 1000, 2500, 5000, 7500, batches):
                    sample(k)
            num = c.get(f"/v1/ep-sessions/{sid}").json()["num_batches"]
        con = sqlite3.connect(db)
        window_rows, window_bytes = con.execute(
            "SELECT count(*), sum(length(hist)) FROM ep_batches"
        ).fetchone()
        con.close()
    finally:
        server.stop()
    rss_bound = samples[0]["rss_bytes"] + bounds["memory_bytes"] + bounds["page_cache_bytes"]
    warm = next(s for s in samples if s["batches"] == 1000)
    rss_growth = samples[-1]["rss_bytes"] - warm["rss_bytes"]
    db_max = max(s["db_bytes"] for s in samples)
    rss_max = max(s["rss_bytes"] for s in samples)
    return {
        "batches": num,
        "window_bound_bytes": bound,
        "window_batches_kept": bounds["window_batches"],
        "window_rows": window_rows,
        "window_bytes_on_disk": window_bytes,
        "samples": samples,
        "db_bound_bytes": db_bound,
        "db_max_bytes": db_max,
        "db_within_bound": db_max <= db_bound,
        "session_memory_bound_bytes": bounds["memory_bytes"],
        "rss_bound_bytes": rss_bound,
        "rss_max_bytes": rss_max,
        "rss_within_bound": rss_max <= rss_bound,
        "rss_growth_after_1000_bytes": rss_growth,
        "rss_max_growth_after_1000_bytes": rss_max - warm["rss_bytes"],
        "rss_slack_bytes": RSS_SLACK_BYTES,
        "rss_flat_after_warmup": rss_growth <= RSS_SLACK_BYTES,
        "db_growth_after_1000_bytes": samples[-1]["db_bytes"] - warm["db_bytes"],
    }


def damaged_databases(db_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Each damage on a database a killed server left (sessions and EP batches committed):
    does the next start refuse naming the file, or start and serve without 5xx?"""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []

    def prepare(name: str, clean: bool) -> tuple[Path, list[str]]:
        db = db_dir / f"{name}.db"
        server = Server(db)
        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            ids = [c.post("/v1/ep-sessions", json=SMALL_EP).json()["id"] for _ in range(20)]
            for sid in ids:
                for _ in range(5):
                    c.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": [[1] * 8] * 2})
        server.stop(signal.SIGTERM if clean else signal.SIGKILL)
        return db, ids

    def flip(path: Path, n: int) -> None:
        data = bytearray(path.read_bytes())
        for pos in rng.integers(0, len(data), n):
            data[pos] ^= 0xFF
        path.write_bytes(bytes(data))

    damages = {
        "main truncated to 0": (True, lambda db: db.write_bytes(b"")),
        "main truncated to half": (
            True,
            lambda db: db.write_bytes(db.read_bytes()[: db.stat().st_size // 2]),
        ),
        "main random byte flips": (True, lambda db: flip(db, 64)),
        "WAL deleted": (False, lambda db: Path(str(db) + "-wal").unlink()),
        "WAL damaged": (False, lambda db: flip(Path(str(db) + "-wal"), 64)),
    }
    for name, (clean, damage) in damages.items():
        db, ids = prepare(name.replace(" ", "-"), clean)
        damage(db)
        server = Server(db)
        try:
            server.start(timeout_s=60)
        except RuntimeError as exc:
            rows.append(
                {
                    "damage": name,
                    "outcome": "refused",
                    "names_file": str(db) in str(exc),
                    "message": str(exc)[-300:],
                }
            )
            continue
        codes: dict[str, int] = {}
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for sid in ids:
                code = str(c.get(f"/v1/ep-sessions/{sid}").status_code)
                codes[code] = codes.get(code, 0) + 1
        server.stop()
        rows.append({"damage": name, "outcome": "started", "statuses": codes})
    return {"rows": rows}


# the operations whose cases can each take seconds (a solve or a sweep): fuzzed last
SLOW_OPERATIONS = ("POST /v1/ep-sessions", "POST /v1/sweeps", "POST /v1/sessions", "POST /v1/route")


def pairs_done(progress: Path) -> frozenset[str]:
    """The (operation, mode) pairs a progress file says have ended, as ``"GET /info positive"``."""
    if not progress.exists():
        return frozenset()
    rows = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    return frozenset(f"{r['operation']} {r['mode']}" for r in rows)


def schemathesis_fuzz(
    db: Path, examples: int = 200, progress: Path | None = None
) -> dict[str, Any]:
    """Schemathesis against the server's own OpenAPI with the default settings: ``examples``
    per operation and generation mode (valid and invalid); 5xx, schema violations and the
    slowest answer (bound 10 s). Only the sweeps' output directory is not the default (a
    temporary one, not the working directory). Pairs the progress file already holds are
    skipped (a stopped run resumes); the counts are this run's only."""
    skip = pairs_done(progress) if progress is not None else frozenset()
    server = Server(db, env={"MOESCHED_SWEEP_DIR": str(db.with_suffix(".sweeps"))})
    server.start()
    try:
        got = fuzz(server.url, examples, progress=progress, skip=skip, last=SLOW_OPERATIONS)
    finally:
        server.stop()
    got |= {"pairs_skipped_as_done": len(skip)}
    return got | {"examples_per_operation": examples, "bound_slowest_s": 10.0}


def numeric_fuzz_live(db: Path) -> dict[str, Any]:
    """All numeric-leaf fuzz cases against a live server."""
    env = {"MOESCHED_MAX_DEADLINE_S": "1", "MOESCHED_SWEEP_DIR": str(db.with_suffix(".sweeps"))}
    server = Server(db, env=env)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:

            def post(url: str, text: str) -> tuple[int, bytes]:
                r = c.post(url, content=text, headers={"content-type": "application/json"})
                return r.status_code, r.content

            def make_ids() -> tuple[str, str]:
                bodies = numeric_fuzz.bodies()
                sid = c.post("/v1/sessions", json=bodies["/v1/sessions"]).json()["id"]
                ep = c.post("/v1/ep-sessions", json=bodies["/v1/ep-sessions"]).json()["id"]
                return sid, ep

            settle = numeric_fuzz.end_sweep(lambda url: c.get(url).json(), c.delete)
            return numeric_fuzz.run(post, make_ids, settle=settle)
    finally:
        server.stop()


def main(argv: list[str]) -> None:
    """``python -m bench.hardening OUT.jsonl PART...``: run the named parts one at a time,
    appending each result to OUT as one JSON line (so a long run keeps what it measured)."""
    import tempfile

    out, names = Path(argv[0]), argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for name in names:
            started, load = time.perf_counter(), os.getloadavg()[0]
            fn = globals()[name]
            arg = d if name in ("kill9_ep", "damaged_databases") else d / f"{name}.db"
            kwargs: dict[str, Any] = {}
            if name == "schemathesis_fuzz":  # per operation, as each ends
                kwargs["progress"] = out.with_suffix(".schemathesis.jsonl")
            try:
                result = fn(arg, **kwargs)
            except Exception as exc:  # reported, not hidden: the part failed to run
                result = {"error": repr(exc)}
            row = {
                "part": name,
                "wall_s": time.perf_counter() - started,
                "load_average_1min_before_after": [load, os.getloadavg()[0]],
                **result,
            }
            with out.open("a") as f:
                f.write(json.dumps(row, default=str) + "\n")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
