"""The command line as a new user meets it: start-up imports, --version, bench names, errors on
stderr worded as the HTTP service words them, exit codes, --url on every command the service also
offers, the solve -> simulate round trip, and progress only on a terminal."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import service.cli as cli
from bench import BENCHMARKS
from bench.common import reporting, tracked
from service.client import MoeschedClient
from service.examples import (
    eplb_example,
    ordering_example,
    placement_example,
    route_example,
    simulate_example,
)
from service.main import create_app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
HEAVY = ("fastapi", "starlette", "httpx", "ortools", "pulp", "matplotlib", "numpy", "scipy",
         "solvers", "bench", "service.schemas", "uvicorn")  # fmt: skip


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running ``code``."""
    names = f"' '.join(m for m in {HEAVY!r} if m in sys.modules)"
    probe = f"{code}\nimport sys\nprint({names}, file=sys.stderr)"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stderr.split()


def test_importing_the_cli_loads_no_web_solver_or_plotting_library() -> None:
    assert loaded_after("import service.cli") == []


def test_help_and_presets_load_no_web_solver_or_plotting_library() -> None:
    run = "from service.cli import app\ntry:\n    app([{}])\nexcept SystemExit:\n    pass"
    assert loaded_after(run.format("'--help'")) == []
    assert loaded_after(run.format("'presets'")) == []


def test_version() -> None:
    result = runner.invoke(cli.app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.startswith("moesched ") and result.stdout.split()[1][0].isdigit()


def test_bench_help_lists_every_benchmark() -> None:
    result = runner.invoke(cli.app, ["bench", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert set(cli.BENCHMARK_HELP) == set(BENCHMARKS)
    for name in BENCHMARKS:
        assert name in result.stdout


def test_help_keeps_shapes_in_brackets() -> None:
    result = runner.invoke(cli.app, ["eplb", "--help"], terminal_width=200)
    assert "[num_layers][num_experts]" in result.stdout


def test_help_documents_exit_codes() -> None:
    result = runner.invoke(cli.app, ["--help"], terminal_width=200)
    assert "0 ok; 1" in result.stdout and "2 bad input" in result.stdout


def http_error(path: str, body: object) -> str:
    r = TestClient(create_app()).post(path, json=body)
    assert 400 <= r.status_code < 500, r.text
    text: str = r.json()["error"]
    return text


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "body",
    [
        {"hardware_preset": "nope"},  # validation: plan missing, model missing
        simulate_example() | {"hardware_preset": "nope"},  # domain error: unknown preset
    ],
)
def test_simulate_error_is_one_stderr_line_worded_as_http(tmp_path: Path, body: object) -> None:
    req = tmp_path / "req.json"
    req.write_text(json.dumps(body))
    result = runner.invoke(cli.app, ["simulate", str(req)])
    assert result.exit_code == 2
    assert result.stdout == ""
    line = one_error_line(result.stderr)
    assert line == f"error: {req}: " + http_error("/v1/simulate", body).replace("body.", "")


def test_eplb_3d_weights_give_one_line_not_a_pydantic_dump(tmp_path: Path) -> None:
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps([[[1.0, 2.0]] * 4] * 26))
    args = ["eplb", "--weights", str(weights), "--num-replicas", "8", "--num-groups", "1",
            "--num-nodes", "1", "--num-gpus", "4", "--json", str(tmp_path / "o.json")]  # fmt: skip
    result = runner.invoke(cli.app, args)
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert str(weights) in line and "weights: a 3-D array" in line
    assert "[num_layers, num_logical_experts]" in line and len(line) < 400


def test_plot_on_a_wrong_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    wrong = tmp_path / "w.json"
    wrong.write_text(json.dumps({"rows": []}))
    result = runner.invoke(cli.app, ["plot", str(wrong), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert line.startswith(f"error: {wrong}: benchmark: ")


def test_missing_file_and_broken_json(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    result = runner.invoke(cli.app, ["simulate", str(missing)])
    assert result.exit_code == 2 and str(missing) in one_error_line(result.stderr)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    result = runner.invoke(cli.app, ["simulate", str(broken)])
    assert result.exit_code == 2 and "not valid JSON" in one_error_line(result.stderr)


def test_unknown_benchmark_is_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(cli.app, ["bench", "nope", "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "executor" in one_error_line(result.stderr)


@pytest.fixture
def in_process_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Point --url at the app in this process; records the paths called."""
    calls: list[str] = []

    def fake_client(url: str, api_key: str | None) -> MoeschedClient:
        c = MoeschedClient(url, api_key)
        test_client = TestClient(create_app(), base_url=url)
        original = test_client.request

        def request(method: str, path: str, **kw: object) -> object:
            calls.append(path)
            return original(method, path, **kw)  # type: ignore[arg-type]

        test_client.request = request  # type: ignore[method-assign]
        c.http = test_client
        return c

    monkeypatch.setattr(cli, "client", fake_client)
    yield calls


def test_url_on_every_command_the_service_offers(
    tmp_path: Path, in_process_service: list[str]
) -> None:
    url = "http://moesched.test"
    sim = tmp_path / "sim.json"
    sim.write_text(json.dumps(simulate_example()))
    trace = tmp_path / "t.json"
    r = runner.invoke(cli.app, ["simulate", str(sim), "--url", url, "--trace", str(trace)])
    assert r.exit_code == 0, r.stderr
    assert "valid: True" in r.stdout
    assert any(e["ph"] == "X" for e in json.loads(trace.read_text())["traceEvents"])

    weights = tmp_path / "w.json"
    weights.write_text(json.dumps(eplb_example()["weights"]))
    r = runner.invoke(cli.app, ["eplb", "--weights", str(weights), "--num-replicas", "16",
                                "--num-groups", "4", "--num-nodes", "2", "--num-gpus", "8",
                                "--json", str(tmp_path / "e.json"), "--url", url])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    p2l, loads = tmp_path / "p.json", tmp_path / "l.json"
    p2l.write_text(json.dumps(route_example()["physical_to_logical"]))
    loads.write_text(json.dumps(route_example()["loads"]))
    r = runner.invoke(cli.app, ["route", "--placement", str(p2l), "--loads", str(loads),
                                "--num-gpus", "8", "--json", str(tmp_path / "r.json"),
                                "--url", url])  # fmt: skip
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(cli.app, ["presets", "--url", url])
    assert r.exit_code == 0 and "gpu-ndp-4dimm" in r.stdout
    place = tmp_path / "place.json"
    place.write_text(json.dumps(placement_example() | {"options": {"backend": "greedy"}}))
    r = runner.invoke(cli.app, ["solve", str(place), "--url", url])
    assert r.exit_code == 0, r.stderr
    assert in_process_service == [
        "/v1/simulate", "/v1/eplb", "/v1/route", "/v1/presets/hardware", "/v1/presets/models",
        "/v1/placement",
    ]  # fmt: skip


def test_url_errors_name_the_service(tmp_path: Path, in_process_service: list[str]) -> None:
    sim = tmp_path / "sim.json"
    sim.write_text(json.dumps(simulate_example() | {"hardware_preset": "nope"}))
    r = runner.invoke(cli.app, ["simulate", str(sim), "--url", "http://moesched.test"])
    assert r.exit_code == 2
    line = one_error_line(r.stderr)
    assert line.startswith("error: http://moesched.test: 422: body.hardware_preset: unknown")
    assert in_process_service == ["/v1/simulate"]


@pytest.mark.parametrize("example", [placement_example, ordering_example])
def test_solve_out_is_accepted_by_simulate(tmp_path: Path, example: object) -> None:
    body = example() | {"options": {"backend": "greedy"}}  # type: ignore[operator]
    req, plan = tmp_path / "req.json", tmp_path / "plan.json"
    req.write_text(json.dumps(body))
    solved = runner.invoke(cli.app, ["solve", str(req), "--out", str(plan)])
    assert solved.exit_code == 0, solved.stderr
    simulated = runner.invoke(cli.app, ["simulate", str(plan)])
    assert simulated.exit_code == 0, simulated.stderr
    assert "valid: True" in simulated.stdout

    def makespan(text: str) -> str:
        return next(line for line in text.splitlines() if line.startswith("makespan:"))

    assert makespan(solved.stdout) == makespan(simulated.stdout)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_not_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    term = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", term)
    with cli.progress(False) as reporter, reporting(reporter):
        assert reporter is not None
        assert list(tracked(range(3), "counting sheep")) == [0, 1, 2]
    assert "counting sheep" in term.getvalue()
    quiet = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    with cli.progress(True) as reporter, reporting(reporter):
        assert reporter is None
        assert list(tracked(range(3), "counting sheep")) == [0, 1, 2]
    assert quiet.getvalue() == ""


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_solve_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    import pty  # noqa: F401  (the platform has pseudo-terminals)

    req = tmp_path / "req.json"
    req.write_text(json.dumps(placement_example() | {"options": {"backend": "greedy"}}))
    argv = [sys.executable, "-m", "service.cli", "solve", str(req)]
    outputs = {}
    for quiet in (False, True):
        parent, child = os.openpty()
        proc = subprocess.run(
            [*argv, *(["--quiet"] if quiet else [])], cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=child, check=True,
        )  # fmt: skip
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(parent, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(parent)
        outputs[quiet] = b"".join(chunks).decode(errors="replace")
        assert b"valid: True" in proc.stdout
    assert "solving placement" in outputs[False]
    assert "solving placement" not in outputs[True]
