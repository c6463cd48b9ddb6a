"""Solver endpoints: placement and the EPLB-compatible mode."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from service.deps import SettingsDep
from service.eplb import eplb
from service.errors import ErrorResponse
from service.examples import (
    eplb_example,
    eplb_window_example,
    ordering_example,
    placement_example,
    route_example,
)
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
from service.solving import order, place, route, schedule

router = APIRouter(prefix="/v1", tags=["solve"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Problem larger than the server's limits."},
    422: {"model": ErrorResponse, "description": "Invalid or infeasible request."},
}


@router.post(
    "/placement", response_model=PlacementResponse, responses=_ERRORS, summary="Place expert shards"
)
def post_placement(
    request: Annotated[
        PlacementRequest,
        Body(
            openapi_examples={
                "gpu-ndp": {"summary": "Decode token, 4 NDP-DIMMs", "value": placement_example()}
            }
        ),
    ],
    settings: SettingsDep,
) -> PlacementResponse:
    """Which devices compute which slices of which experts, per layer; validated by the executor."""
    return place(request, settings)


@router.post(
    "/eplb",
    response_model=EplbResponse,
    responses=_ERRORS,
    summary="EPLB-compatible replica placement",
)
def post_eplb(
    request: Annotated[
        EplbRequest,
        Body(
            openapi_examples={
                "readme": {"summary": "EPLB README example", "value": eplb_example()},
                "window": {
                    "summary": "A window of batches and the current map -> SGLang's file",
                    "value": eplb_window_example(),
                },
            }
        ),
    ],
    settings: SettingsDep,
) -> EplbResponse:
    """Replicate hot experts into redundant slots and pack them onto GPUs (EPLB's shapes)."""
    return eplb(request, settings)


@router.post(
    "/ordering",
    response_model=OrderingResponse,
    responses=_ERRORS,
    summary="Micro-batch pipeline (DEP)",
)
def post_ordering(
    request: Annotated[
        OrderingRequest,
        Body(
            openapi_examples={
                "dep-h20": {"summary": "DeepSeek-V2 on H20, 8k tokens", "value": ordering_example()}
            }
        ),
    ],
    settings: SettingsDep,
) -> OrderingResponse:
    """Micro-batch count and every resource's task order, beside PPPipe and serial."""
    return order(request, settings)


@router.post(
    "/schedule", response_model=ScheduleResponse, responses=_ERRORS, summary="Full schedule"
)
def post_schedule(
    request: Annotated[
        ScheduleRequest,
        Body(
            openapi_examples={
                "gpu-ndp": {"summary": "Decode token, 4 NDP-DIMMs", "value": placement_example()}
            }
        ),
    ],
    settings: SettingsDep,
) -> ScheduleResponse:
    """Placement of every layer, then the order of every task; checked by the executor."""
    return schedule(request, settings)


@router.post(
    "/route",
    response_model=RouteResponse,
    responses=_ERRORS,
    summary="Route one batch over replicas",
)
def post_route(
    request: Annotated[
        RouteRequest,
        Body(
            openapi_examples={
                "flashlb": {"summary": "FlashLB loads, 8 GPUs x 2 slots", "value": route_example()}
            }
        ),
    ],
) -> RouteResponse:
    """Split each expert's tokens among its replicas (integers) so the busiest GPU is lightest."""
    return route(request)
