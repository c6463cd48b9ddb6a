"""The edge, before any route runs: the API key checked before the body is read, a body limit
that counts streamed (chunked) bytes, metrics labels from a fixed set, settings that refuse an
empty key and warn about an open bind without one, health answered on the event loop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.main import create_app
from service.settings import Settings, get_settings


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    yield b'{"weights": [['
    sent = 14
    while sent < total:
        part = b"1," * (size // 2)
        sent += len(part)
        yield part


def test_a_chunked_body_over_the_limit_is_a_413_and_the_key_comes_first() -> None:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(max_body_bytes=2**16, api_key="k")
    c = TestClient(app)
    r = c.post("/v1/eplb", content=_chunks(2**18), headers={"x-api-key": "k"})
    assert "content-length" not in {k.lower() for k in r.request.headers}  # really chunked
    assert r.status_code == 413 and r.json()["error_type"] == "too_large"
    # Without the key, the same body is refused as unauthorized, not parsed (not 413/422).
    r = c.post("/v1/eplb", content=_chunks(2**18))
    assert r.status_code == 401 and r.json()["error_type"] == "unauthorized"
    r = c.post("/v1/eplb", content=b"{}", headers={"x-api-key": "K"})
    assert r.status_code == 401
    r = c.post("/v1/eplb", content=b"{}", headers={"x-api-key": "k"})
    assert r.status_code == 422  # past the edge: the body is read and validated


def test_metrics_labels_come_from_a_fixed_set() -> None:
    c = TestClient(create_app())
    for i in range(30):
        c.request(f"BREW{i}", "/healthz")
        c.get(f"/no/such/path/{i}")
    text = c.get("/metrics").text
    assert "BREW" not in text and "/no/such" not in text
    assert 'method="other"' in text
    assert 'method="GET",route="other",status="404"' in text
    assert len(text) < 20_000


def test_settings_refuse_an_empty_key_and_warn_on_an_open_bind() -> None:
    with pytest.raises(ValidationError, match="empty"):
        Settings(api_key="")
    assert Settings().warnings() == []
    assert Settings(host="::1").warnings() == []
    open_bind = Settings(host="0.0.0.0")
    assert "without an API key" in open_bind.warnings()[0]
    assert Settings(host="0.0.0.0", api_key="k").warnings() == []
    info = TestClient(create_app(open_bind)).get("/info").json()
    assert info["warnings"] == open_bind.warnings() and info["api_key_required"] is False
    assert info["limits"]["max_sessions"] == open_bind.max_sessions


def test_health_runs_on_the_event_loop() -> None:
    import inspect

    from service.routes import health

    assert inspect.iscoroutinefunction(health.healthz)
    assert inspect.iscoroutinefunction(health.readyz)


def test_a_full_slot_class_is_a_503_before_the_body_is_read(tmp_path: Path) -> None:
    """With every solve slot busy, a solve route answers 503 + Retry-After before reading
    its body (an unparsable body, a 422 otherwise, gets the 503; so does a chunked one over
    the limit); cheap routes and the other class still pass; the key still comes first."""
    app = create_app(Settings(db_path=tmp_path / "e.db", max_body_bytes=2**16, api_key="k"))
    key = {"x-api-key": "k"}
    with TestClient(app) as c:
        solve = app.state.admission.classes["solve"]
        assert c.post("/v1/placement", content=b"{", headers=key).status_code == 422
        solve.busy = solve.slots  # as if every solve were running
        try:
            for path in ("/v1/placement", "/v1/simulate/gantt", "/v1/ep-sessions"):
                r = c.post(path, content=b"{", headers=key)
                assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
                assert r.json()["error_type"] == "overloaded"
            r = c.post("/v1/eplb", content=_chunks(2**18), headers=key)
            assert r.status_code == 503
            assert c.post("/v1/placement", content=b"{").status_code == 401
            # the route class is free: its routes parse (and refuse the bad body) as usual
            assert c.post("/v1/route", content=b"{", headers=key).status_code == 422
            r = c.post("/v1/ep-sessions/nope/batches", content=b"{", headers=key)
            assert r.status_code == 422
            assert c.get("/v1/presets/hardware", headers=key).status_code == 200
            assert c.get("/healthz").status_code == 200
        finally:
            solve.busy = 0
        assert "moesched_overloaded_total" in c.get("/metrics").text
