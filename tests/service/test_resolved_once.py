"""A request is resolved once at the edge and its whole plan is simulated once.

Spies count, over one request, how often the request's hardware is resolved (the preset looked
up), and every executor run with the number of tasks in the plan it ran: per-layer checks run
plans of one layer (fewer tasks than the answer's), so the runs on as many tasks as the answer
are the runs on the whole plan. A session's re-solve resolves nothing and builds no HTTP request.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hwmodel.executor
import service.schemas
from hwmodel.plan_builder import layout_residency
from hwmodel.presets import hardware_preset, model_preset
from service import jobs, solving
from service.examples import ordering_example, placement_example
from service.schemas import (
    Observation,
    OrderingRequest,
    PlacementRequest,
    ProblemRequest,
    ScheduleRequest,
    SessionCreate,
)
from service.sessions import SessionManager
from service.settings import Settings
from service.store import SQLiteStore


class Spy:
    """Counts hardware resolutions, preset look-ups and executor runs (by plan size)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.resolutions = 0
        self.lookups = 0
        self.requests_built = 0
        self.runs: list[int] = []
        resolve, lookup = ProblemRequest.resolved_hardware, service.schemas.hardware_preset
        simulate = hwmodel.executor.simulate
        init = PlacementRequest.__init__

        def counted_resolve(request: ProblemRequest) -> Any:
            self.resolutions += 1
            return resolve(request)

        def counted_lookup(name: str) -> Any:
            self.lookups += 1
            return lookup(name)

        def counted_simulate(hardware: Any, model: Any, plan: Any, *a: Any, **k: Any) -> Any:
            self.runs.append(len(plan.tasks))
            return simulate(hardware, model, plan, *a, **k)

        def counted_init(request: Any, **data: Any) -> None:
            self.requests_built += 1
            init(request, **data)

        monkeypatch.setattr(ProblemRequest, "resolved_hardware", counted_resolve)
        monkeypatch.setattr(service.schemas, "hardware_preset", counted_lookup)
        monkeypatch.setattr(PlacementRequest, "__init__", counted_init)
        # Every module that imported the executor's simulate, wherever it is called from.
        for module in list(sys.modules.values()):
            if getattr(module, "simulate", None) is simulate:
                monkeypatch.setattr(module, "simulate", counted_simulate)

    def whole_plan_runs(self, num_tasks: int) -> int:
        return sum(1 for n in self.runs if n == num_tasks)

    def reset(self) -> None:
        self.resolutions = self.lookups = self.requests_built = 0
        self.runs = []


def _body(**update: Any) -> dict[str, Any]:
    """The Swagger example (2 layers, 4 NDP-DIMMs, striped), greedy, with ``update``."""
    body = placement_example() | {"options": {"backend": "greedy"}}
    return body | update


def _residency_body() -> dict[str, Any]:
    """The example with the residency given instead of a named layout."""
    hardware, model = hardware_preset("gpu-ndp-4dimm"), model_preset("deepseek-v2-lite")
    residency = layout_residency(hardware, model, "round_robin", (0, 1, 2, 3))
    body = _body(residency=residency.model_dump(mode="json", exclude_none=True))
    del body["layout"], body["cached_experts"]
    return body


SETTINGS = Settings()

CASES = {
    "placement, striped": lambda: solving.place(PlacementRequest.model_validate(_body()), SETTINGS),
    "placement, striped, timeline": lambda: solving.place(
        PlacementRequest.model_validate(_body()), SETTINGS, True
    ),
    "placement, residency given": lambda: solving.place(
        PlacementRequest.model_validate(_residency_body()), SETTINGS
    ),
    "schedule, striped, auto": lambda: solving.schedule(
        ScheduleRequest.model_validate(_body(options={"backend": "auto", "deadline_s": 0.5})),
        SETTINGS,
    ),
    "schedule, round_robin, placement only": lambda: solving.schedule(
        ScheduleRequest.model_validate(_body(layout="round_robin", problems=["placement"])),
        SETTINGS,
    ),
    "schedule, striped, timeline": lambda: solving.schedule(
        ScheduleRequest.model_validate(_body()), SETTINGS, True
    ),
    "ordering (DEP)": lambda: solving.order(
        OrderingRequest.model_validate(
            ordering_example() | {"options": {"backend": "greedy", "max_micro_batches": 4}}
        ),
        SETTINGS,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_request_resolves_once_and_simulates_once(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    response = CASES[case]()
    assert response.report.valid
    assert spy.resolutions == 1, f"{case}: hardware resolved {spy.resolutions} times"
    assert spy.lookups == 1, f"{case}: preset looked up {spy.lookups} times"
    runs = spy.whole_plan_runs(len(response.plan.tasks))
    assert runs == 1, f"{case}: the whole plan was simulated {runs} times ({spy.runs})"


def test_a_picture_resolves_once_and_simulates_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """``?format=perfetto`` on /v1/schedule: the drawing uses the request's one resolution."""
    request = ScheduleRequest.model_validate(_body())
    spy = Spy(monkeypatch)
    body, media, _ = jobs.answer_picture("schedule", "perfetto", request, SETTINGS)
    assert body and media
    assert spy.resolutions == 1 and spy.lookups == 1
    assert spy.runs.count(max(spy.runs)) == 1, spy.runs  # the whole plan has the most tasks


def test_a_session_resolves_at_creation_and_re_solves_at_solver_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating resolves the preset once; a drift-triggered re-solve resolves nothing, builds
    no PlacementRequest, and its plan (simulated once) is swapped in."""
    spec = SessionCreate.model_validate(
        {
            "hardware_preset": "gpu-ndp-4dimm",
            "model_preset": "deepseek-v2-lite",
            "layout": "striped",
            "policy": {"backend": "greedy", "drift_threshold": 0.05, "decay": 0.5},
        }
    )
    settings = Settings(db_path=tmp_path / "s.db")
    manager = SessionManager(SQLiteStore(settings.db_path), settings)
    spy = Spy(monkeypatch)
    try:
        info = manager.create(spec)
        assert spy.resolutions == 1 and spy.lookups == 1 and spy.requests_built == 0
        assert spy.whole_plan_runs(len(info.plan.plan.tasks)) == 1
        spy.reset()
        model = model_preset("deepseek-v2-lite")
        hist = np.zeros((model.num_moe_layers, model.num_routed_experts), dtype=int)
        hist[:, :6] = 100  # all traffic on six experts: far from the uniform seed
        ack = manager.observe(info.id, Observation(histogram=hist.tolist()))
        assert ack.resolve_started
        manager.pool.shutdown(wait=True)
        after = manager.info(info.id)
    finally:
        manager.close()
    assert after.version == 2, "the re-solved plan was not swapped in"
    assert spy.resolutions == 0 and spy.lookups == 0 and spy.requests_built == 0
    assert spy.whole_plan_runs(len(after.plan.plan.tasks)) == 1
