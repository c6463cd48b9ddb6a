"""Working request examples for Swagger UI, built from presets (so they never go stale)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from hwmodel.plan_builder import (
    chain_layers,
    round_robin_devices,
    round_robin_residency,
    whole_expert_shards,
)
from hwmodel.presets import hardware_preset, model_preset
from hwmodel.workload import Workload


def decode_workload(num_layers: int = 2) -> Workload:
    """One DeepSeek-V2-Lite decode token: 6 distinct experts per layer (a fixed pattern)."""
    model = model_preset("deepseek-v2-lite")
    rows = []
    for layer in range(num_layers):
        row = [0] * model.num_routed_experts
        for e in range(model.top_k):
            row[(7 * layer + 5 * e) % model.num_routed_experts] = 1
        rows.append(tuple(row))
    return Workload(layer_ids=tuple(range(num_layers)), tokens_per_expert=tuple(rows), num_tokens=1)


def placement_example() -> dict[str, Any]:
    """Place a DeepSeek-V2-Lite decode token on 4 NDP-DIMMs with striped weights."""
    return {
        "hardware_preset": "gpu-ndp-4dimm",
        "model_preset": "deepseek-v2-lite",
        "workload": decode_workload().model_dump(mode="json", exclude_none=True),
        "layout": "striped",
        "cached_experts": [0, 1, 2, 3],
        "options": {"backend": "auto", "deadline_s": 1.0},
    }


def ordering_example() -> dict[str, Any]:
    """DeepSeek-V2 on 8 + 8 H20 GPUs, a decode step of 3,072 sequences (384 per attention
    GPU: their KV cache at 2,048 tokens fits, 8,192 would not)."""
    return {
        "hardware_preset": "dep-h20",
        "model_preset": "deepseek-v2",
        "batch_tokens": 3072,
        "num_layers": 2,
        "context_tokens": 2048,
        "options": {"backend": "auto", "deadline_s": 2.0, "max_micro_batches": 16},
    }


def session_example() -> dict[str, Any]:
    """A sidecar session for DeepSeek-V2-Lite decode on 4 NDP-DIMMs, greedy re-solves."""
    return {
        "hardware_preset": "gpu-ndp-4dimm",
        "model_preset": "deepseek-v2-lite",
        "layout": "striped",
        "cached_experts": [0, 1, 2, 3],
        "policy": {"backend": "greedy", "deadline_s": 1.0, "drift_threshold": 0.2, "decay": 0.98},
    }


def observation_example() -> dict[str, Any]:
    """One DeepSeek-V2-Lite decode token as a histogram (26 layers x 64 experts)."""
    return {"histogram": [list(row) for row in decode_workload(26).tokens_per_expert]}


def route_example() -> dict[str, Any]:
    """The FlashLB loads on a hand-made placement (8 GPUs x 2 slots)."""
    return {
        "physical_to_logical": [0, 7, 0, 6, 0, 5, 0, 4, 0, 3, 1, 2, 1, 3, 1, 2],
        "num_gpus": 8,
        "loads": [600, 560, 120, 120, 20, 10, 10, 10],
    }


def eplb_example() -> dict[str, Any]:
    """The worked example of DeepSeek's EPLB README (2 layers, 12 experts, 16 slots, 8 GPUs)."""
    return {
        "weights": [
            [90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
            [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27],
        ],
        "num_replicas": 16,
        "num_groups": 4,
        "num_nodes": 2,
        "num_gpus": 8,
        "backend": "auto",
        "deadline_s": 5.0,
    }


def simulate_example() -> dict[str, Any]:
    """One decode token of DeepSeek-V2-Lite, 2 MoE layers, experts round-robin on 2 NDP-DIMMs."""
    hw, model = hardware_preset("gpu-ndp-2dimm"), model_preset("deepseek-v2-lite")
    workload = decode_workload()
    rows = workload.tokens_per_expert
    device_of = round_robin_devices(hw, model)
    plan = chain_layers(
        hw,
        model,
        workload,
        [whole_expert_shards(r, device_of, model.expert_ffn_size) for r in rows],
    )
    return {
        "hardware_preset": "gpu-ndp-2dimm",
        "model_preset": "deepseek-v2-lite",
        "workload": workload.model_dump(mode="json", exclude_none=True),
        "residency": round_robin_residency(hw, model).model_dump(mode="json", exclude_none=True),
        "plan": plan.model_dump(mode="json", exclude_none=True),
    }


def eplb_window_example() -> dict[str, Any]:
    """A window of 4 batches (2 layers, 8 experts) and the placement running now (8 GPUs x 2
    slots); the answer is SGLang's --init-expert-location file, aligned with the current slots."""
    batches = [
        [[60, 56, 12, 12, 2, 1, 1, 1], [5, 5, 40, 40, 10, 10, 3, 3]],
        [[50, 70, 10, 10, 5, 2, 2, 1], [4, 6, 42, 38, 12, 8, 2, 4]],
        [[70, 40, 20, 10, 2, 3, 2, 1], [6, 4, 30, 50, 9, 11, 4, 2]],
        [[65, 55, 14, 8, 3, 1, 2, 2], [5, 5, 44, 36, 10, 10, 3, 3]],
    ]
    current = [[0, 7, 0, 6, 0, 5, 0, 4, 0, 3, 1, 2, 1, 3, 1, 2]] * 2
    return {
        "window": batches,
        "current_physical_to_logical": current,
        "num_gpus": 8,
        "format": "sglang",
    }


def ep_session_example() -> dict[str, Any]:
    """An EP sidecar: 2 layers of 8 experts on 8 GPUs with 16 replica slots."""
    return {"num_layers": 2, "num_experts": 8, "num_gpus": 8, "num_replicas": 16, "window": 8}


def ep_batch_example() -> dict[str, Any]:
    """One batch for ``ep_session_example``: the FlashLB loads in layer 0, a flat layer 1."""
    return {"histogram": [route_example()["loads"], [180] * 8]}


def response_models() -> dict[str, type[BaseModel]]:
    """What a 200 from each POST route must parse as (a null where a number is declared
    fails): the public answer types, for clients and fuzzers outside the service."""
    from service import schemas

    return {
        "/v1/placement": schemas.PlacementResponse,
        "/v1/schedule": schemas.ScheduleResponse,
        "/v1/simulate": schemas.SimulateResponse,
        "/v1/ordering": schemas.OrderingResponse,
        "/v1/eplb": schemas.EplbResponse,
        "/v1/route": schemas.RouteResponse,
        "/v1/sessions": schemas.SessionInfo,
        "/v1/sessions/{id}/observations": schemas.ObservationAck,
        "/v1/ep-sessions": schemas.EpSessionInfo,
        "/v1/ep-sessions/{id}/batches": schemas.EpRouting,
    }


def seed_ep_session(
    db_path: Path, session_id: str, spec: dict[str, Any], placement: np.ndarray
) -> None:
    """Write an EP session straight into the SQLite store a server at ``db_path`` will open,
    with its placement ``[num_layers, num_replicas]`` given instead of solved: for benchmarks
    that need a session at the caps, whose creation through the API would spend a solve.
    Fields ``spec`` leaves out take the defaults of ``POST /v1/ep-sessions``."""
    from service.schemas import EpSessionCreate
    from service.store import SQLiteStore

    shape = {"num_layers", "num_experts", "num_gpus", "num_replicas", "window"}
    defaults = EpSessionCreate.model_validate(ep_session_example()).model_dump(exclude=shape)
    store = SQLiteStore(db_path)
    try:
        store.ep_create(session_id, json.dumps(spec | defaults), placement)
    finally:
        store.close()


def ep_session_bounds(spec: dict[str, Any], env: dict[str, str]) -> dict[str, int]:
    """What one EP session of ``spec`` may hold on a server started with ``env``
    (``MOESCHED_*`` settings), in bytes and batches: ``window_batches``, ``memory_bytes`` (the
    session's), ``page_cache_bytes`` (the store's connections, every session together) and
    ``db_bytes`` (the database files holding this session alone). For benchmarks that check
    a live server against the bounds its settings promise."""
    from service.ep_sessions import EpBounds
    from service.schemas import EpSessionCreate
    from service.settings import Settings
    from service.store import CACHE_BYTES, READERS_KEPT

    prefix = "MOESCHED_"
    fields = {k[len(prefix) :].lower(): v for k, v in env.items() if k.startswith(prefix)}
    settings = Settings.model_validate(fields)
    bounds, created = EpBounds(settings), EpSessionCreate.model_validate(spec)
    return {
        "window_batches": bounds.window_of(created),
        "memory_bytes": bounds.memory_bytes(created),
        "page_cache_bytes": (READERS_KEPT + 1) * CACHE_BYTES,
        "db_bytes": bounds.db_bytes([created]),
    }
