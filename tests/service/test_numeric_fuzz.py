"""Numeric-leaf fuzz in CI: a deterministic slice (every 9th) of the cases of
``bench.numeric_fuzz`` (every numeric field of every POST route set to NaN, +-Inf, +-1e308,
1e-308, 5e-324, 0, -1, 2**63, 10**400) gives no 5xx and no non-finite or null number in a
200; ``moesched bench reliability`` runs all of them."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from bench import numeric_fuzz
from service.main import create_app
from service.settings import Settings


def test_extreme_numbers_never_give_a_5xx(tmp_path: Path) -> None:
    app = create_app(
        Settings(db_path=tmp_path / "f.db", max_deadline_s=1.0, sweep_dir=tmp_path / "sweeps")
    )
    with TestClient(app) as c:

        def post(url: str, text: str) -> tuple[int, bytes]:
            r = c.post(url, content=text, headers={"content-type": "application/json"})
            return r.status_code, r.content

        def make_ids() -> tuple[str, str]:
            bodies = numeric_fuzz.bodies()
            sid = c.post("/v1/sessions", json=bodies["/v1/sessions"]).json()["id"]
            ep = c.post("/v1/ep-sessions", json=bodies["/v1/ep-sessions"]).json()["id"]
            return sid, ep

        settle = numeric_fuzz.end_sweep(lambda url: c.get(url).json(), c.delete)
        got = numeric_fuzz.run(post, make_ids, every=9, settle=settle)
    assert "/v1/sweeps" in got["routes"]
    assert got["cases"] > 250
    assert got["status"].get("4xx", 0) > 100  # the refusals are exercised, not skipped
    assert got["failures"] == 0, got
