"""Two service replicas on one PostgreSQL database (started for the test run by
tests/with_services.sh): a round-robin client with 4 concurrent observers, one replica killed
with SIGKILL mid-stream. Every acknowledged observation is counted exactly once (a request that
failed with its replica is retried on the other with the same observation id), the plan
versions form one sequence, and concurrent re-solves of one session swap its plan once."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.live import Server
from service.examples import session_example
from service.pg_store import PostgresStore
from service.schemas import SessionCreate
from service.sessions import SessionManager
from service.settings import Settings

PG_URL = os.environ.get("MOESCHED_TEST_PG_URL", "")
pytestmark = pytest.mark.skipif(
    not PG_URL, reason="needs MOESCHED_TEST_PG_URL (make test starts a PostgreSQL server)"
)
SHAPE = (26, 64)  # DeepSeek-V2-Lite: MoE layers x routed experts


def histogram(rng: np.random.Generator, hot: int) -> list[list[int]]:
    """A decode batch of 8 tokens whose routing prefers experts hot..hot+7 (drifts with hot)."""
    hist = np.zeros(SHAPE, dtype=np.int64)
    for layer in range(SHAPE[0]):
        experts = (hot + rng.integers(0, 8, size=8 * 6)) % SHAPE[1]
        np.add.at(hist[layer], experts, 1)
    return hist.tolist()


@pytest.mark.slow
def test_a_killed_replica_loses_no_acknowledged_observation(tmp_path: Path) -> None:
    env = {"MOESCHED_DB_URL": PG_URL}
    replicas = [Server(tmp_path / "a.db", env), Server(tmp_path / "b.db", env)]
    for r in replicas:
        r.start()
    try:
        spec = session_example() | {
            "policy": {"backend": "greedy", "deadline_s": 1.0, "drift_threshold": 0.15,
                       "decay": 0.9}
        }  # fmt: skip
        created = httpx.post(f"{replicas[0].url}/v1/sessions", json=spec, timeout=120)
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        per_observer, acks, lock = 20, [], threading.Lock()
        killed = threading.Event()

        def observer(index: int) -> None:
            rng = np.random.default_rng(index)
            with httpx.Client(timeout=60) as client:
                for i in range(per_observer):
                    body = {"histogram": histogram(rng, hot=8 * (i // 5)),
                            "observation_id": f"{index}-{i}"}  # fmt: skip
                    turn = index + i
                    for _attempt in range(6):
                        url = replicas[turn % 2].url
                        try:
                            r = client.post(f"{url}/v1/sessions/{sid}/observations", json=body)
                        except httpx.HTTPError:
                            turn += 1  # that replica is gone: the other one, same id
                            continue
                        if r.status_code == 200:
                            with lock:
                                acks.append((index, i, r.json()))
                            break
                        assert r.status_code == 503, r.text  # busy: retry
                        turn += 1
                    else:
                        pytest.fail(f"observation {index}-{i} never acknowledged")

        threads = [threading.Thread(target=observer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        while len(acks) < 20:
            threads[0].join(timeout=0.05)
        replicas[0].stop(signal.SIGKILL)
        killed.set()
        for t in threads:
            t.join(timeout=600)
        assert len(acks) == 4 * per_observer
        info = httpx.get(f"{replicas[1].url}/v1/sessions/{sid}/plan", timeout=60).json()
        assert info["num_observations"] == 4 * per_observer  # each id counted exactly once
        for k in range(4):  # one version sequence: never back in time for any observer
            versions = [a[2]["version"] for a in sorted(x for x in acks if x[0] == k)]
            assert versions == sorted(versions)
        assert info["version"] >= max(a[2]["version"] for a in acks)
    finally:
        for r in replicas:
            r.stop(signal.SIGKILL)


def test_two_replicas_resolving_the_same_drift_swap_the_plan_once(tmp_path: Path) -> None:
    settings = Settings(db_path=tmp_path / "unused.db", max_deadline_s=5.0)
    stores = [PostgresStore(PG_URL), PostgresStore(PG_URL)]
    managers = [SessionManager(s, settings) for s in stores]
    try:
        spec = SessionCreate.model_validate(
            session_example() | {"policy": {"backend": "greedy", "drift_threshold": 0.05}}
        )
        info = managers[0].create(spec)
        hist = np.zeros(SHAPE)
        hist[:, 40:48] = 50.0  # far from the seed counts: drift over the threshold
        got = stores[0].observe(info.id, hist, 0.5, 1e12, uuid.uuid4().hex)
        assert got is not None and got.version == 1
        lives = [m._session(info.id) for m in managers]
        threads = [threading.Thread(target=m._resolve, args=(info.id, live))
                   for m, live in zip(managers, lives, strict=True)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        row = stores[1].get(info.id)
        assert row is not None and row.version == 2  # one swap, not two
        assert np.array_equal(row.plan_counts, got.counts)
        assert sum(m.resolves for m in managers) == 1
    finally:
        for m in managers:
            m.close()
        for s in stores:
            s.close()
