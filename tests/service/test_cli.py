"""The `moesched` command line: presets and simulate (exit codes, trace and Gantt outputs)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from service.cli import app
from service.examples import simulate_example

runner = CliRunner()


def test_presets_lists_hardware_and_models() -> None:
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0
    assert "gpu-ndp-6dimm" in result.stdout and "switch-base-128" in result.stdout


def test_simulate_valid_plan_writes_trace_and_gantt(tmp_path: Path) -> None:
    req = tmp_path / "req.json"
    req.write_text(json.dumps(simulate_example()))
    trace, png = tmp_path / "trace.json", tmp_path / "gantt.png"
    result = runner.invoke(app, ["simulate", str(req), "--trace", str(trace), "--gantt", str(png)])
    assert result.exit_code == 0, result.stdout
    assert "valid: True" in result.stdout
    events = json.loads(trace.read_text())["traceEvents"]
    spans = [e for e in events if e["ph"] == "X"]
    names = {e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert {"GPU gpu", "NDP unit ndp0", "NDP unit ndp1", "link pcie_down", "link pcie_up"} == names
    assert len(spans) == 22 and all(e["dur"] > 0 for e in spans)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_exits_1_on_violations(tmp_path: Path) -> None:
    body = simulate_example()
    body["residency"] = {"by_memory": {}}
    req = tmp_path / "req.json"
    req.write_text(json.dumps(body))
    result = runner.invoke(app, ["simulate", str(req)])
    assert result.exit_code == 1
    assert "VIOLATION weights_not_resident" in result.stdout


def test_simulate_exits_2_on_bad_input(tmp_path: Path) -> None:
    req = tmp_path / "req.json"
    req.write_text('{"hardware_preset": "nope"}')
    assert runner.invoke(app, ["simulate", str(req)]).exit_code == 2


def test_solve_ordering_writes_gantt_and_trace(tmp_path: Path) -> None:
    from service.examples import ordering_example

    req = tmp_path / "ord.json"
    req.write_text(json.dumps(ordering_example() | {"options": {"backend": "greedy"}}))
    png, trace = tmp_path / "g.png", tmp_path / "t.json"
    result = runner.invoke(app, ["solve", str(req), "--gantt", str(png), "--trace", str(trace)])
    assert result.exit_code == 0, result.stdout
    assert "micro-batches" in result.stdout and "PPPipe" in result.stdout
    assert png.read_bytes()[:4] == b"\x89PNG"
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("args", {}).get("micro_batch", 0) > 0 for e in events if e["ph"] == "X")


def test_replay_reports_every_policy(tmp_path: Path, traces: Path) -> None:
    out = tmp_path / "r.json"
    result = runner.invoke(
        app,
        ["replay", "--trace", str(traces / "flame_moe_290m_prefill_2048tok.json"),
         "--json", str(out), "--policy", "lru", "--policy", "belady", "--policy", "moesched",
         "--capacity-experts", "16", "--max-steps", "12"],
    )  # fmt: skip
    assert result.exit_code == 0, result.stdout
    data = json.loads(out.read_text())
    assert data["model"] == "flame-moe-290m"  # matched to the trace's shape
    got = data["policies"]
    assert set(got) == {"lru", "belady", "moesched"}
    assert got["lru"]["hit_rate"] <= got["belady"]["hit_rate"]
    assert got["lru"]["prefetches"] == 0
    for v in got.values():
        assert v["steps"] == len(v["latency_ms_per_step"]) == 12
        assert v["executor_violations"] == 0
        assert v["weight_bytes_moved"] > 0 and min(v["latency_ms_per_step"]) > 0
