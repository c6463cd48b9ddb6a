"""Bad-input errors and the one formatter that turns them into text, for HTTP and the CLI alike.

No FastAPI here (the CLI imports this at start-up cost): the HTTP handlers in ``service.errors``
and the command line both call ``summarize`` so a bad field reads the same in both places.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

SHOWN_FIELDS = 3  # a summary names this many fields, then says how many more there are


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


class MoeschedError(Exception):
    """A 4xx/5xx answer from a running service: ``status`` and the service's ``error`` text."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body.get('error', body)}")
        self.status = status
        self.body = body


def pydantic_details(errors: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(dotted field path, message) for each entry of a pydantic ``errors()`` list."""
    out = []
    for err in errors:
        field = ".".join(str(p) for p in err.get("loc", ()))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.append((field, message))
    return out


def summarize(details: Sequence[tuple[str, str]], shown: int = SHOWN_FIELDS) -> str:
    """One line: the first ``shown`` 'field: message' pairs, then 'and N more'.

    A message that already starts with its field (a model validator's "hardware: give ...")
    is not prefixed twice; an empty field (a whole-object check) shows the message alone.
    """
    parts = []
    for field, message in details[:shown]:
        leaf = field.rsplit(".", 1)[-1]
        named = not field or message.startswith(f"{leaf}:") or message.startswith(f"{field}:")
        parts.append(message if named else f"{field}: {message}")
    if len(details) > shown:
        parts.append(f"and {len(details) - shown} more")
    return "; ".join(parts) or "invalid request"


def input_error_text(exc: BaseException, source: str | Path | None = None) -> str | None:
    """The one-line text for bad input ``exc`` read from ``source`` (a file or URL), or None
    when ``exc`` is not a bad-input error (a bug: the caller re-raises it).

    Fields are named without the HTTP ``body.`` prefix; the file comes first.
    """
    where = f"{source}: " if source is not None else ""
    if where and str(exc).startswith(where):
        where = ""  # a reader's message that names the file already
    from pydantic import ValidationError  # only loaded when an error is being formatted

    if isinstance(exc, ValidationError):
        return where + summarize(pydantic_details(exc.errors()))
    if isinstance(exc, DomainError):
        return where + summarize([(exc.field.removeprefix("body."), exc.message)])
    if isinstance(exc, MoeschedError):
        return f"{source}: {exc}" if source is not None else str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"{where}not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, OSError):
        name = exc.filename if exc.filename is not None else source
        return f"{name}: {exc.strerror or exc}"
    if isinstance(exc, KeyError):
        return f"{where}missing field {exc.args[0]!r}" if exc.args else f"{where}missing field"
    httpx = sys.modules.get("httpx")
    if httpx is not None and isinstance(exc, httpx.TransportError):
        return f"{where}cannot reach the service ({type(exc).__name__}: {exc})"
    if isinstance(exc, ValueError):
        return where + str(exc)
    return None
