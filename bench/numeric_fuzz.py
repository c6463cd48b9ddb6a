"""Numeric-leaf fuzz: every numeric field of every POST route, set to each extreme value.

Each route's working example is written out in full (hardware and model inline, not as preset
names) so that every physical figure is a leaf; list elements share one schema path, and the
first element of each list stands for it. Each (route, path, value) is one case; any 5xx, or
a number that comes back as NaN or null where the schema declares a number, is a failure.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel, ValidationError

from hwmodel.presets import hardware_preset, model_preset
from service.examples import (
    eplb_example,
    observation_example,
    ordering_example,
    placement_example,
    response_models,
    route_example,
    session_example,
    simulate_example,
)

# What a 200 must parse as (a null where a number is declared fails).
RESPONSES: dict[str, type[BaseModel]] = response_models()

# The list: NaN, +-Inf, +-1e308, 1e-308, 5e-324, 0, -1, 2**63, 10**400.
VALUES: tuple[Any, ...] = (
    math.nan, math.inf, -math.inf, 1e308, -1e308, 1e-308, 5e-324, 0, -1, 2**63, 10**400,
)  # fmt: skip
EP_SPEC = {"num_layers": 2, "num_experts": 8, "num_gpus": 2, "num_replicas": 8, "window": 4}
# A sweep job of 1 point (one decode step); every accepted one is cancelled and waited
# for before the next case, so the one sweep slot is free again (``settle`` in ``run``).
SWEEP_SPEC = {
    "name": "fuzz",
    "kind": "decode",
    "base": {"model": "deepseek-v2-lite", "trace": "esft-law", "prompt_tokens": 4,
             "decode_steps": 1, "cache_share": 0.2},
    "axes": {"hardware": ["gpu-ndp-2dimm"]},
}  # fmt: skip
BACKGROUND_ROUTES = ("/v1/sweeps",)  # a 2xx started work that goes on after the answer


def _inline(body: dict[str, Any]) -> dict[str, Any]:
    """The body with preset names replaced by the full hardware and model."""
    out = dict(body)
    if "hardware_preset" in out:
        out["hardware"] = hardware_preset(out.pop("hardware_preset")).model_dump(mode="json")
    if "model_preset" in out:
        out["model"] = model_preset(out.pop("model_preset")).model_dump(mode="json")
    return out


def bodies() -> dict[str, dict[str, Any]]:
    """Route template -> a working body (greedy, short deadlines: cheap when accepted)."""
    fast = {"backend": "greedy", "deadline_s": 0.5}
    place = _inline(placement_example()) | {"options": fast | {"num_granules": 4}}
    return {
        "/v1/placement": place,
        "/v1/schedule": place,
        "/v1/simulate": _inline(simulate_example()),
        "/v1/simulate/trace": _inline(simulate_example()),
        "/v1/simulate/gantt": _inline(simulate_example()),
        "/v1/ordering": _inline(ordering_example()) | {"options": fast | {"max_micro_batches": 4}},
        "/v1/eplb": eplb_example() | {"backend": "greedy", "deadline_s": 0.5},
        "/v1/route": route_example(),
        "/v1/sessions": _inline(session_example())
        | {"policy": fast | {"drift_threshold": 0.5, "decay": 0.9, "plan_batch_tokens": 1}},
        "/v1/sessions/{id}/observations": observation_example(),
        "/v1/ep-sessions": EP_SPEC,
        "/v1/ep-sessions/{id}/batches": {"histogram": [[3, 1, 0, 0, 2, 0, 1, 1]] * 2},
        "/v1/sweeps": SWEEP_SPEC,
    }


def leaves(body: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to numeric leaves, one per schema path (the first element of every list)."""
    if isinstance(body, dict):
        for k, v in body.items():
            yield from leaves(v, (*path, k))
    elif isinstance(body, list):
        if body:
            yield from leaves(body[0], (*path, 0))
    elif isinstance(body, int | float) and not isinstance(body, bool):
        yield path


def _set(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(body))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


def cases() -> list[tuple[str, str, Any, str]]:
    """Every (route, dotted path, value, JSON body) case."""
    out = []
    for route, body in bodies().items():
        for path in leaves(body):
            for value in VALUES:
                text = json.dumps(_set(body, path, value))  # NaN/Infinity as JS literals
                out.append((route, ".".join(map(str, path)), value, text))
    return out


def _nan_or_null_numbers(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_nan_or_null_numbers(v) for v in value.values())
    if isinstance(value, list):
        return any(_nan_or_null_numbers(v) for v in value)
    return False


def run(
    post: Callable[[str, str], tuple[int, bytes]],
    make_ids: Callable[[], tuple[str, str]],
    every: int = 1,
    settle: Callable[[str, bytes], None] | None = None,
) -> dict[str, Any]:
    """Send every ``every``-th case through ``post(url, json_text) -> (status, body)``;
    ``make_ids()`` gives a live (session id, EP session id) for the per-session routes;
    ``settle(route, answer)`` ends the background work a 2xx of ``BACKGROUND_ROUTES``
    started (a sweep job) before the next case.

    Returns the counts by status class, the failures (5xx, or a non-finite number in a 200
    JSON answer) and their first few."""
    sid, ep_sid = make_ids()
    status: dict[str, int] = {}
    failures: list[str] = []
    done = 0
    for i, (route, path, value, text) in enumerate(cases()):
        if i % every:
            continue
        url = route.replace("/v1/sessions/{id}", f"/v1/sessions/{sid}").replace(
            "/v1/ep-sessions/{id}", f"/v1/ep-sessions/{ep_sid}"
        )
        code, content = post(url, text)
        done += 1
        status[f"{code // 100}xx"] = status.get(f"{code // 100}xx", 0) + 1
        if settle is not None and 200 <= code < 300 and route in BACKGROUND_ROUTES:
            settle(route, content)
        if code >= 500:
            failures.append(f"{route} {path}={value!r}: {code} {content[:200]!r}")
        elif code in (200, 201, 202) and not route.endswith("gantt"):
            try:
                parsed = json.loads(content)  # Python's parser reads NaN: caught below
            except ValueError:
                failures.append(f"{route} {path}={value!r}: 200 with unparsable JSON")
                continue
            if _nan_or_null_numbers(parsed):
                failures.append(f"{route} {path}={value!r}: a non-finite number in the answer")
            elif route in RESPONSES:
                try:
                    RESPONSES[route].model_validate_json(content)
                except ValidationError as exc:
                    failures.append(f"{route} {path}={value!r}: answer off its schema: {exc}")
    return {
        "routes": sorted({route for route, *_ in cases()}),
        "cases": done,
        "status": status,
        "failures": len(failures),
        "first_failures": failures[:10],
    }


def end_sweep(
    get: Callable[[str], dict[str, Any]], delete: Callable[[str], Any]
) -> Callable[[str, bytes], None]:
    """A ``settle`` for ``run``: cancel the sweep job a 202 answered and wait (at most 300 s)
    until it has ended; ``get(url)`` reads a JSON answer, ``delete(url)`` sends a DELETE."""

    def settle(route: str, content: bytes) -> None:
        url = f"{route}/{json.loads(content)['id']}"
        delete(url)
        give_up = time.monotonic() + 300
        while get(url + "?rows=false")["state"] in ("queued", "running"):
            if time.monotonic() > give_up:
                raise TimeoutError(f"{url}: still running 300 s after its cancel")
            time.sleep(0.1)

    return settle
