"""Solver endpoints: placement and the EPLB-compatible mode."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request

from service import jobs
from service.deps import AdmissionDep, SettingsDep
from service.errors import ErrorResponse
from service.examples import eplb_example, ordering_example, placement_example, route_example
from service.schemas import (
    EplbRequest,
    EplbResponse,
    OrderingRequest,
    OrderingResponse,
    PlacementRequest,
    PlacementResponse,
    RouteRequest,
    RouteResponse,
    ScheduleRequest,
    ScheduleResponse,
)

router = APIRouter(prefix="/v1", tags=["solve"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Problem larger than the server's limits."},
    422: {
        "model": ErrorResponse,
        "description": "Invalid or infeasible request, or not answered within its deadline.",
    },
}


@router.post(
    "/placement", response_model=PlacementResponse, responses=_ERRORS, summary="Place expert shards"
)
async def post_placement(
    http: Request,
    request: Annotated[
        PlacementRequest,
        Body(
            openapi_examples={
                "gpu-ndp": {"summary": "Decode token, 4 NDP-DIMMs", "value": placement_example()}
            }
        ),
    ],
    settings: SettingsDep,
    admission: AdmissionDep,
) -> PlacementResponse:
    """Which devices compute which slices of which experts, per layer; validated by the executor."""
    return await admission.run(
        http, "solve", request.options.deadline_s, "body.options.deadline_s",
        jobs.place, request, settings,
    )  # fmt: skip


@router.post(
    "/eplb",
    response_model=EplbResponse,
    responses=_ERRORS,
    summary="EPLB-compatible replica placement",
)
async def post_eplb(
    http: Request,
    request: Annotated[
        EplbRequest,
        Body(
            openapi_examples={"readme": {"summary": "EPLB README example", "value": eplb_example()}}
        ),
    ],
    settings: SettingsDep,
    admission: AdmissionDep,
) -> EplbResponse:
    """Replicate hot experts into redundant slots and pack them onto GPUs (EPLB's shapes)."""
    return await admission.run(
        http, "solve", request.deadline_s, "body.deadline_s", jobs.eplb, request, settings
    )


@router.post(
    "/ordering",
    response_model=OrderingResponse,
    responses=_ERRORS,
    summary="Micro-batch pipeline (DEP)",
)
async def post_ordering(
    http: Request,
    request: Annotated[
        OrderingRequest,
        Body(
            openapi_examples={
                "dep-h20": {"summary": "DeepSeek-V2 on H20, 8k tokens", "value": ordering_example()}
            }
        ),
    ],
    settings: SettingsDep,
    admission: AdmissionDep,
) -> OrderingResponse:
    """Micro-batch count and every resource's task order, beside PPPipe and serial."""
    return await admission.run(
        http, "solve", request.options.deadline_s, "body.options.deadline_s",
        jobs.order, request, settings,
    )  # fmt: skip


@router.post(
    "/schedule", response_model=ScheduleResponse, responses=_ERRORS, summary="Full schedule"
)
async def post_schedule(
    http: Request,
    request: Annotated[
        ScheduleRequest,
        Body(
            openapi_examples={
                "gpu-ndp": {"summary": "Decode token, 4 NDP-DIMMs", "value": placement_example()}
            }
        ),
    ],
    settings: SettingsDep,
    admission: AdmissionDep,
) -> ScheduleResponse:
    """Placement of every layer, then the order of every task; checked by the executor."""
    return await admission.run(
        http, "solve", request.options.deadline_s, "body.options.deadline_s",
        jobs.schedule, request, settings,
    )  # fmt: skip


@router.post(
    "/route",
    response_model=RouteResponse,
    responses=_ERRORS,
    summary="Route one batch over replicas",
)
async def post_route(
    http: Request,
    request: Annotated[
        RouteRequest,
        Body(
            openapi_examples={
                "flashlb": {"summary": "FlashLB loads, 8 GPUs x 2 slots", "value": route_example()}
            }
        ),
    ],
    admission: AdmissionDep,
) -> RouteResponse:
    """Split each expert's tokens among its replicas (integers) so the busiest GPU is lightest.

    A cheap-routing slot (not a solve slot), with the server's default deadline."""
    return await admission.run(http, "route", None, "body.loads", jobs.route, request)
