"""The observation hot path (``service.observe_fast``): it accepts only what the documented
pydantic ``Observation`` accepts, answers exactly as the route does, and hands everything
else to the route (so every 4xx keeps its wording)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
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
        {"expert_ids_b64": "AQACAA==", "expert_ids_shape": [1, 1, 2]},
        {"expert_ids_b64": "", "expert_ids_shape": [0, 26, 6], "observation_id": "p"},
        {"expert_ids_b64": "not base64 at all", "expert_ids_shape": [1, 1, 1]},  # the manager's 422
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
        {"expert_ids_b64": "AQACAA=="},
        {"expert_ids_shape": [1, 1, 2]},
        {"histogram": HIST, "expert_ids_shape": [1, 1, 2]},
        {"expert_ids_b64": "AQACAA==", "expert_ids_shape": [1, 2]},
        {"expert_ids_b64": "AQACAA==", "expert_ids_shape": [1, 1, 2, 1]},
        {"expert_ids_b64": "AQACAA==", "expert_ids_shape": [1, 1, -2]},
        {"expert_ids_b64": "AQACAA==", "expert_ids_shape": [1, 1, 65536]},
        {"expert_ids_b64": 12, "expert_ids_shape": [1, 1, 2]},
        {"expert_ids_b64": "AQACAA==", "expert_ids": [[[0]]], "expert_ids_shape": [1, 1, 2]},
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


def _packed(ids: np.ndarray) -> dict[str, Any]:
    return {
        "expert_ids_b64": base64.b64encode(ids.astype("<i2").tobytes()).decode(),
        "expert_ids_shape": list(ids.shape),
    }


def test_packed_ids_count_as_the_same_ids_in_json_and_bad_ones_are_named(tmp_path: Path) -> None:
    """The same 64 tokens' ids [64, 26, 6], once as JSON integers and once packed, move two
    sessions to the same counts (the same drift, bit for bit); each malformed packed body
    gets a 422 naming the field and the reason."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 64, size=(64, 26, 6))
    app = create_app(Settings(db_path=tmp_path / "s.db"))
    with TestClient(app) as c:
        a, b = (c.post("/v1/sessions", json=session_example()).json()["id"] for _ in range(2))
        for step in range(3):
            chunk = np.roll(ids, step, axis=0)
            ja = c.post(f"/v1/sessions/{a}/observations", json={"expert_ids": chunk.tolist()})
            jb = c.post(f"/v1/sessions/{b}/observations", json=_packed(chunk))
            assert ja.status_code == jb.status_code == 200, jb.text
            assert ja.json() == jb.json()
        assert ja.json()["num_observations"] == 3 and ja.json()["drift"] > 0
        url = f"/v1/sessions/{b}/observations"
        bad = {
            "not base64": ({"expert_ids_b64": "@@@@", "expert_ids_shape": [1, 26, 6]},
                           "body.expert_ids_b64", "base64"),
            "too few bytes": (_packed(ids) | {"expert_ids_shape": [65, 26, 6]},
                              "body.expert_ids_b64", "want 20280"),
            "an id out of range": (_packed(np.full((1, 26, 6), 64)), "body.expert_ids_b64",
                                   "ids must lie in [0, 64)"),
            "a negative id": (_packed(np.full((1, 26, 6), -1)), "body.expert_ids_b64",
                              "ids must lie in [0, 64)"),
            "the wrong layers": (_packed(ids[:, :25]), "body.expert_ids_shape", "want [num_tokens"),
            "more than top_k": (_packed(np.zeros((1, 26, 7), int)), "body.expert_ids_shape",
                                "want [num_tokens"),
            "a shape alone": ({"histogram": HIST, "expert_ids_shape": [1, 26, 6]},
                              "expert_ids_shape", "only with expert_ids_b64"),
            "no shape": ({"expert_ids_b64": "AAAA"}, "expert_ids_shape", "with expert_ids_b64"),
        }  # fmt: skip
        for name, (body, field, reason) in bad.items():
            r = c.post(url, json=body)
            assert r.status_code == 422, (name, r.text)
            assert field in r.text and reason in r.text, (name, r.text)
        assert c.get(f"/v1/sessions/{b}/plan").json()["num_observations"] == 3  # none counted


def test_a_session_in_memory_is_observed_on_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an observation that would wait (the session's first here, which loads it) hops
    to a worker thread; the rest are committed on the loop, and all are counted."""
    hops = []
    real = observe_fast.run_in_threadpool

    async def counted(*args: Any) -> Any:
        hops.append(args[0])
        return await real(*args)

    monkeypatch.setattr(observe_fast, "run_in_threadpool", counted)
    db = tmp_path / "s.db"
    with TestClient(create_app(Settings(db_path=db))) as c:
        sid = c.post("/v1/sessions", json=session_example()).json()["id"]
        for _ in range(5):
            r = c.post(f"/v1/sessions/{sid}/observations", json={"histogram": HIST})
            assert r.status_code == 200
    assert len(hops) == 1  # the first: the store had not held its counts yet
    with TestClient(create_app(Settings(db_path=db))) as c:  # a restart: counts replayed
        r = c.post(f"/v1/sessions/{sid}/observations", json={"histogram": HIST})
        assert r.json()["num_observations"] == 6
    assert len(hops) == 2


def test_the_client_sends_ids_packed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``MoeschedClient.observe_ids`` counts a runtime's ids as the JSON form does, and
    refuses, before sending, ids that int16 cannot carry."""
    from service.client import MoeschedClient

    ids = np.random.default_rng(5).integers(0, 64, size=(8, 26, 6))
    app = create_app(Settings(db_path=tmp_path / "s.db"))
    with TestClient(app) as c:
        a, b = (c.post("/v1/sessions", json=session_example()).json()["id"] for _ in range(2))
        client = MoeschedClient("http://testserver")
        client.http = c  # the app in process
        packed = client.observe_ids(b, ids.astype(np.int32), observation_id="o1")
        plain = c.post(f"/v1/sessions/{a}/observations", json={"expert_ids": ids.tolist()})
        assert packed.model_dump() == plain.json()
        with pytest.raises(ValueError, match="32767"):
            client.observe_ids(b, np.full((1, 26, 6), 40000))
        with pytest.raises(ValueError, match=r"\[T, L, k\]"):
            client.observe_ids(b, ids[0])
