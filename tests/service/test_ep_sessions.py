"""EP-mode sidecar: routing per batch on real routing, re-placement when balance drops,
persistence of the adopted placement."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from hwmodel.routing_traces import ESFT_FILES, load_esft
from service.main import create_app
from service.settings import Settings


def test_ep_session_routes_replaces_and_persists(tmp_path: Path, traces: Path) -> None:
    trace = load_esft(traces / ESFT_FILES["law"])
    spec = {
        "num_layers": 26, "num_experts": 64, "num_gpus": 8, "num_replicas": 72, "window": 16,
        "rebalance_below": 0.95, "min_gain": 0.0, "move_cost": 0.0, "deadline_s": 5.0,
    }  # fmt: skip
    settings = Settings(db_path=tmp_path / "ep.db")
    with TestClient(create_app(settings)) as c:
        created = c.post("/v1/ep-sessions", json=spec)
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        started = False
        for k in range(16):
            hist = trace.histogram(slice(4000 + 64 * k, 4064 + 64 * k))
            r = c.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": hist.tolist()})
            assert r.status_code == 200, r.text
            body = r.json()
            p2l = (
                np.asarray(created.json()["physical_to_logical"]) if body["version"] == 1 else None
            )
            if p2l is not None:
                for layer in (0, 13, 25):  # routing conserves every expert's tokens
                    got = np.bincount(
                        p2l[layer], weights=body["tokens_per_slot"][layer], minlength=64
                    )
                    assert got.tolist() == hist[layer].tolist()
            started |= body["replace_started"]
        assert started
        deadline = time.monotonic() + 90
        info = c.get(f"/v1/ep-sessions/{sid}").json()
        while info["version"] == 1 and time.monotonic() < deadline:
            time.sleep(0.5)
            info = c.get(f"/v1/ep-sessions/{sid}").json()
        assert info["version"] == 2 and info["moved_replicas_last"] > 0
        placement = np.asarray(info["physical_to_logical"])
        assert placement.shape == (26, 72)
        assert all(len(set(row.tolist())) == 64 for row in placement)  # every expert kept
        bad = c.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": [[1, 2]]})
        assert bad.status_code == 422 and "histogram" in bad.json()["error"]
    with TestClient(create_app(settings)) as c:  # a restart keeps the adopted placement
        again = c.get(f"/v1/ep-sessions/{sid}").json()
        assert again["version"] == 2 and again["physical_to_logical"] == info["physical_to_logical"]


def test_default_policy_adopts_a_replacement_within_64_batches(
    tmp_path: Path, traces: Path
) -> None:
    """Issue 18: with the default policy, a real model's session re-places within 64 batches
    of 64 tokens (per-layer adoption, aligned slots) and says what moved and why."""
    trace = load_esft(traces / ESFT_FILES["law"])
    spec = {"num_layers": 26, "num_experts": 64, "num_gpus": 8, "num_replicas": 72}
    with TestClient(create_app(Settings(db_path=tmp_path / "ep.db"))) as c:
        created = c.post("/v1/ep-sessions", json=spec).json()
        sid, first = created["id"], np.asarray(created["physical_to_logical"])
        info = created
        for k in range(64):
            hist = trace.histogram(slice(64 * k, 64 * (k + 1)))
            body = c.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": hist.tolist()})
            if body.json()["replace_started"]:
                # let the background re-placement finish before the next batch
                deadline = time.monotonic() + 120
                info = c.get(f"/v1/ep-sessions/{sid}").json()
                while info["last_replace"] is None or info["last_replace"]["at_batch"] != k + 1:
                    assert time.monotonic() < deadline, "re-placement did not finish"
                    time.sleep(0.2)
                    info = c.get(f"/v1/ep-sessions/{sid}").json()
            if info["version"] > 1:
                break
        assert info["version"] == 2, info["last_replace"]
        last = info["last_replace"]
        assert last["adopted"] and last["at_batch"] <= 64 and last["gain"] > 0.02
        now = np.asarray(info["physical_to_logical"])
        assert last["moved"] == int((now != first).sum()) == info["moved_replicas_last"]
        assert last["moved"] < last["moved_unaligned"]
        assert "min_gain" in last["why"] and last["layers_adopted"]
        assert all(len(set(row.tolist())) == 64 for row in now)
