"""Requests built on models other than the examples' (a probe of the live service found
each): a 422 naming the field and the reason where a 500, a silent no-op or a wrong answer
came back before."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "requests"
MAP_WITHOUT_EXPERT_0 = [[1, 1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 5, 6, 7, 7]]  # 8 experts, 16 slots


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(db_path=tmp_path / "s.db"))) as c:
        yield c


def refused(c: TestClient, path: str, body: dict[str, Any]) -> str:
    """The 422's error text (the test fails on any other status)."""
    got = c.post(path, json=body)
    assert got.status_code == 422, (got.status_code, got.text)
    return str(got.json()["error"])


@pytest.mark.parametrize(
    "loads",
    [
        {"window": [[[5] * 8]] * 4},  # was a 500 (the router found expert 0 without a slot)
        {"physical_window": [[[1] * 16]] * 4, "num_logical_experts": 8},  # was a map without 0
    ],
)
def test_a_running_map_that_gives_an_expert_no_slot_is_refused(
    client: TestClient, loads: dict[str, Any]
) -> None:
    body = {"current_physical_to_logical": MAP_WITHOUT_EXPERT_0, "num_gpus": 8} | loads
    error = refused(client, "/v1/eplb", body)
    assert "current_physical_to_logical" in error and "experts [0] no slot" in error


def placement(model: str, **extra: Any) -> dict[str, Any]:
    """A one-layer, 16-token placement request on ``model`` (128 experts: ids 0-127)."""
    hist = [0] * 128
    hist[3], hist[127] = 8, 8
    return {
        "hardware_preset": "gpu-ndp-4dimm", "model_preset": model,
        "workload": {"layer_ids": [0], "tokens_per_expert": [hist], "num_tokens": 8},
        "options": {"backend": "greedy"},
    } | extra  # fmt: skip


@pytest.mark.parametrize("ids", [[128], [1000], [-1]])
def test_cached_experts_outside_the_model_are_refused_naming_the_field(
    client: TestClient, ids: list[int]
) -> None:
    """An off-by-one or 1-based id was dropped without a word (or, negative, answered with
    a raw validation dump under ``layout``)."""
    body = placement("qwen3-30b-a3b", layout="striped", cached_experts=ids)
    error = refused(client, "/v1/placement", body)
    assert error.startswith("cached_experts:") and "ids in [0, 128)" in error


@pytest.mark.parametrize(
    ("piece", "reason"),
    [
        ({"expert": 300}, "expert 300, want < 128"),
        ({"expert": 3, "layer": 99}, "layer 99, want < 48"),
        ({"expert": 3, "ffn_start": 0, "ffn_end": 5000}, "the FFN width is 768"),
    ],
)
def test_a_residency_slice_the_model_does_not_have_is_refused(
    client: TestClient, piece: dict[str, int], reason: str
) -> None:
    stripes = {f"dimm{i}": [{"ffn_start": 192 * i, "ffn_end": 192 * (i + 1)}] for i in range(4)}
    residency = {"by_memory": stripes | {"gpu_vram": [piece]}}
    body = placement("qwen3-30b-a3b", residency=residency)
    error = refused(client, "/v1/placement", body)
    assert error.startswith("body.residency: by_memory.gpu_vram[0]:") and reason in error
    residency["by_memory"]["gpu_vram"] = [{"expert": 3}]  # the same request, in range
    assert client.post("/v1/placement", json=body).status_code == 200


def test_a_session_refuses_cached_experts_outside_its_model(client: TestClient) -> None:
    body = {
        "hardware_preset": "gpu-ndp-4dimm", "model_preset": "qwen3-30b-a3b", "layout": "striped",
        "cached_experts": [999], "policy": {"backend": "greedy"},
    }  # fmt: skip
    error = refused(client, "/v1/sessions", body)
    assert error.startswith("cached_experts: [999]") and "ids in [0, 128)" in error


def test_loads_that_overflow_the_gpu_together_fall_back_to_a_valid_plan(
    client: TestClient,
) -> None:
    """Qwen2-57B-A14B, 4 layers of 16,384 tokens on 4 DIMMs (a probe's request): each layer
    alone loads what fits the GPU, but the loads of layers in flight together overflow it by
    10 MB. The answer is the greedy's plan without loads, valid, marked as a fallback with
    the reason (was a 422 ``no_valid_plan``)."""
    body = json.loads((FIXTURES / "placement_loads_overflow_gpu.json").read_text())
    got = client.post("/v1/placement", json=body)
    assert got.status_code == 200, got.text
    answer = got.json()
    assert answer["report"]["valid"] and answer["account"]["status"] == "fallback"
    assert "overflowed a memory ('gpu_vram'" in answer["account"]["fallback_reason"]
    body["options"]["allow_loads"] = False  # what the fallback solved: the same plan
    again = client.post("/v1/placement", json=body).json()
    assert (
        again["account"]["predicted_makespan_cycles"]
        == (answer["account"]["predicted_makespan_cycles"])
    )


def test_idle_steps_do_not_count_as_balance_in_an_ep_window(client: TestClient) -> None:
    """128 experts on 8 GPUs, one hot expert every other batch and idle steps between: the
    window's balancedness is the busy batches' (an empty batch scored 1.0 before and held an
    imbalanced window above the re-placement bar)."""
    spec = {"num_layers": 2, "num_experts": 128, "num_gpus": 8, "num_replicas": 136,
            "rebalance_below": 0.01}  # fmt: skip
    sid = client.post("/v1/ep-sessions", json=spec).json()["id"]
    hot = [[0] * 127 + [512]] * 2
    idle = [[0] * 128] * 2
    busy = client.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": hot}).json()
    after_idle = client.post(f"/v1/ep-sessions/{sid}/batches", json={"histogram": idle}).json()
    assert busy["window_balancedness"] < 0.2
    assert after_idle["window_balancedness"] == busy["window_balancedness"]


def test_a_ragged_ep_histogram_says_ragged(client: TestClient) -> None:
    spec = {"num_layers": 2, "num_experts": 8, "num_gpus": 2, "num_replicas": 8}
    sid = client.post("/v1/ep-sessions", json=spec).json()["id"]
    error = refused(client, f"/v1/ep-sessions/{sid}/batches", {"histogram": [[1] * 8, [1] * 7]})
    assert "rows of lengths [7, 8] (ragged), want [2, 8]" in error
