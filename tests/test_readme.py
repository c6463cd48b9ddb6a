"""The README's code blocks run as written: every shell line of "Try it" (against a live server
where it needs one), the sidecar snippet, and, for the two lines that take minutes, a named test
that runs the same command smaller."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.live import Server

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", flags=re.M | re.S)

# README line prefix -> (what runs instead, and where); each must name a test that exists
MIRRORED = {
    "make serve": "tests/test_readme.py::test_try_it_curl_block (a live `moesched serve`)",
    "make test": "the CI run itself (.ci/run calls make test)",
    ".venv/bin/moesched bench ndp": "tests/test_bench.py::test_ndp_bench_quick",
}
# lines run with extra options that make them short (the options override the line's own)
SHORTENED = {".venv/bin/moesched replay": " --max-steps 2 --policy lru"}


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README) if kind == lang]


def shell_lines(block: str) -> list[str]:
    """Commands of a shell block, continuation lines joined."""
    return [
        line.strip()
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


RUNTIMES = "## Runtimes: SGLang, vLLM, DeepSeek EPLB"  # run by tests/test_readme_runtimes.py


def outside_runtimes() -> str:
    """The README without the runtime section (whose commands its own test runs)."""
    head, _, rest = README.partition(RUNTIMES)
    return head + (rest.split("\n## ", 1)[1] if "\n## " in rest else "")


def test_every_readme_block_is_covered() -> None:
    langs = {kind for kind, _ in BLOCK.findall(README)}
    assert {"sh", "python"} <= langs
    here = [body for kind, body in BLOCK.findall(outside_runtimes()) if kind == "sh"]
    assert len(here) == 3 and len(blocks("python")) == 1
    assert RUNTIMES in README
    for target in MIRRORED.values():
        if "::" in target:
            path, name = target.split(" ")[0].split("::")
            assert f"def {name}(" in (ROOT / path).read_text(), target


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("readme") / "sessions.db")
    try:
        srv.start(timeout_s=120)
        yield srv
    finally:
        srv.stop()


def run(line: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", line], cwd=ROOT, capture_output=True, text=True,
        timeout=600, env=os.environ | {"TMPDIR": str(tmp)},
    )  # fmt: skip


def test_try_it_cli_block_runs_as_written(tmp_path: Path) -> None:
    cli_block = next(b for b in blocks("sh") if ".venv/bin/moesched presets" in b)
    ran = 0
    for line in shell_lines(cli_block):
        if any(line.startswith(prefix) for prefix in MIRRORED):
            continue
        extra = next((x for prefix, x in SHORTENED.items() if line.startswith(prefix)), "")
        command = line.split("  #")[0] + extra
        out = run(command, tmp_path)
        assert out.returncode == 0, (command, out.stdout[-2000:], out.stderr[-2000:])
        ran += 1
    assert ran >= 10
    assert Path("/tmp/plan.png").read_bytes()[:4] == b"\x89PNG"  # solve --out -> simulate


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
def test_try_it_curl_block(server: Server, tmp_path: Path) -> None:
    curl_block = next(b for b in blocks("sh") if "make serve &" in b)
    script = "\n".join(
        line.replace("localhost:8000", f"127.0.0.1:{server.port}")
        for line in curl_block.replace("\\\n", " ").splitlines()
        if not line.startswith("make serve")
    )
    out = run(script, tmp_path)
    assert out.returncode == 0, (out.stdout, out.stderr)
    status, makespan_ms, valid = out.stdout.split()
    assert status in {"optimal", "feasible", "fallback"} and float(makespan_ms) > 0
    assert valid == "True"
    assert Path("/tmp/schedule.png").read_bytes()[:4] == b"\x89PNG"


def test_sidecar_snippet_runs(server: Server) -> None:
    from service.examples import observation_example

    snippet = blocks("python")[0].replace("http://127.0.0.1:8000", server.url)

    def runtime_histograms() -> Iterator[list[list[int]]]:
        hist = observation_example()["histogram"]
        for step in range(3):
            yield [row[step:] + row[:step] for row in hist]

    namespace = {"runtime_histograms": runtime_histograms}
    exec(compile(snippet, "README.md", "exec"), namespace)  # the README's own code
    assert namespace["s"].plan.report.valid  # type: ignore[attr-defined]


def test_shortened_lines_still_name_real_options() -> None:
    """The options added to shortened lines exist (a renamed option would silently not run)."""
    for prefix, extra in SHORTENED.items():
        command = prefix.split()[-1]
        out = subprocess.run(
            [sys.executable, "-m", "service.cli", command, "--help"], cwd=ROOT,
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        for option in re.findall(r"--[\w-]+", extra):
            assert option in out.stdout, option
