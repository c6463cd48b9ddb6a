"""Sidecar sessions: register, observe, read the current plan, end."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from service import jobs
from service.answers import json_response, json_with
from service.deps import AdmissionDep
from service.ep_sessions import EpSessions
from service.errors import ErrorResponse
from service.examples import (
    ep_batch_example,
    ep_session_example,
    observation_example,
    session_example,
)
from service.schemas import (
    EpBatch,
    EpRouting,
    EpSessionCreate,
    EpSessionInfo,
    Observation,
    ObservationAck,
    SessionCreate,
    SessionInfo,
)
from service.sessions import SessionManager

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such session."},
    422: {"model": ErrorResponse, "description": "Invalid request."},
}


async def sessions(request: Request) -> SessionManager:
    manager: SessionManager = request.app.state.sessions
    return manager


Sessions = Annotated[SessionManager, Depends(sessions)]


@router.post(
    "", response_model=SessionInfo, status_code=201, responses=_ERRORS, summary="Start a session",
)  # fmt: skip
async def create_session(
    http: Request,
    spec: Annotated[
        SessionCreate,
        Body(
            openapi_examples={
                "gpu-ndp": {
                    "summary": "DeepSeek-V2-Lite on 4 NDP-DIMMs",
                    "value": session_example(),
                }
            }
        ),
    ],
    manager: Sessions,
    admission: AdmissionDep,
) -> SessionInfo | Response:
    """Register hardware, model and policy; the first plan is solved from the seed counts
    (in a solve slot, with the policy's deadline)."""
    admission.refuse_when_full("solve")
    counts, case = await run_in_threadpool(manager.prepare, spec)
    answer = await admission.run(
        http, "solve", spec.policy.deadline_s, "body.policy.deadline_s",
        jobs.dumped, jobs.place_case, case, manager.settings,
    )  # fmt: skip
    body = await run_in_threadpool(manager.finish_json, spec, counts, answer.body, case)
    return json_response(body, 201)


@router.post(
    "/{session_id}/observations",
    response_model=ObservationAck,
    responses=_ERRORS,
    summary="Observe routing",
)
def observe(
    session_id: str,
    obs: Annotated[
        Observation,
        Body(
            openapi_examples={
                "decode": {"summary": "One decode token", "value": observation_example()}
            }
        ),
    ],
    manager: Sessions,
    http: Request,
) -> ObservationAck:
    """Add the latest histogram (or routed expert ids) to the running counts; re-solve in the
    background when they drift past the policy's threshold.

    The count is committed before the answer; counts stop growing at 2**50 (always finite).
    """
    ack = manager.observe(session_id, obs)
    metrics = http.app.state.metrics
    metrics.observations.inc()
    metrics.drift.observe(ack.drift)
    if ack.resolve_started:
        metrics.resolves_started.labels("sidecar_resolve").inc()
    return ack


@router.get(
    "/{session_id}/plan", response_model=SessionInfo, responses=_ERRORS, summary="Current plan"
)
def current_plan(session_id: str, manager: Sessions) -> SessionInfo | Response:
    """The current plan with its version (changes atomically when a re-solve lands)."""
    return json_response(manager.info_json(session_id))


@router.delete("/{session_id}", status_code=204, responses=_ERRORS, summary="End a session")
def end_session(session_id: str, manager: Sessions) -> Response:
    """Forget the session."""
    manager.delete(session_id)
    return Response(status_code=204)


ep_router = APIRouter(prefix="/v1/ep-sessions", tags=["sessions"])


async def ep_sessions(request: Request) -> EpSessions:
    manager: EpSessions = request.app.state.ep_sessions
    return manager


EpManager = Annotated[EpSessions, Depends(ep_sessions)]


@ep_router.post(
    "",
    response_model=EpSessionInfo,
    status_code=201,
    responses=_ERRORS,
    summary="Start an EP session",
)
async def create_ep_session(
    http: Request,
    spec: Annotated[
        EpSessionCreate,
        Body(
            openapi_examples={
                "8-gpus": {
                    "summary": "8 experts on 8 GPUs, 16 slots",
                    "value": ep_session_example(),
                }
            }
        ),
    ],
    manager: EpManager,
    admission: AdmissionDep,
) -> EpSessionInfo | Response:
    """Expert parallelism: the session routes every batch over its replicas and re-places them
    when routed balance over the window of recent batches drops. The first placement is
    found in a solve slot, with the spec's deadline."""
    admission.refuse_when_full("solve")
    await run_in_threadpool(manager.prepare, spec)
    placement, placement_json = await admission.run(
        http, "solve", spec.deadline_s, "body.deadline_s", jobs.ep_initial_placement, spec
    )
    sid = await run_in_threadpool(manager.adopt, spec, placement, placement_json)
    return json_response(await run_in_threadpool(manager.info_json, sid), 201)


@ep_router.post(
    "/{session_id}/batches", response_model=EpRouting, responses=_ERRORS, summary="Route a batch"
)
async def route_ep_batch(
    http: Request,
    session_id: str,
    batch: Annotated[
        EpBatch,
        Body(
            openapi_examples={
                "flashlb": {"summary": "One batch (FlashLB loads)", "value": ep_batch_example()}
            }
        ),
    ],
    manager: EpManager,
    admission: AdmissionDep,
) -> EpRouting | Response:
    """Tokens per replica slot for this batch (exact min-max routing), and the window's balance.

    Routed in a cheap-routing slot with the server's default deadline; the batch is stored
    before the answer (an acknowledged batch survives a killed server)."""
    hist, placement, version, num_gpus = await run_in_threadpool(
        manager.prepare_batch, session_id, batch
    )
    tokens_json, per_layer = await admission.run(
        http, "route", None, "body.histogram", jobs.route_layers_json, placement, num_gpus, hist
    )
    window_balance, started = await run_in_threadpool(manager.record, session_id, hist, per_layer)
    metrics = http.app.state.metrics
    metrics.ep_batches.inc()
    metrics.ep_balancedness.observe(window_balance)
    if started:
        metrics.resolves_started.labels("ep_replace").inc()
    head = EpRouting(
        tokens_per_slot=[], balancedness=per_layer, version=version,
        window_balancedness=window_balance, replace_started=started,
    )  # fmt: skip
    return json_response(json_with(head, tokens_per_slot=tokens_json))


@ep_router.get(
    "/{session_id}", response_model=EpSessionInfo, responses=_ERRORS, summary="EP placement"
)
def ep_placement(session_id: str, manager: EpManager) -> EpSessionInfo | Response:
    """The current replica placement and its version."""
    return json_response(manager.info_json(session_id))


@ep_router.delete("/{session_id}", status_code=204, responses=_ERRORS, summary="End an EP session")
def end_ep_session(session_id: str, manager: EpManager) -> Response:
    """Forget the EP session and its window of batches."""
    manager.delete(session_id)
    return Response(status_code=204)
