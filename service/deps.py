"""Request dependencies: settings and the API-key check."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from service.errors import Overloaded
from service.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[
        str | None, Header(description="API key, when the server requires one.")
    ] = None,
) -> None:
    """Refuse with 401 when the server has an API key and the request lacks it or differs."""
    if settings.api_key is not None and x_api_key != settings.api_key:
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")


def solve_slot(request: Request) -> Iterator[None]:
    """Hold one of the server's solve slots for the request; none free: 503 with Retry-After."""
    slots = request.app.state.solve_slots
    if not slots.acquire(blocking=False):
        raise Overloaded("solve_slots", "all solve slots are busy; retry shortly")
    try:
        yield
    finally:
        slots.release()
