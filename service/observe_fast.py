"""The observation hot path: ``POST /v1/sessions/{id}/observations`` served straight from the
``Guard`` middleware, after its API-key, slot and body-size checks.

A runtime posts one observation per decode step, so the per-request cost of the framework
(dependency solving, a pydantic model built over a ``[L, E]`` nested list, response-model
validation) was ten times the observation's own work. Here the body is decoded and checked
by msgspec (in C) into ``ObservationBody``, which is as strict as the pydantic
``Observation`` or stricter: a body it refuses, or one that is not exactly one of histogram,
expert ids and packed expert ids (with their shape), is handed to the FastAPI route, so
every 4xx keeps the route's wording (naming the field). The observation is committed by
``SessionManager`` before the ack is sent, as on the route: on the event loop itself when
the session is in memory and nothing has to wait (``observe_nowait``: an SQLite append of
about 0.1 ms, less than the hop to a worker thread), else in a worker thread.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.types import Send

from hwmodel.spec import MAX_COUNT
from service.errors import domain_error, store_error
from service.input_errors import DomainError
from service.metrics import Metrics
from service.schemas import MAX_IDS_B64_CHARS, Observation
from service.sessions import SessionManager
from service.store import StoreError, WouldWait

PATH = re.compile(r"/v1/sessions/([^/]+)/observations")
ROUTE = "/v1/sessions/{session_id}/observations"  # the metrics label, as the route's

_Count = Annotated[int, msgspec.Meta(ge=0, le=int(MAX_COUNT))]
_Id = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ObservationBody(msgspec.Struct, forbid_unknown_fields=True):
    """``service.schemas.Observation``'s fields and limits (the schema the API documents)."""

    histogram: list[list[_Count]] | None = None
    expert_ids: list[list[list[_Id]]] | None = None
    expert_ids_b64: Annotated[str, msgspec.Meta(max_length=MAX_IDS_B64_CHARS)] | None = None
    expert_ids_shape: Annotated[list[_Id], msgspec.Meta(min_length=3, max_length=3)] | None = None
    observation_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


_DECODER = msgspec.json.Decoder(ObservationBody)
_ENCODER = msgspec.json.Encoder()


def decode(body: bytes) -> Observation | None:
    """The observation, or None when the route must answer (so it words the 4xx)."""
    try:
        got = _DECODER.decode(body)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None
    given = (got.histogram, got.expert_ids, got.expert_ids_b64)
    if sum(v is not None for v in given) != 1 or (
        (got.expert_ids_shape is None) != (got.expert_ids_b64 is None)
    ):
        return None
    return Observation.model_construct(
        histogram=got.histogram,
        expert_ids=got.expert_ids,
        expert_ids_b64=got.expert_ids_b64,
        expert_ids_shape=got.expert_ids_shape,
        observation_id=got.observation_id,
    )


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + headers})
    await send({"type": "http.response.body", "body": body})


async def observe(
    session_id: str, obs: Observation, manager: SessionManager, metrics: Metrics, send: Send
) -> None:
    """Count the observation (committed in the store), then send the ack or the 404/503."""
    try:
        try:  # on the loop when nothing has to wait (the usual case): no thread hop
            ack = manager.observe_nowait(session_id, obs)
        except WouldWait:
            ack = await run_in_threadpool(manager.observe, session_id, obs)
    except DomainError as exc:  # the session is gone: the route's handler's body
        body = _ENCODER.encode(domain_error(exc).model_dump())
        await _answer(send, exc.status_code, body, [])
        return
    except StoreError as exc:
        body = _ENCODER.encode(store_error(exc).model_dump())
        await _answer(send, 503, body, [(b"retry-after", b"2")])
        return
    metrics.observations.inc()
    metrics.drift.observe(ack.drift)
    if ack.resolve_started:
        metrics.resolves_started.labels("sidecar_resolve").inc()
    reply = {
        "version": ack.version,
        "num_observations": ack.num_observations,
        "drift": ack.drift,
        "resolve_started": ack.resolve_started,
        "counted": ack.counted,
    }
    await _answer(send, 200, _ENCODER.encode(reply), [])
