"""Benchmarks write the documented JSON shape (figures are checked by the bench, not here)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bench.common import percentile
from service.cli import app


def test_percentile() -> None:
    assert percentile([3.0], 50) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([1.0, 2.0], 100) == 2.0


def test_executor_bench_quick_writes_json(tmp_path: Path, traces: Path) -> None:
    out = tmp_path / "b.json"
    result = CliRunner().invoke(app, ["bench", "executor", "--json", str(out), "--quick"])
    assert result.exit_code == 0, result.stdout
    import json

    data = json.loads(out.read_text())
    assert data["benchmark"] == "executor"
    assert len(data["rows"]) == 3
    assert {"step_p50_ms_max", "tasks_per_s_min"} <= set(data["summary"])
    assert all(r["num_tasks_per_step"] > 26 * 6 for r in data["rows"])


def test_unknown_bench_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "nope", "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2
