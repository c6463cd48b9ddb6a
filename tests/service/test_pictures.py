"""Answers that lead with the summary, and the same answers as pictures in one call:
`?format=png|svg|perfetto|html` on /v1/schedule, /v1/placement and /v1/ordering."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hwmodel.report import Report
from hwmodel.trace_export import chrome_trace
from service.examples import ordering_example, placement_example
from service.main import create_app
from service.schemas import ScheduleResponse


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def greedy(body: dict[str, Any]) -> dict[str, Any]:
    return body | {"options": body["options"] | {"backend": "greedy"}}


def test_schedule_answer_leads_with_the_summary(client: TestClient) -> None:
    r = client.post("/v1/schedule", json=greedy(placement_example()))
    assert r.status_code == 200, r.text
    body = r.json()
    assert next(iter(body)) == "summary"
    assert list(body)[-1] in {"plan", "layers", "ordering"}  # the task graph comes after
    s = body["summary"]
    assert list(s)[:3] == ["status", "why", "gap"]
    assert s["makespan_cycles"] == body["report"]["makespan_cycles"]
    assert s["status"] == body["account"]["status"]
    # every active expert of every layer is mapped to a device and its FFN slice
    hist = placement_example()["workload"]["tokens_per_expert"]
    for layer, row in zip(s["layers"], hist, strict=True):
        active = {e for e, tokens in enumerate(row) if tokens}
        assert set(map(int, layer["experts"])) == active
        for shards in layer["experts"].values():
            assert all(isinstance(d, str) and start >= 0 for d, start, _ in shards)


def test_one_status_per_answer() -> None:
    from hwmodel.plan import SolverAccount
    from service.schemas import one_status, status_why

    fell = SolverAccount(status="feasible", fallback_reason="cpsat found no schedule (UNKNOWN)")
    assert one_status(fell).status == "fallback"
    assert "cpsat found no schedule" in status_why(one_status(fell))
    proven = SolverAccount(status="optimal", fallback_reason="cpsat found no schedule (UNKNOWN)")
    assert one_status(proven).status == "optimal"
    assert status_why(proven).startswith("the plan meets the proven lower bound")


@pytest.mark.parametrize("path", ["/v1/schedule", "/v1/placement"])
def test_png_and_svg_gantt_with_a_legend_in_words(client: TestClient, path: str) -> None:
    png = client.post(f"{path}?format=png", json=greedy(placement_example()))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    svg = client.post(f"{path}?format=svg", json=greedy(placement_example()))
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    text = svg.text
    for words in ("expert shard (compute)", "activations sent", "MoE layer", "NDP unit ndp0",
                  "GPU gpu", "time (ms)"):  # fmt: skip
        assert words.replace(" ", "") in text.replace(" ", "") or words in text, words


def check_perfetto(trace: dict[str, Any], plan_after: dict[str, tuple[str, ...]]) -> None:
    """The structure Perfetto's JSON importer needs, and one flow per dependency that ran."""
    events = trace["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert procs[1] == "compute devices" and procs[2] == "links"
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("name") == "thread_name"}  # fmt: skip
    slices = [e for e in events if e["ph"] == "X"]
    assert slices and all((e["pid"], e["tid"]) in threads for e in slices)
    assert all(e["dur"] >= 0 and e["args"]["kind"] for e in slices)
    by_task = {e["args"]["task_id"]: e for e in slices}
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert set(starts) == set(ends)
    ran = set(by_task)
    expected = sum(1 for t, deps in plan_after.items() if t in ran for d in deps if d in ran)
    assert len(starts) == expected > 0
    for fid, s in starts.items():
        f = ends[fid]
        assert f["bp"] == "e" and s["ts"] <= f["ts"] + 1e-9
        # the start lies inside a slice of its thread (so the arrow binds to that slice)
        assert any(x["pid"] == s["pid"] and x["tid"] == s["tid"]
                   and x["ts"] <= s["ts"] <= x["ts"] + x["dur"] for x in slices)  # fmt: skip
    counters = [e for e in events if e["ph"] == "C"]
    assert any(e["name"].startswith("link ") for e in counters)
    for e in counters:
        assert all(v >= 0 for v in e["args"].values())


def test_perfetto_trace_from_schedule_in_one_call(client: TestClient) -> None:
    body = greedy(placement_example())
    r = client.post("/v1/schedule?format=perfetto", json=body)
    assert r.status_code == 200, r.text
    trace = r.json()
    answer = ScheduleResponse.model_validate(client.post("/v1/schedule", json=body).json())
    check_perfetto(trace, {t.id: t.after for t in answer.plan.tasks})
    names = {e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
    assert "GPU gpu" in names and any(n.startswith("NDP unit ") for n in names)
    assert any(n.startswith("link ") for n in names)
    tp_shell = os.environ.get("PERFETTO_TRACE_PROCESSOR") or shutil.which("trace_processor_shell")
    if tp_shell:  # Perfetto's own importer, when its binary is installed (it cannot be fetched)
        from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "moesched-schedule.json")
        with open(path, "w") as f:
            json.dump(trace, f)
        tp = TraceProcessor(trace=path, config=TraceProcessorConfig(bin_path=tp_shell))
        flows = tp.query("select count(*) as n from flow").as_pandas_dataframe()["n"][0]
        assert flows == sum(1 for e in trace["traceEvents"] if e["ph"] == "s")


def test_memory_counter_tracks_weight_loads() -> None:
    """A plan that loads a weight slice: the memory counter rises by its bytes at its end."""
    from hwmodel.executor import simulate
    from service.examples import simulate_example
    from service.schemas import SimulateRequest

    req = SimulateRequest.model_validate(simulate_example())
    hw, model = req.resolved_hardware(), req.resolved_model()
    report: Report = simulate(hw, model, req.plan, req.workload, req.residency, True)
    trace = chrome_trace(report, req.plan, hw, model)
    check_perfetto(trace, {t.id: t.after for t in req.plan.tasks})
    loads = [t for t in req.plan.tasks if t.kind == "transfer" and t.payload == "weights"]
    mem = [e for e in trace["traceEvents"] if e["ph"] == "C" and e["name"].startswith("memory")]
    if loads:
        assert mem and max(next(iter(e["args"].values())) for e in mem) > 0
    else:
        assert mem == []


def test_ordering_gantt_and_trace(client: TestClient) -> None:
    body = greedy(ordering_example())
    png = client.post("/v1/ordering?format=png", json=body)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    trace = client.post("/v1/ordering?format=perfetto", json=body).json()
    assert any(e["ph"] == "X" and e["args"]["micro_batch"] > 0 for e in trace["traceEvents"])


def test_html_timeline_is_interactive_and_local(client: TestClient) -> None:
    r = client.get("/v1/schedule/example")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'src="/static/plotly/plotly.min.js"' in html
    assert "cdn" not in html.lower() and "https://" not in html.split("<body>")[0]
    assert "expert shard (compute)" in html
    js = client.get("/static/plotly/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000
    assert "/v1/schedule/example" in client.get("/openapi.json").json()["info"]["description"]


def test_bad_format_is_a_422_naming_the_field(client: TestClient) -> None:
    r = client.post("/v1/schedule?format=gif", json=greedy(placement_example()))
    assert r.status_code == 422 and "format" in r.json()["error"]
