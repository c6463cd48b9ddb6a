"""Every POST's Swagger example answers 2xx as "Try it out" would send it (a session route gets
the id its own create example returned), and /metrics then counts what happened: solves by
problem/backend/status, solve seconds, observations, drift, EP batches and balance, sessions
open, 503s by cause, and the process's own figures."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.metrics import fallback_kind
from service.settings import Settings


def samples(text: str, name: str) -> dict[str, float]:
    """{label set: value} of one metric in Prometheus text."""
    out = {}
    for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, flags=re.M):
        out[m.group(1) or ""] = float(m.group(2))
    return out


@pytest.fixture(scope="module")
def answered(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestClient, dict[str, Any]]:
    """Post every example once; returns the client and {path: response json}."""
    db = tmp_path_factory.mktemp("examples") / "s.db"
    client = TestClient(create_app(Settings(db_path=db)))
    client.__enter__()  # run the lifespan (session managers); closed at interpreter exit
    spec = client.get("/openapi.json").json()
    posts = [(p, item["post"]) for p, item in spec["paths"].items() if "post" in item]
    answers: dict[str, Any] = {}
    created: dict[str, str] = {}
    for path, op in sorted(posts, key=lambda x: "{" in x[0]):  # creates before their sessions
        examples = op["requestBody"]["content"]["application/json"].get("examples", {})
        assert examples, f"POST {path} has no example"
        url = path
        if "{session_id}" in path:
            url = path.replace("{session_id}", created[path.split("/{session_id}")[0]])
        for name, example in examples.items():
            r = client.post(url, json=example["value"])
            assert 200 <= r.status_code < 300, (path, name, r.status_code, r.text[:500])
            is_json = r.headers["content-type"].startswith("application/json")
            answers[path] = r.json() if is_json else r.content
            if isinstance(answers[path], dict) and "id" in answers[path]:
                created[path] = answers[path]["id"]
    assert {"/v1/ep-sessions", "/v1/ep-sessions/{session_id}/batches"} <= set(answers)
    return client, answers


def test_every_post_example_answers_2xx(answered: tuple[TestClient, dict[str, Any]]) -> None:
    _, answers = answered
    assert len(answers) >= 12
    assert answers["/v1/eplb"]["summary"]["status"] == answers["/v1/eplb"]["status"]


def test_metrics_count_solves_sessions_and_balance(
    answered: tuple[TestClient, dict[str, Any]],
) -> None:
    client, answers = answered
    text = client.get("/metrics").text
    solves = samples(text, "moesched_solves_total")
    problems = {re.search(r'problem="(\w+)"', k).group(1) for k in solves}  # type: ignore[union-attr]
    assert {"placement", "schedule", "ordering", "eplb"} <= problems
    status = answers["/v1/placement"]["account"]["status"]
    assert any('problem="placement"' in k and f'status="{status}"' in k for k in solves)
    assert sum(samples(text, "moesched_solve_seconds_count").values()) == sum(solves.values())
    assert samples(text, "moesched_observations_total") == {"": 1.0}
    assert samples(text, "moesched_session_drift_count") == {"": 1.0}
    assert samples(text, "moesched_ep_batches_total") == {"": 1.0}
    assert samples(text, "moesched_ep_window_balancedness_count") == {"": 1.0}
    assert samples(text, "moesched_sessions_open") == {"": 2.0}  # one sidecar, one EP
    assert "moesched_session_resolves_total" in text
    assert samples(text, "process_cpu_seconds_total")[""] > 0


def test_503s_are_counted_by_cause(answered: tuple[TestClient, dict[str, Any]]) -> None:
    client, _ = answered
    route_slots = client.app.state.admission.classes["route"]  # type: ignore[attr-defined]
    held = 0
    while route_slots.take():  # take every routing slot
        held += 1
    try:
        r = client.post("/v1/route", json={"physical_to_logical": [0], "num_gpus": 1, "loads": [1]})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
    finally:
        for _ in range(held):
            route_slots.give()
    text = client.get("/metrics").text
    assert samples(text, "moesched_overloaded_total") == {'{cause="route_slots"}': 1.0}


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("cpsat skipped: 0 ms left, building its model takes about 40 ms", "skipped_no_time"),
        ("layer 3: no time left for cpsat", "skipped_no_time"),
        ("cpsat found no solution within the deadline (UNKNOWN)", "no_solution_in_time"),
        ("cpsat found no schedule (UNKNOWN)", "no_solution_in_time"),
        ("cpsat failed: ValueError: boom", "backend_crashed"),
        ("cpsat plan rejected by the executor: capacity", "rejected_by_executor"),
        ("auto plan failed the executor: deadlock", "rejected_by_executor"),
        ("something new", "other"),
    ],
)
def test_fallback_reasons_fall_into_few_kinds(reason: str, kind: str) -> None:
    assert fallback_kind(reason) == kind


def test_examples_file_is_the_single_source(tmp_path: Path) -> None:
    """The ep-session batch example fits the ep-session example's shape."""
    from service.examples import ep_batch_example, ep_session_example

    spec, batch = ep_session_example(), ep_batch_example()
    assert len(batch["histogram"]) == spec["num_layers"]
    assert all(len(row) == spec["num_experts"] for row in batch["histogram"])
