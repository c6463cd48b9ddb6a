"""Through real HTTP: a uvicorn server started by the test on a loopback port, with its own
SQLite database; schedule, simulate, a session that drifts and re-solves, and restarts (a
clean stop and a kill -9) that keep every acknowledged observation."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.live import Server
from hwmodel.plan import ComputeTask
from service.client import MoeschedClient, MoeschedError
from service.examples import placement_example, simulate_example
from service.schemas import (
    Observation,
    PlacementRequest,
    ScheduleRequest,
    SessionCreate,
    SimulateRequest,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "sessions.db")
    srv.start()
    yield srv
    srv.stop()


def test_schedule_and_simulate_over_http(server: Server) -> None:
    with MoeschedClient(server.url) as client:
        placed = client.placement(PlacementRequest.model_validate(placement_example()))
        assert placed.report.valid
        assert placed.report.makespan_cycles == placed.account.predicted_makespan_cycles
        scheduled = client.schedule(ScheduleRequest.model_validate(placement_example()))
        assert scheduled.report.valid
        assert scheduled.report.makespan_cycles == scheduled.account.predicted_makespan_cycles
        assert scheduled.report.makespan_cycles <= placed.report.makespan_cycles
        sim = client.simulate(SimulateRequest.model_validate(simulate_example()))
        # The CLI sends the same request to the running service.
        from typer.testing import CliRunner

        from service.cli import app

        req = server.db.parent / "place.json"
        req.write_text(PlacementRequest.model_validate(placement_example()).model_dump_json())
        cli = CliRunner().invoke(app, ["solve", str(req), "--url", server.url])
        assert cli.exit_code == 0, cli.stdout
        assert "valid: True" in cli.stdout
        assert sim.report.valid
        with pytest.raises(MoeschedError) as err:
            client.plan("no-such-session")
        assert err.value.status == 404


def skewed(shape: tuple[int, int], hot: list[int], rng: np.random.Generator) -> list[list[int]]:
    """A decode-like histogram: 6 experts per layer, drawn from the hot ones."""
    hist = np.zeros(shape, dtype=int)
    for layer in range(shape[0]):
        hist[layer, rng.choice(hot, size=6, replace=False)] = 1
    return hist.tolist()


def test_session_drifts_resolves_and_survives_restarts(server: Server) -> None:
    rng = np.random.default_rng(0)
    spec = SessionCreate(
        hardware_preset="gpu-ndp-4dimm",
        model_preset="deepseek-v2-lite",
        layout="striped",
        cached_experts=(0, 1),
        policy={"backend": "greedy", "drift_threshold": 0.3, "decay": 0.9, "plan_batch_tokens": 4},  # type: ignore[arg-type]
    )
    with MoeschedClient(server.url) as client:
        session = client.create_session(spec)
        assert session.version == 1 and session.plan.report.valid
        shape = (26, 64)
        started_at = None
        for i in range(60):
            ack = client.observe(
                session.id, Observation(histogram=skewed(shape, list(range(40, 52)), rng))
            )
            assert ack.num_observations == i + 1
            if ack.resolve_started:
                started_at = i
                break
        assert started_at is not None, "drift never passed the threshold"
        deadline = time.monotonic() + 60
        info = client.plan(session.id)
        while info.version == 1 and time.monotonic() < deadline:
            time.sleep(0.2)
            info = client.plan(session.id)
        assert info.version == 2
        assert info.plan.report.valid
        assert info.drift < 0.3
        # The new plan was solved mostly for the hot experts 40-51 (the decayed uniform seed
        # still holds part of the mass, so other experts get a share too).
        hot_work, other_work = 0, 0
        for t in info.plan.plan.tasks:
            if isinstance(t, ComputeTask) and t.op == "expert":
                work = t.num_tokens * ((t.ffn_end or 1408) - t.ffn_start)
                if t.expert in range(40, 52):
                    hot_work += work
                else:
                    other_work += work
        assert hot_work > other_work
        observed = info.num_observations

    server.stop()  # clean stop
    server.start()
    with MoeschedClient(server.url) as client:
        again = client.plan(session.id)
        assert again.version == 2 and again.num_observations == observed
        for _ in range(5):
            client.observe(
                session.id, Observation(histogram=skewed(shape, list(range(40, 52)), rng))
            )
        for _ in range(70):  # past a fold of the observation log into the counts blob
            client.observe(
                session.id,
                Observation(expert_ids=rng.choice(list(range(40, 52)), size=(1, 26, 6)).tolist()),
            )
        before = client.plan(session.id)
        deadline = time.monotonic() + 60
        while before.resolving and time.monotonic() < deadline:  # let a re-solve land first
            time.sleep(0.2)
            before = client.plan(session.id)
        assert not before.resolving
        acked = before.num_observations
        assert acked == observed + 75

    server.stop(signal.SIGKILL)  # kill -9: every acknowledged observation must survive
    server.start()
    with MoeschedClient(server.url) as client:
        after = client.plan(session.id)
        assert after.num_observations == acked
        assert (after.version, after.drift) == (before.version, before.drift)  # the same counts
        assert after.plan.report.valid
        client.delete_session(session.id)
        with pytest.raises(MoeschedError):
            client.plan(session.id)


def test_corrupt_database_stops_the_server_with_a_message(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    db.write_bytes(b"this is not a database" * 100)
    srv = Server(db)
    with pytest.raises(RuntimeError, match="cannot open the session database"):
        srv.start()
