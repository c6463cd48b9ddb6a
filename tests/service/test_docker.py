"""The image's recipe: pinned base, constraints used, traces path set, and a HEALTHCHECK that
probes the configured port (run here against a live server on loopback). No image is built: the
machine cannot pull a base image."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.live import Server, free_port
from service.cli import app

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_base_image_and_installs_are_pinned() -> None:
    base = re.search(r"^FROM (\S+)", DOCKERFILE, flags=re.M)
    assert base is not None
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert "pip install -c constraints.txt ." in DOCKERFILE
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()  # CI installs the same set
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.+\-]+", p) for p in pins), pins
    pinned = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    for dep in ("fastapi", "fastapi-offline", "ortools", "pydantic", "uvicorn", "typer"):
        assert dep in pinned


def test_image_points_the_traces_dir_at_a_mount() -> None:
    assert "MOESCHED_TRACES_DIR=/traces" in DOCKERFILE


def healthcheck_probe() -> str:
    m = re.search(r'HEALTHCHECK .*?\n\s*CMD (python -c ".*")', DOCKERFILE, flags=re.S)
    assert m is not None
    return m.group(1)


def test_healthcheck_probes_the_configured_port(tmp_path: Path) -> None:
    srv = Server(tmp_path / "db.sqlite")
    try:
        srv.start(timeout_s=120)
        argv = shlex.split(healthcheck_probe())
        argv[0] = sys.executable
        env = os.environ | {"MOESCHED_PORT": str(srv.port)}
        assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode == 0
        env["MOESCHED_PORT"] = str(free_port())  # nothing listens there
        assert subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode != 0
    finally:
        srv.stop()


@pytest.mark.parametrize("name", ["executor", "ndp"])
def test_bench_without_traces_says_where_to_put_them(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOESCHED_TRACES_DIR", str(tmp_path / "absent"))
    r = CliRunner().invoke(app, ["bench", name, "--quick", "--json", str(tmp_path / "o.json")])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "MOESCHED_TRACES_DIR" in lines[0] and "absent" in lines[0]


def test_bench_with_a_trace_file_missing_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "traces").mkdir()
    monkeypatch.setenv("MOESCHED_TRACES_DIR", str(tmp_path / "traces"))
    r = CliRunner().invoke(app, ["bench", "executor", "--quick", "--json", str(tmp_path / "o")])
    assert r.exit_code == 2
    assert "MOESCHED_TRACES_DIR" in r.stderr and ".jsonl.gz is missing" in r.stderr
