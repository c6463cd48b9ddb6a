"""A small typed client for runtimes that use moesched as a sidecar (httpx, sync).

client = MoeschedClient("http://127.0.0.1:8000")
spec = SessionCreate(hardware_preset="gpu-ndp-4dimm", model_preset="deepseek-v2-lite")
session = client.create_session(spec)
ack = client.observe(session.id, Observation(histogram=hist))
ack = client.observe_ids(session.id, topk_ids)  # a batch's routed ids [T, L, k], packed
plan = client.plan(session.id)  # plan.version changes when a re-solve lands
"""

from __future__ import annotations

import base64
from typing import TypeVar

import httpx
import numpy as np
from pydantic import BaseModel

from service.input_errors import MoeschedError
from service.schemas import (
    EplbRequest,
    EplbResponse,
    HardwarePresetSummary,
    ModelPresetSummary,
    Observation,
    ObservationAck,
    OrderingRequest,
    OrderingResponse,
    PlacementRequest,
    PlacementResponse,
    RouteRequest,
    RouteResponse,
    ScheduleRequest,
    ScheduleResponse,
    SessionCreate,
    SessionInfo,
    SimulateRequest,
    SimulateResponse,
)

R = TypeVar("R", bound=BaseModel)


class MoeschedClient:
    """Calls a running moesched service."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 60.0) -> None:
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> MoeschedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, out: type[R], body: BaseModel | None = None) -> R:
        content = body.model_dump_json(exclude_none=True) if body is not None else None
        r = self.http.request(
            method, path, content=content, headers={"content-type": "application/json"}
        )
        if r.status_code >= 400:
            raise MoeschedError(r.status_code, r.json() if r.content else {})
        return out.model_validate_json(r.content)

    def simulate(self, request: SimulateRequest) -> SimulateResponse:
        return self._call("POST", "/v1/simulate", SimulateResponse, request)

    def placement(self, request: PlacementRequest) -> PlacementResponse:
        return self._call("POST", "/v1/placement", PlacementResponse, request)

    def schedule(self, request: ScheduleRequest) -> ScheduleResponse:
        return self._call("POST", "/v1/schedule", ScheduleResponse, request)

    def ordering(self, request: OrderingRequest) -> OrderingResponse:
        return self._call("POST", "/v1/ordering", OrderingResponse, request)

    def eplb(self, request: EplbRequest) -> EplbResponse:
        return self._call("POST", "/v1/eplb", EplbResponse, request)

    def route(self, request: RouteRequest) -> RouteResponse:
        return self._call("POST", "/v1/route", RouteResponse, request)

    def hardware_presets(self) -> list[HardwarePresetSummary]:
        return self._list("/v1/presets/hardware", HardwarePresetSummary)

    def model_presets(self) -> list[ModelPresetSummary]:
        return self._list("/v1/presets/models", ModelPresetSummary)

    def _list(self, path: str, out: type[R]) -> list[R]:
        r = self.http.get(path)
        if r.status_code >= 400:
            raise MoeschedError(r.status_code, r.json() if r.content else {})
        return [out.model_validate(item) for item in r.json()]

    def create_session(self, spec: SessionCreate) -> SessionInfo:
        return self._call("POST", "/v1/sessions", SessionInfo, spec)

    def observe(self, session_id: str, obs: Observation) -> ObservationAck:
        return self._call("POST", f"/v1/sessions/{session_id}/observations", ObservationAck, obs)

    def observe_ids(
        self, session_id: str, expert_ids: np.ndarray, observation_id: str | None = None
    ) -> ObservationAck:
        """Observe routed expert ids ``[num_tokens, num_moe_layers, top_k]`` (any integer
        array, e.g. a runtime's top-k ids), sent packed (``expert_ids_b64``: base64 of
        little-endian int16): the server decodes them in about 1 us per token, against
        about 20 us for the same ids as JSON integers."""
        ids = np.asarray(expert_ids)
        if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"expert_ids: want an integer array [T, L, k], got {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int16).max):
            raise ValueError("expert_ids: ids must lie in [0, 32767] to be sent packed")
        obs = Observation(
            expert_ids_b64=base64.b64encode(ids.astype("<i2").tobytes()).decode(),
            expert_ids_shape=list(ids.shape),
            observation_id=observation_id,
        )
        return self.observe(session_id, obs)

    def plan(self, session_id: str) -> SessionInfo:
        return self._call("GET", f"/v1/sessions/{session_id}/plan", SessionInfo)

    def delete_session(self, session_id: str) -> None:
        r = self.http.delete(f"/v1/sessions/{session_id}")
        if r.status_code >= 400:
            raise MoeschedError(r.status_code, r.json() if r.content else {})
