"""Shared fixtures (the tiny figures are described in tests/tiny.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from hwmodel.routing_traces import traces_dir
from hwmodel.spec import Hardware, ModelSpec
from tests.tiny import tiny_hardware, tiny_model

# Wall-clock backstops must not decide a test's outcome on a loaded machine: servers and apps
# the tests start stop a request's worker only long after its deadline (tests of that
# backstop set a short grace themselves).
os.environ.setdefault("MOESCHED_DEADLINE_GRACE_S", "120")

# Property tests draw the same examples on every machine (CI is reproducible); run with
# HYPOTHESIS_PROFILE=explore to draw fresh ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def hw() -> Hardware:
    return tiny_hardware()


@pytest.fixture
def model() -> ModelSpec:
    return tiny_model()


@pytest.fixture(scope="session")
def traces() -> Path:
    path = traces_dir()
    if not path.exists():
        pytest.fail(f"real traces not found at {path}; set MOESCHED_TRACES_DIR")
    return path
