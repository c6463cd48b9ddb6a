"""The HTTP app through TestClient: health, presets, simulate, errors, OpenAPI drift."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.examples import simulate_example
from service.main import create_app
from service.openapi_export import SPEC_PATH, render
from service.settings import Settings, get_settings


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app())


def test_health_and_info(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/info").json()
    assert info["versions"]["ortools"] != "unknown"
    assert info["limits"]["max_tasks"] > 0


def test_presets(client: TestClient) -> None:
    hw = client.get("/v1/presets/hardware").json()
    assert {"gpu-ndp-2dimm", "gpu-ndp-4dimm", "gpu-ndp-6dimm", "dep-h20", "dep-h800"} <= {
        h["name"] for h in hw
    }
    models = {m["name"] for m in client.get("/v1/presets/models").json()}
    assert len(models) == 11 and "qwen3-30b-a3b" in models
    one = client.get("/v1/presets/hardware/gpu-ndp-4dimm").json()
    assert len(one["devices"]) == 5 and all(d["source"] for d in one["devices"])
    missing = client.get("/v1/presets/models/gpt-5")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"


def test_simulate_the_swagger_example(client: TestClient) -> None:
    r = client.post("/v1/simulate", json=simulate_example())
    assert r.status_code == 200, r.text
    report = r.json()["report"]
    assert report["valid"] is True
    assert report["makespan_cycles"] > 0


def test_simulate_reports_violations_not_errors(client: TestClient) -> None:
    body = simulate_example()
    body["residency"] = {"by_memory": {}}
    report = client.post("/v1/simulate", json=body).json()["report"]
    assert report["valid"] is False
    assert {v["code"] for v in report["violations"]} == {"weights_not_resident"}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.update(hardware_preset="nope"), "hardware_preset"),
        (lambda b: b.update(model_preset="nope"), "model_preset"),
        (lambda b: b.pop("plan"), "plan"),
        (lambda b: b["workload"].update(num_tokens=-1), "num_tokens"),
        (lambda b: b["workload"].update(tokens_per_expert=[[1, 2, 3]] * 2), "tokens_per_expert"),
        (lambda b: b["workload"].update(layer_ids=[0, 99]), "layer_ids"),
        (lambda b: b["plan"]["tasks"][0].update(kind="teleport"), "tasks"),
        (lambda b: b.update(hardware={"name": "x"}), "hardware"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(client: TestClient, mutate, field: str) -> None:  # type: ignore[no-untyped-def]
    body = simulate_example()
    mutate(body)
    r = client.post("/v1/simulate", json=body)
    assert 400 <= r.status_code < 500, r.text
    err = r.json()
    assert field in err["error"], err
    assert err["error_type"] in {"validation", "unknown_preset"}


def test_nan_and_malformed_json(client: TestClient) -> None:
    body = json.dumps(simulate_example()).replace('"num_tokens": 1', '"num_tokens": NaN', 1)
    r = client.post("/v1/simulate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    r = client.post(
        "/v1/simulate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["error_type"] == "validation"


def test_body_limit_and_api_key() -> None:
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: Settings(max_body_bytes=1000, api_key="s3cret")
    c = TestClient(app)
    big = c.post("/v1/simulate", json=simulate_example(), headers={"x-api-key": "s3cret"})
    assert big.status_code == 413 and big.json()["error_type"] == "too_large"
    assert c.get("/v1/presets/models").status_code == 401
    assert c.get("/v1/presets/models", headers={"x-api-key": "wrong"}).status_code == 401
    assert c.get("/v1/presets/models", headers={"x-api-key": "s3cret"}).status_code == 200
    assert c.get("/healthz").status_code == 200


def test_metrics_count_requests(client: TestClient) -> None:
    client.get("/healthz")
    text = client.get("/metrics").text
    assert 'moesched_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text


def test_openapi_file_matches_the_app() -> None:
    assert SPEC_PATH.read_text() == render(), "run: python -m service.openapi_export"
