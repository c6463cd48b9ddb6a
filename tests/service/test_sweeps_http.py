"""Sweeps over HTTP: a job on the real Ray cluster of the test run, polled to the end."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.routes.sweeps import EXAMPLE
from service.settings import Settings


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = Settings(
        db_path=tmp_path / "s.db",
        sweep_dir=tmp_path / "sweeps",
        ray_address=os.environ.get("RAY_ADDRESS") or None,
        sweep_workers=2,
        max_sweep_points=8,
    )
    return TestClient(create_app(settings))


def test_sweep_limits_and_unknown_ids(client: TestClient) -> None:
    with client:
        big = {**EXAMPLE, "axes": {"cache_share": [0.01 * i for i in range(1, 10)]}}
        r = client.post("/v1/sweeps", json=big)
        assert r.status_code == 422 and "9 points exceed" in r.text
        long = {**EXAMPLE, "base": {**EXAMPLE["base"], "decode_steps": 4096, "prompt_tokens": 4096}}
        r = client.post("/v1/sweeps", json=long)
        assert r.status_code == 422 and "tokens over all points exceed" in r.text
        bad = client.post("/v1/sweeps", json={**EXAMPLE, "axes": {"cache_share": []}})
        assert bad.status_code == 422 and "axes" in bad.text
        assert client.get("/v1/sweeps/nope").status_code == 404
        assert client.delete("/v1/sweeps/nope").status_code == 404


@pytest.mark.slow
def test_a_sweep_job_runs_to_the_end_with_its_rows(client: TestClient) -> None:
    with client:
        r = client.post("/v1/sweeps", json=EXAMPLE)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["points_total"] == 4 and job["state"] in ("queued", "running")
        # The job holds the one sweep slot from its submission: a second gets 503 at once.
        busy = client.post("/v1/sweeps", json=EXAMPLE)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
        assert 'moesched_slots_busy{cls="sweep"} 1.0' in client.get("/metrics").text
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = client.get(f"/v1/sweeps/{job['id']}").json()
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(0.5)
        assert job["state"] == "done", job
        assert job["points_done"] == 4 and job["failed"] == 0
        rows = job["rows"]
        assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
        assert {(r["hardware"], r["cache_share"]) for r in rows} == {
            (h, c) for h in ("gpu-ndp-2dimm", "gpu-ndp-4dimm") for c in (0.1, 0.3)
        }
        assert all(r["executor_violations"] == 0 and r["latency_s"] > 0 for r in rows)
        while 'moesched_slots_busy{cls="sweep"} 0.0' not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the finished job kept its slot"
            time.sleep(0.1)
        # The same spec again reuses every finished point.
        again = client.post("/v1/sweeps", json=EXAMPLE).json()
        while again["state"] in ("queued", "running"):
            time.sleep(0.2)
            again = client.get(f"/v1/sweeps/{again['id']}", params={"rows": False}).json()
        assert again["state"] == "done" and again["rows"] == []
