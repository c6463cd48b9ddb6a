"""The observation hot path (``service.observe_fast``): it accepts only what the documented
pydantic ``Observation`` accepts, answers exactly as the route does, and hands everything
else to the route (so every 4xx keeps its wording)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service import observe_fast
from service.examples import observation_example, session_example
from service.main import create_app
from service.schemas import Observation, ObservationAck
from service.settings import Settings

HIST = observation_example()["histogram"]
MAX = 2**40


@pytest.mark.parametrize(
    "body",
    [
        {"histogram": HIST},
        {"histogram": HIST, "observation_id": "a"},
        {"histogram": HIST, "observation_id": "x" * 128},
        {"histogram": [[0, MAX]]},
        {"expert_ids": [[[0, 1], [65535, 2]]]},
        {"expert_ids": []},
        {"histogram": None, "expert_ids": [[[3]]]},
        # refused by the hot path, so the route decides (accepts or words a 4xx):
        {"histogram": [[1.0, 2]]},
        {"histogram": [["1", 2]]},
        {"histogram": [[True, 2]]},
        {"histogram": [[-1, 2]]},
        {"histogram": [[MAX + 1]]},
        {"expert_ids": [[[65536]]]},
        {"histogram": HIST, "observation_id": ""},
        {"histogram": HIST, "observation_id": "x" * 129},
        {"histogram": HIST, "extra": 1},
        {"histogram": HIST, "expert_ids": [[[0]]]},
        {},
        {"histogram": [1, 2]},
        {"histogram": [[[1]]]},
        {"histogram": "no"},
        [],
        "no",
    ],
)
def test_the_hot_path_accepts_nothing_the_documented_schema_refuses(body: Any) -> None:
    raw = json.dumps(body).encode()
    fast = observe_fast.decode(raw)
    if fast is None:
        return  # the route answers, as before
    slow = Observation.model_validate_json(raw)
    assert fast.model_dump() == slow.model_dump()


@pytest.mark.parametrize("raw", [b"", b"{", b'{"histogram": [[1, 2]]} x', b"\xff", b"null"])
def test_malformed_json_goes_to_the_route(raw: bytes) -> None:
    assert observe_fast.decode(raw) is None
    with pytest.raises(ValidationError):
        Observation.model_validate_json(raw)


def test_through_the_app_the_ack_and_the_errors_are_the_routes(tmp_path: Path) -> None:
    app = create_app(Settings(db_path=tmp_path / "s.db"))
    with TestClient(app) as c:
        sid = c.post("/v1/sessions", json=session_example()).json()["id"]
        url = f"/v1/sessions/{sid}/observations"
        r = c.post(url, json={"histogram": HIST, "observation_id": "t1"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        ack = ObservationAck.model_validate(r.json())
        assert list(r.json()) == list(ObservationAck.model_fields)
        assert ack.num_observations == 1 and ack.counted
        again = c.post(url, json={"histogram": HIST, "observation_id": "t1"}).json()
        assert again["num_observations"] == 1 and again["counted"] is False
        # a lax body the hot path refuses still counts, through the route
        lax = c.post(url, json={"histogram": [[float(v) for v in row] for row in HIST]})
        assert lax.status_code == 200 and lax.json()["num_observations"] == 2
        gone = c.post("/v1/sessions/nope/observations", json={"histogram": HIST})
        assert gone.status_code == 404 and gone.json()["error_type"] == "not_found"
        assert "path.session_id" in gone.json()["error"]
        short = c.post(url, json={"histogram": [[1, 2]]})
        assert short.status_code == 422 and "body.histogram" in short.json()["error"]
        metrics = c.get("/metrics").text
        label = 'route="/v1/sessions/{session_id}/observations",status="200"} 3.0'
        assert label in metrics  # one per ack, the hot path's and the route's alike


def test_the_api_key_is_checked_before_the_hot_path(tmp_path: Path) -> None:
    app = create_app(Settings(db_path=tmp_path / "s.db", api_key="k"))
    with TestClient(app) as c:
        sid = c.post("/v1/sessions", json=session_example(), headers={"X-API-Key": "k"}).json()
        r = c.post(f"/v1/sessions/{sid['id']}/observations", json={"histogram": HIST})
        assert r.status_code == 401
