"""Solver endpoints: placement and the EPLB-compatible mode."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response

from service.deps import SettingsDep
from service.errors import ErrorResponse
from service.examples import eplb_example, ordering_example, placement_example, route_example
from service.pictures import PICTURE_RESPONSES, FormatQuery, picture
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
from service.solving import eplb, order, place, route, schedule

router = APIRouter(prefix="/v1", tags=["solve"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Problem larger than the server's limits."},
    422: {"model": ErrorResponse, "description": "Invalid or infeasible request."},
}


def _count(http: Request, problem: str, response: Any) -> None:
    """Record a solve in the app's metrics (problem, backend, the answer's one status)."""
    a = response.account
    http.app.state.metrics.record_account(problem, a)


@router.post(
    "/placement",
    response_model=PlacementResponse,
    responses=_ERRORS | PICTURE_RESPONSES,
    summary="Place expert shards",
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
    http: Request,
    format: FormatQuery = "json",
) -> PlacementResponse | Response:
    """Which devices compute which slices of which experts, per layer; validated by the executor.

    `?format=png|svg|perfetto|html` answers with the plan's timeline instead of the JSON.
    """
    response = place(request, settings, format != "json")
    _count(http, "placement", response)
    if format == "json":
        return response
    return picture(
        response, format, "placement", request.resolved_hardware(), request.resolved_model()
    )


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
            openapi_examples={"readme": {"summary": "EPLB README example", "value": eplb_example()}}
        ),
    ],
    settings: SettingsDep,
    http: Request,
) -> EplbResponse:
    """Replicate hot experts into redundant slots and pack them onto GPUs (EPLB's shapes)."""
    response = eplb(request, settings)
    http.app.state.metrics.record_solve(
        "eplb", response.backend, response.status, response.fallback_reason, response.wall_time_s
    )
    return response


@router.post(
    "/ordering",
    response_model=OrderingResponse,
    responses=_ERRORS | PICTURE_RESPONSES,
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
    http: Request,
    format: FormatQuery = "json",
) -> OrderingResponse | Response:
    """Micro-batch count and every resource's task order, beside PPPipe and serial.

    `?format=png|svg|perfetto|html` answers with the plan's timeline instead of the JSON.
    """
    response = order(request, settings, format != "json")
    _count(http, "ordering", response)
    if format == "json":
        return response
    return picture(
        response, format, "ordering", request.resolved_hardware(), request.resolved_model()
    )


@router.post(
    "/schedule",
    response_model=ScheduleResponse,
    responses=_ERRORS | PICTURE_RESPONSES,
    summary="Full schedule",
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
    http: Request,
    format: FormatQuery = "json",
) -> ScheduleResponse | Response:
    """Placement of every layer, then the order of every task; checked by the executor.

    `?format=png|svg|perfetto|html` answers with the schedule's timeline instead of the JSON:
    a Gantt chart, a Perfetto trace (open it in ui.perfetto.dev) or an interactive page.
    """
    response = schedule(request, settings, format != "json")
    _count(http, "schedule", response)
    if format == "json":
        return response
    return picture(
        response, format, "schedule", request.resolved_hardware(), request.resolved_model()
    )


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


@router.get(
    "/schedule/example",
    response_model=ScheduleResponse,
    responses=_ERRORS | PICTURE_RESPONSES,
    summary="The example schedule, e.g. as an interactive timeline",
)
def get_schedule_example(
    settings: SettingsDep, http: Request, format: FormatQuery = "html"
) -> ScheduleResponse | Response:
    """The POST /v1/schedule example (a decode token on 4 NDP-DIMMs, greedy), answered in
    ``format``: open [/v1/schedule/example](/v1/schedule/example) for its timeline."""
    body = placement_example() | {"options": {"backend": "greedy"}}
    request = ScheduleRequest.model_validate(body)
    return post_schedule(request, settings, http, format)
