"""One error shape for every 4xx/5xx answer, and the handlers that produce it."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from hwmodel.costs import CycleOverflowError
from service.input_errors import DomainError, pydantic_details, summarize
from service.store import StoreBusy, StoreError

__all__ = ["DomainError", "ErrorResponse", "FieldError", "install_error_handlers"]


class FieldError(BaseModel):
    """One problem with one field of the request."""

    field: str = Field(description="Dotted path of the field, e.g. 'body.workload.layer_ids'.")
    message: str = Field(description="What is wrong with it.")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="Human-readable summary naming the field and the reason.")
    error_type: str = Field(description="validation, not_found, too_large, unauthorized, ...")
    detail: list[FieldError] = Field(default_factory=list, description="Per-field problems.")


class ClientGone(Exception):
    """The client disconnected before its answer was ready (its work was stopped)."""


def _json(status: int, body: ErrorResponse, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def domain_error(exc: DomainError) -> ErrorResponse:
    """The answer to a ``DomainError`` (its status is ``exc.status_code``)."""
    return ErrorResponse(
        error=summarize([(exc.field, exc.message)]),
        error_type=exc.error_type,
        detail=[FieldError(field=exc.field, message=exc.message)],
    )


def store_error(exc: StoreError) -> ErrorResponse:
    """The answer to a ``StoreError`` (a 503 with ``Retry-After: 2``)."""
    kind = "store_busy" if isinstance(exc, StoreBusy) else "store_unavailable"
    return ErrorResponse(error=str(exc), error_type=kind)


def overload_cause(exc: StarletteHTTPException) -> str:
    """A 503's cause for the metrics: its ``cause``, or the slot class its text names."""
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return str(cause)
    m = re.match(r"all \d+ (\w+) slots", str(exc.detail))
    return f"{m.group(1)}_slots" if m else "other"


class Overloaded(StarletteHTTPException):
    """503 with Retry-After; ``cause`` labels it in the metrics (e.g. 'solve_slots')."""

    def __init__(self, cause: str, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(503, detail, headers={"Retry-After": str(retry_after_s)})
        self.cause = cause


def install_error_handlers(app: FastAPI) -> None:
    """Map validation, domain and HTTP errors to ``ErrorResponse``."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        pairs = pydantic_details(exc.errors())
        details = [FieldError(field=f, message=m) for f, m in pairs]
        summary = summarize(pairs)
        return _json(422, ErrorResponse(error=summary, error_type="validation", detail=details))

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return _json(exc.status_code, domain_error(exc))

    @app.exception_handler(CycleOverflowError)
    async def _cycles(_: Request, exc: CycleOverflowError) -> JSONResponse:
        body = ErrorResponse(
            error=f"body.hardware: {exc}",
            error_type="validation",
            detail=[FieldError(field="body.hardware", message=str(exc))],
        )
        return _json(422, body)

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    @app.exception_handler(StoreError)
    async def _store(_: Request, exc: StoreError) -> JSONResponse:
        return _json(503, store_error(exc), {"Retry-After": "2"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 503:
            metrics = getattr(request.app.state, "metrics", None)
            if metrics is not None:
                metrics.overloaded.labels(overload_cause(exc)).inc()
        kind = {
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
            429: "too_many_sessions",
            503: "overloaded",
        }
        body = ErrorResponse(error=str(exc.detail), error_type=kind.get(exc.status_code, "http"))
        return _json(exc.status_code, body, getattr(exc, "headers", None))
