"""Reliability figures: schema fuzzing, solver properties, overload, and kill -9 restarts.

* fuzz: schemathesis against a live server's own OpenAPI, every operation, valid and invalid
  inputs; counts 5xx and responses that do not match their documented schema.
* properties: random placement instances (real ESFT batches, random presets, layouts and GPU
  caches) on every backend: the plan passes the executor, predicted == simulated, bound <=
  objective, auto <= greedy, and the same input gives the same plan.
* overload: more concurrent solves than the server's limit; counts 503s, other 5xx, and
  health checks that failed meanwhile.
* kill -9: a client streams observations while the server is killed at a random moment
  (and once during a background re-solve); after a restart, every acknowledged observation
  must be there and the plan must be valid.
"""

from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench import hardening
from bench.common import BenchResult
from bench.live import Server
from hwmodel.plan_builder import layout_residency
from hwmodel.presets import hardware_preset, model_preset
from hwmodel.routing_traces import ESFT_FILES, load_esft, traces_dir
from service.examples import observation_example, placement_example, session_example
from solvers.common import Budget
from solvers.placement.problem import PlacementProblem
from solvers.placement.solve import solve_layer


def _properties(cases: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    trace = load_esft(traces_dir() / ESFT_FILES["law"])
    model = model_preset("deepseek-v2-lite")
    checked, failures = 0, []
    for _ in range(cases):
        hw = hardware_preset(
            str(rng.choice(["gpu-ndp-2dimm", "gpu-ndp-4dimm", "gpu-ndp-6dimm", "orin-agx-ndp4"]))
        )
        layer = int(rng.integers(0, 26))
        start, batch = int(rng.integers(0, 8000)), int(rng.choice([1, 2, 4, 8, 16]))
        row = tuple(int(v) for v in trace.histogram(slice(start, start + batch))[layer])
        cached = [int(e) for e in rng.choice(64, size=int(rng.integers(0, 6)), replace=False)]
        residency = layout_residency(hw, model, str(rng.choice(["round_robin", "striped"])), cached)  # type: ignore[arg-type]
        problem = PlacementProblem(
            hw, model, layer, row, batch, residency, int(rng.choice([1, 2, 4]))
        )
        objective: dict[str, int] = {}
        for backend in ("greedy", "cpsat", "milp", "auto"):
            checked += 1
            sol = solve_layer(problem, backend, budget=Budget.work(1.0))
            if sol.assignment is None:
                failures.append(f"{backend}: no plan ({sol.account.fallback_reason})")
                continue
            report = sol.instance.simulate(sol.assignment)
            acc = sol.account
            if not report.valid:
                failures.append(f"{backend}: invalid plan {report.violations[0].message}")
            if report.makespan_cycles != acc.predicted_makespan_cycles:
                failures.append(
                    f"{backend}: predicted {acc.predicted_makespan_cycles} != simulated "
                    f"{report.makespan_cycles}"
                )
            if (
                acc.lower_bound_cycles is None
                or acc.objective_cycles is None
                or acc.lower_bound_cycles > acc.objective_cycles
            ):
                failures.append(f"{backend}: bound above objective")
            objective[backend] = acc.objective_cycles or 0
        if (
            "auto" in objective
            and "greedy" in objective
            and objective["auto"] > objective["greedy"]
        ):
            failures.append("auto worse than greedy")
        again = solve_layer(problem, "greedy", budget=Budget.work(1.0))
        if again.account.objective_cycles != objective.get("greedy"):
            failures.append("greedy not deterministic")
    return {"cases": checked, "failures": len(failures), "first_failures": failures[:5]}


def _overload(db: Path, requests: int) -> dict[str, Any]:
    server = Server(db, env={"MOESCHED_MAX_CONCURRENT_SOLVES": "2"})
    server.start()
    statuses: list[int] = []
    health_failures = 0
    stop = threading.Event()
    body = placement_example() | {"options": {"backend": "cpsat", "deadline_s": 1.0}}

    def solve() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            statuses.append(c.post("/v1/placement", json=body).status_code)

    def watch() -> None:
        nonlocal health_failures
        with httpx.Client(base_url=server.url, timeout=5) as c:
            while not stop.is_set():
                if c.get("/healthz").status_code != 200:
                    health_failures += 1
                time.sleep(0.05)

    try:
        watcher = threading.Thread(target=watch)
        watcher.start()
        threads = [threading.Thread(target=solve) for _ in range(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        watcher.join()
    finally:
        server.stop()
    return {
        "requests": len(statuses),
        "ok": statuses.count(200),
        "rejected_503": statuses.count(503),
        "other_5xx": sum(1 for s in statuses if s >= 500 and s != 503),
        "health_failures": health_failures,
    }


def _kill9(db_dir: Path, runs: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    lost = 0
    invalid_plans = 0
    details = []
    for run in range(runs + 1):
        during_resolve = run == runs  # the last run kills during a background re-solve
        server = Server(db_dir / f"kill{run}.db")
        server.start()
        spec = session_example()
        if during_resolve:
            spec = spec | {
                "policy": {
                    "backend": "cpsat",
                    "deadline_s": 5.0,
                    "drift_threshold": 0.01,
                    "decay": 0.5,
                }
            }
        acked = 0
        with httpx.Client(base_url=server.url, timeout=30) as c:
            sid = c.post("/v1/sessions", json=spec).json()["id"]
            stop_at = time.monotonic() + float(rng.uniform(0.5, 2.0))
            obs = observation_example()
            resolve_seen = False
            while time.monotonic() < stop_at or (during_resolve and not resolve_seen):
                try:
                    r = c.post(f"/v1/sessions/{sid}/observations", json=obs)
                except httpx.HTTPError:
                    break
                if r.status_code == 200:
                    acked = r.json()["num_observations"]
                    resolve_seen |= r.json()["resolve_started"]
                if during_resolve and resolve_seen:
                    break
        server.stop(signal.SIGKILL)
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            info = c.get(f"/v1/sessions/{sid}/plan").json()
        server.stop()
        lost += max(0, acked - info["num_observations"])
        invalid_plans += 0 if info["plan"]["report"]["valid"] else 1
        details.append(
            {
                "acked": acked,
                "after_restart": info["num_observations"],
                "version": info["version"],
                "during_resolve": during_resolve,
            }
        )
    return {"runs": runs + 1, "lost": lost, "invalid_plans": invalid_plans, "details": details}


def run(quick: bool = False) -> BenchResult:
    result = BenchResult("reliability")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        # Schemathesis with the default settings (issue 19: 200 examples per operation).
        fz = hardening.schemathesis_fuzz(d / "fuzz.db", 5 if quick else 200)
        props = _properties(4 if quick else 40)
        over = _overload(d / "over.db", 6 if quick else 12)
        kills = _kill9(d, 2 if quick else 5)
        hard = {
            "chunked_body": hardening.chunked_body(d / "chunked.db"),
            "health_under_load": hardening.health_under_load(d / "load.db", 8 if quick else 48),
            "disconnect": hardening.disconnect_frees_slot(d / "gone.db", 1 if quick else 3),
            "deadlines_at_caps": hardening.deadlines_at_caps(d / "caps.db"),
            "kill9_ep": hardening.kill9_ep(d, 2 if quick else 20),
            "long_ep_session": hardening.long_ep_session(d / "long.db", 500 if quick else 10_000),
            "damaged_databases": hardening.damaged_databases(d),
            "numeric_fuzz": hardening.numeric_fuzz_live(d / "numeric.db"),
        }
    result.rows = [
        {"part": "fuzz", **fz},
        {"part": "properties", **props},
        {"part": "overload", **over},
        {"part": "kill9", **kills},
        *({"part": name, **value} for name, value in hard.items()),
    ]
    result.summary = {
        "fuzz_cases": fz["cases"],
        "fuzz_5xx": fz["server_errors"],
        "fuzz_schema_violations": fz["schema_violations"],
        "property_cases": props["cases"],
        "property_failures": props["failures"],
        "overload_requests": over["requests"],
        "overload_503": over["rejected_503"],
        "overload_5xx": over["other_5xx"],
        "overload_health_failures": over["health_failures"],
        "kill9_runs": kills["runs"],
        "kill9_lost_observations": kills["lost"],
        "kill9_invalid_plans": kills["invalid_plans"],
        "fuzz_slowest_response_s": fz["slowest_response_s"],
        "chunked_4x_status": hard["chunked_body"]["status"],
        "chunked_4x_peak_rss_rise_bytes": hard["chunked_body"]["peak_rss_rise_bytes"],
        "chunked_4x_rss_bound_bytes": hard["chunked_body"]["bound_bytes"],
        "health_under_load_p99_s": hard["health_under_load"]["health_p99_s"],
        "health_under_load_max_s": hard["health_under_load"]["health_max_s"],
        "health_under_load_load_average": hard["health_under_load"]["load_average_1min"],
        "health_under_load_loop_cpu_turns_over_50ms": hard["health_under_load"][
            "loop_cpu_turns_over_50ms"
        ],
        "health_under_load_loop_cpu_worst_turn_under_s": hard["health_under_load"][
            "loop_cpu_worst_under_s"
        ],
        "health_under_load_other_threads_cpu_turns_over_50ms": hard["health_under_load"][
            "other_threads_cpu_turns_over_50ms"
        ],
        "health_under_load_server_process_cpu_s": hard["health_under_load"]["server_process_cpu_s"],
        "health_under_load_loop_lag_total_s": hard["health_under_load"]["lag_total_s"],
        "health_under_load_loop_runqueue_total_s": hard["health_under_load"]["runqueue_total_s"],
        "health_under_load_loop_cpu_total_s": hard["health_under_load"]["loop_cpu_total_s"],
        "disconnect_slot_freed_max_s": hard["disconnect"]["max_s"],
        "deadline_0_5s_max_answer_s": hard["deadlines_at_caps"]["max_wall_s"],
        "deadline_0_5s_5xx": hard["deadlines_at_caps"]["server_errors"],
        "kill9_ep_runs": hard["kill9_ep"]["runs"],
        "kill9_ep_acked_batches": hard["kill9_ep"]["acked_total"],
        "kill9_ep_lost_batches": hard["kill9_ep"]["lost"],
        "long_ep_batches": hard["long_ep_session"]["batches"],
        "long_ep_window_bytes_on_disk": hard["long_ep_session"]["window_bytes_on_disk"],
        "long_ep_window_bound_bytes": hard["long_ep_session"]["window_bound_bytes"],
        "long_ep_rss_growth_after_1000_bytes": hard["long_ep_session"][
            "rss_growth_after_1000_bytes"
        ],
        "long_ep_db_growth_after_1000_bytes": hard["long_ep_session"]["db_growth_after_1000_bytes"],
        "damaged_db_outcomes": {
            r["damage"]: r["outcome"] for r in hard["damaged_databases"]["rows"]
        },
        "numeric_fuzz_cases": hard["numeric_fuzz"]["cases"],
        "numeric_fuzz_failures": hard["numeric_fuzz"]["failures"],
    }
    return result
