"""Faults and security: deadlines, a crashing backend, API keys on every /v1 route, JSON
only, and a database another process has locked."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bench.live import Server
from hwmodel.plan_builder import layout_residency
from hwmodel.presets import gpu_ndp, model_preset
from service.main import create_app
from service.settings import Settings, get_settings
from solvers.common import Budget
from solvers.placement.problem import PlacementProblem
from solvers.placement.solve import solve_layer


def big_problem() -> PlacementProblem:
    hw, model = gpu_ndp(16), model_preset("qwen3-30b-a3b")
    residency = layout_residency(hw, model, "striped", cached_experts=range(8))
    row = tuple(3 if e % 2 == 0 else 1 for e in range(model.num_routed_experts))
    return PlacementProblem(hw, model, 0, row, 64, residency, num_granules=16)


def test_a_deadline_too_short_returns_the_validated_greedy_plan_and_says_why() -> None:
    sol = solve_layer(big_problem(), "auto", deadline_s=0.01)
    assert sol.assignment is not None
    assert sol.account.status == "feasible"
    assert "skipped" in (sol.account.fallback_reason or "")


def test_a_crashing_backend_falls_back_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import solvers.placement.cpsat as cpsat

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("solver crashed")

    monkeypatch.setattr(cpsat, "solve_cpsat", boom)
    problem = PlacementProblem(
        **{**big_problem().__dict__, "tokens_per_expert": (1,) * 6 + (0,) * 122, "num_tokens": 1}
    )
    for backend in ("cpsat", "auto"):
        sol = solve_layer(problem, backend, budget=Budget.work(5.0))  # type: ignore[arg-type]
        assert sol.assignment is not None
        assert sol.account.status == "fallback"
        assert "cpsat failed: RuntimeError: solver crashed" in (sol.account.fallback_reason or "")


def test_every_v1_route_refuses_a_missing_or_wrong_key() -> None:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(api_key="k3y")
    client = TestClient(app)
    paths = app.openapi()["paths"]
    routes = [(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops]
    assert len(routes) >= 14
    for method, path in routes:
        url = path.replace("{name}", "gpu-ndp-2dimm").replace("{session_id}", "x")
        for headers in ({}, {"x-api-key": "wrong"}):
            r = client.request(method, url, json={}, headers=headers)
            assert r.status_code == 401, (method, path, r.status_code)
    for path in ("/healthz", "/readyz", "/info", "/metrics"):
        assert client.get(path).status_code == 200


def test_json_only() -> None:
    client = TestClient(create_app())
    r = client.post(
        "/v1/eplb",
        content=b"weights=1",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 422
    r = client.post(
        "/v1/eplb", content=b"\x80\x04K\x01.", headers={"content-type": "application/octet-stream"}
    )
    assert r.status_code == 422


def test_a_locked_database_stops_the_server_with_a_message(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(RuntimeError, match="cannot open the session database"):
            Server(db).start()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
