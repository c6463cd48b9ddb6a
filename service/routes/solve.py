"""Solver endpoints: placement and the EPLB-compatible mode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response

from service import jobs
from service.admission import Admission
from service.deps import AdmissionDep, SettingsDep
from service.errors import ErrorResponse
from service.examples import (
    eplb_example,
    eplb_window_example,
    ordering_example,
    placement_example,
    route_example,
)
from service.pictures import PICTURE_RESPONSES, FormatQuery, as_response
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
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["solve"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "Problem larger than the server's limits."},
    422: {
        "model": ErrorResponse,
        "description": "Invalid or infeasible request, or not answered within its deadline.",
    },
}


async def solve_answer(
    http: Request,
    admission: Admission,
    settings: Settings,
    request: PlacementRequest | OrderingRequest | ScheduleRequest,
    format: str,
    problem: str,
    job: Callable[..., Any],
) -> Response:
    """Run ``job`` (or, for ``format`` other than json, the plan's picture) in a solve slot under
    the request's deadline, count the answer, and send it."""
    if format != "json":
        return as_response(await admission.run(
            http, "solve", request.options.deadline_s, "body.options.deadline_s",
            jobs.answer_picture, problem, format, request, settings,
        ))  # fmt: skip
    answer = await admission.run(
        http, "solve", request.options.deadline_s, "body.options.deadline_s",
        jobs.dumped, job, request, settings,
    )  # fmt: skip
    http.app.state.metrics.record_answer(problem, answer)
    return answer.response()


@router.post(
    "/placement",
    response_model=PlacementResponse,
    responses=_ERRORS | PICTURE_RESPONSES,
    summary="Place expert shards",
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
    format: FormatQuery = "json",
) -> PlacementResponse | Response:
    """Which devices compute which slices of which experts, per layer; validated by the executor.

    `?format=png|svg|perfetto|html` answers with the plan's timeline instead of the JSON."""
    return await solve_answer(http, admission, settings, request, format, "placement", jobs.place)


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
    admission: AdmissionDep,
) -> EplbResponse | Response:
    """Replicate hot experts into redundant slots and pack them onto GPUs (EPLB's shapes)."""
    answer = await admission.run(
        http, "solve", request.deadline_s, "body.deadline_s", jobs.dumped, jobs.eplb, request,
        settings,
    )  # fmt: skip
    http.app.state.metrics.record_answer("eplb", answer)
    return answer.response()


@router.post(
    "/ordering",
    response_model=OrderingResponse,
    responses=_ERRORS | PICTURE_RESPONSES,
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
    format: FormatQuery = "json",
) -> OrderingResponse | Response:
    """Micro-batch count and every resource's task order, beside PPPipe and serial.

    `?format=png|svg|perfetto|html` answers with the plan's timeline instead of the JSON."""
    return await solve_answer(http, admission, settings, request, format, "ordering", jobs.order)


@router.post(
    "/schedule",
    response_model=ScheduleResponse,
    responses=_ERRORS | PICTURE_RESPONSES,
    summary="Full schedule",
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
    format: FormatQuery = "json",
) -> ScheduleResponse | Response:
    """Placement of every layer, then the order of every task; checked by the executor.

    `?format=png|svg|perfetto|html` answers with the schedule's timeline instead of the JSON:
    a Gantt chart, a Perfetto trace (open it in ui.perfetto.dev) or an interactive page."""
    return await solve_answer(http, admission, settings, request, format, "schedule", jobs.schedule)


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
) -> RouteResponse | Response:
    """Split each expert's tokens among its replicas (integers) so the busiest GPU is lightest.

    A cheap-routing slot (not a solve slot), with the server's default deadline."""
    answer = await admission.run(
        http, "route", None, "body.loads", jobs.dumped, jobs.route, request
    )
    return answer.response()


@router.get(
    "/schedule/example",
    response_model=ScheduleResponse,
    responses=_ERRORS | PICTURE_RESPONSES,
    summary="The example schedule, e.g. as an interactive timeline",
)
async def get_schedule_example(
    http: Request, settings: SettingsDep, admission: AdmissionDep, format: FormatQuery = "html"
) -> ScheduleResponse | Response:
    """The POST /v1/schedule example (a decode token on 4 NDP-DIMMs, greedy), answered in
    ``format``: open [/v1/schedule/example](/v1/schedule/example) for its timeline."""
    body = placement_example() | {"options": {"backend": "greedy"}}
    request = ScheduleRequest.model_validate(body)
    return await post_schedule(http, request, settings, admission, format)
