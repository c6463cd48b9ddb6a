"""Request dependencies: settings, admission and the API-key check."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import APIKeyHeader

from service.admission import Admission
from service.settings import Settings, get_settings

SettingsDep = Annotated[Settings, Depends(get_settings)]


async def admission(request: Request) -> Admission:
    """The app's admission (slots and worker processes); async (no I/O), so no thread hop."""
    got: Admission = request.app.state.admission
    return got


AdmissionDep = Annotated[Admission, Depends(admission)]


API_KEY = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key, when the server requires one."
)


def key_matches(expected: str | None, given: str | bytes | None) -> bool:
    """True when the server has no key, or ``given`` equals it (constant-time compare)."""
    if expected is None:
        return True
    if given is None:
        return False
    given_bytes = given.encode() if isinstance(given, str) else given
    return secrets.compare_digest(given_bytes, expected.encode())


async def require_api_key(
    settings: SettingsDep, x_api_key: Annotated[str | None, Depends(API_KEY)] = None
) -> None:
    """Refuse with 401 when the server has an API key and the request lacks it or differs.

    The ``Guard`` middleware checks the same before any body is read; this dependency
    documents the key in the OpenAPI schema and guards an app mounted without the middleware.
    Async: it does no I/O, and a sync dependency costs every request a thread-pool hop.
    """
    if not key_matches(settings.api_key, x_api_key):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key header")
