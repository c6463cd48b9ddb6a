"""CLI start-up: `moesched --help`, `presets` and `--version` against a bare `python -c pass`.

Each command runs as a fresh process; the figure is its wall time as a ratio to `python -c pass`
measured in the same run, interleaved (so machine load hits both alike), with the children's CPU
seconds beside it. Target: `--help` and `presets` start in under 1 s, judged on CPU seconds (on a
shared machine wall time also measures the other tenants' load).
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BenchResult, percentile, tracked

TARGET_S = 1.0


def moesched_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m service.cli``."""
    script = Path(sys.executable).parent / "moesched"
    if script.exists():
        return [str(script)]
    found = shutil.which("moesched")
    return [found] if found else [sys.executable, "-m", "service.cli"]


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``argv``; raises when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run(quick: bool) -> BenchResult:
    """Median wall and CPU seconds of each command, and its ratio to `python -c pass`."""
    repeats = 3 if quick else 10
    cli = moesched_command()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "moesched --help": [*cli, "--help"],
        "moesched presets": [*cli, "presets"],
        "moesched --version": [*cli, "--version"],
    }
    walls: dict[str, list[float]] = {name: [] for name in commands}
    cpus: dict[str, list[float]] = {name: [] for name in commands}
    for _ in tracked(range(repeats), "CLI start-up rounds"):
        for name, argv in commands.items():  # interleaved: load hits every command alike
            wall, cpu = run_once(argv)
            walls[name].append(wall)
            cpus[name].append(cpu)
    base = percentile(walls["python -c pass"], 50)
    result = BenchResult("cli")
    for name in commands:
        p50 = percentile(walls[name], 50)
        result.rows.append(
            {
                "command": name,
                "runs": repeats,
                "wall_s_p50": p50,
                "cpu_s_p50": percentile(cpus[name], 50),
                "ratio_to_python": p50 / base,
            }
        )
    by = {r["command"]: r for r in result.rows}
    help_, presets = by["moesched --help"], by["moesched presets"]
    result.summary = {
        "python_c_pass_s": base,
        "help_s": help_["wall_s_p50"],
        "help_cpu_s": help_["cpu_s_p50"],
        "help_ratio_to_python": help_["ratio_to_python"],
        "presets_s": presets["wall_s_p50"],
        "presets_cpu_s": presets["cpu_s_p50"],
        "presets_ratio_to_python": presets["ratio_to_python"],
        "target_s": TARGET_S,
        # judged on CPU seconds: wall time on a shared machine measures the other tenants
        "target_met_cpu": max(help_["cpu_s_p50"], presets["cpu_s_p50"]) < TARGET_S,
        "target_met_wall": max(help_["wall_s_p50"], presets["wall_s_p50"]) < TARGET_S,
    }
    return result
