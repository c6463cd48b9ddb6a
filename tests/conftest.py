"""Shared fixtures (the tiny figures are described in tests/tiny.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwmodel.routing_traces import traces_dir
from hwmodel.spec import Hardware, ModelSpec
from tests.tiny import tiny_hardware, tiny_model


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
