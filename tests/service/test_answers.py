"""Answers encoded in a worker and spliced into a small model's JSON: the bytes decode to
exactly what the model with those fields would (exact small cases), and background re-solves
take a slot, are stopped at their deadline and free the slot."""

from __future__ import annotations

import json
import operator
import time

import numpy as np
import pytest

from service.admission import Admission
from service.answers import array_json, dump, json_with
from service.schemas import EpRouting, EpSessionInfo, RouteResponse
from service.settings import Settings


def test_json_with_splices_encoded_fields_into_the_model() -> None:
    placement = np.array([[0, 1, 2], [2, 1, 0]])
    head = EpSessionInfo(
        id="s", version=3, num_batches=7, physical_to_logical=[], moved_replicas_last=1
    )
    got = json.loads(json_with(head, physical_to_logical=array_json(placement)))
    full = head.model_copy(update={"physical_to_logical": placement.tolist()})
    assert got == json.loads(full.model_dump_json())
    assert EpSessionInfo.model_validate(got) == full
    routing = EpRouting(
        tokens_per_slot=[], balancedness=[0.5], version=1, window_balancedness=0.5,
        replace_started=False,
    )  # fmt: skip
    two = json.loads(json_with(routing, tokens_per_slot=b"[[1,2],[3]]"))
    assert two["tokens_per_slot"] == [[1, 2], [3]] and two["version"] == 1
    # a dict head, and a head with nothing left but the spliced field
    assert json.loads(json_with({"a": 1, "b": 2}, b=b"[0]")) == {"a": 1, "b": [0]}
    assert json.loads(json_with({"b": 2}, b=b"{}")) == {"b": {}}


def test_dump_encodes_as_the_response_model() -> None:
    answer = RouteResponse(
        tokens_per_slot=[1, 2], gpu_loads=[3], max_load=3, balancedness=1.0,
        even_split_balancedness=0.75,
    )  # fmt: skip
    got = dump(answer)
    assert RouteResponse.model_validate_json(got.body) == answer
    assert got.solve is None


def test_a_background_run_takes_a_slot_and_is_stopped_at_its_deadline() -> None:
    settings = Settings(max_concurrent_solves=1, max_deadline_s=0.3, deadline_grace_s=0.2)
    admission = Admission(settings)
    try:
        assert admission.run_background("solve", None, operator.add, 2, 3) == 5
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            admission.run_background("solve", 60.0, time.sleep, 30)  # capped at 0.3 + 0.2 s
        assert time.monotonic() - started < 20  # stopped, not slept out
        assert admission.busy("solve") == 0
        assert admission.classes["solve"].stopped_by_deadline == 1
        assert admission.run_background("solve", None, operator.mul, 4, 5) == 20  # a new worker
        admission.classes["solve"].take()  # every slot busy: skipped, not queued
        assert admission.run_background("solve", None, operator.add, 1, 1) is None
    finally:
        admission.close()
