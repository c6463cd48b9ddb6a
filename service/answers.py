"""Answers encoded where they were computed (an admission worker process), so the server's event
loop and its threads only move bytes.

FastAPI validates and encodes a returned model on the event loop; for a big plan or a
``[256, 8192]`` placement that is seconds of CPU during which ``/healthz`` waits (and a C-level
encode in a thread holds the GIL the loop needs just as long). A worker returns ``Dumped``
instead: the JSON body, already encoded, and the few figures the server's metrics need; the
route answers it as bytes. ``json_with`` splices arrays a worker encoded into a small model's
JSON that the server builds itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Response
from pydantic import BaseModel

from hwmodel.plan import SolverAccount

# (backend, status, fallback reason, wall time in s) of a solve, for Metrics.record_solve
SolveFigures = tuple[str, str, str | None, float]


@dataclass(frozen=True)
class Dumped:
    """A JSON answer encoded in a worker, and its solve figures (for ``/metrics``), if any."""

    body: bytes
    solve: SolveFigures | None = None

    def response(self, status_code: int = 200) -> Response:
        return json_response(self.body, status_code)


def json_response(body: bytes, status_code: int = 200) -> Response:
    """An already-encoded JSON body as the answer (FastAPI neither validates nor re-encodes it;
    the route's ``response_model`` still documents it)."""
    return Response(body, status_code=status_code, media_type="application/json")


def solve_figures(answer: object) -> SolveFigures | None:
    """The solve figures of an answer that has an ``account`` or EPLB's flat fields."""
    account = getattr(answer, "account", None)
    if isinstance(account, SolverAccount):
        return (account.backend, account.status, account.fallback_reason, account.wall_time_s)
    backend, status, wall_s, reason = (
        getattr(answer, f, None) for f in ("backend", "status", "wall_time_s", "fallback_reason")
    )
    if isinstance(backend, str) and isinstance(status, str) and isinstance(wall_s, float):
        return (backend, status, reason if isinstance(reason, str) else None, wall_s)
    return None


def dump(answer: BaseModel) -> Dumped:
    """``answer`` encoded as the route's response model would be."""
    return Dumped(answer.model_dump_json(by_alias=True).encode(), solve_figures(answer))


def array_json(array: np.ndarray) -> bytes:
    """A numeric array as JSON (nested lists)."""
    return json.dumps(array.tolist(), separators=(",", ":")).encode()


def json_with(model: BaseModel | dict[str, Any], **encoded: bytes) -> bytes:
    """``model``'s JSON (a model's, or a dict's of plain values) with the named fields' values
    replaced by ready JSON text (each put last; the model's own value of those fields is
    dropped unencoded)."""
    if isinstance(model, BaseModel):
        head = model.model_dump_json(by_alias=True, exclude=set(encoded)).encode()
    else:
        kept = {k: v for k, v in model.items() if k not in encoded}
        head = json.dumps(kept, separators=(",", ":"), allow_nan=False).encode()
    parts = [head[:-1]]
    for i, (name, text) in enumerate(encoded.items()):
        sep = b"" if (i == 0 and head == b"{}") else b","
        parts.append(sep + json.dumps(name).encode() + b":" + text)
    return b"".join(parts) + b"}"
