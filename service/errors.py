"""One error shape for every 4xx/5xx answer, and the handlers that produce it."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from hwmodel.costs import CycleOverflowError
from service.store import StoreBusy, StoreError


class FieldError(BaseModel):
    """One problem with one field of the request."""

    field: str = Field(description="Dotted path of the field, e.g. 'body.workload.layer_ids'.")
    message: str = Field(description="What is wrong with it.")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="Human-readable summary naming the field and the reason.")
    error_type: str = Field(description="validation, not_found, too_large, unauthorized, ...")
    detail: list[FieldError] = Field(default_factory=list, description="Per-field problems.")


class DomainError(Exception):
    """A request that is well-formed JSON but cannot be served (unknown preset, shape mismatch)."""

    def __init__(self, status_code: int, error_type: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status_code = status_code
        self.error_type = error_type
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[int, str, str, str]]:  # crosses process pools
        return (type(self), (self.status_code, self.error_type, self.field, self.message))


class ClientGone(Exception):
    """The client disconnected before its answer was ready (its work was stopped)."""


def _json(status: int, body: ErrorResponse, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map validation, domain and HTTP errors to ``ErrorResponse``."""

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            FieldError(
                field=".".join(str(p) for p in err.get("loc", ())),
                message=str(err.get("msg", "invalid")),
            )
            for err in exc.errors()
        ]
        summary = "; ".join(f"{d.field}: {d.message}" for d in details[:3]) or "invalid request"
        return _json(422, ErrorResponse(error=summary, error_type="validation", detail=details))

    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        body = ErrorResponse(
            error=f"{exc.field}: {exc.message}",
            error_type=exc.error_type,
            detail=[FieldError(field=exc.field, message=exc.message)],
        )
        return _json(exc.status_code, body)

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
        kind = "store_busy" if isinstance(exc, StoreBusy) else "store_unavailable"
        body = ErrorResponse(error=str(exc), error_type=kind)
        return _json(503, body, {"Retry-After": "2"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
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
