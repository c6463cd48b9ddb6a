"""Idle against loaded: run the deterministic benchmarks' ``--quick`` figures twice, once as the
machine is and once beside CPU burners, and require every figure except the timings to be the
same to the last digit (``make load-check``).

    .venv/bin/python -m tests.load_independence [--benchmarks eplb dep ...] [--burners 2]
        [--json docs/load_independence.json]

A burner is ``nice -n 19 python -c 'while 1: pass'``; this script starts them itself and
stops them (by their own process ids) when the loaded pass ends. Timings are the JSON keys
that name one (``is_timing``: wall or CPU seconds, and what is derived from them; not the
CPU-assisted baselines' figures); every other
number, string and list is compared exactly (floats by ``==`` on the parsed JSON, that is to
the last printed digit). Exits 1 and prints each difference when any figure moved.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The benchmarks whose figures are simulated or counted (the others measure speed only).
DETERMINISTIC = ["eplb", "dep", "balance", "cache", "ndp", "runtimes"]
# A key that names a timing: wall or CPU time, a figure computed from one, or the load average
# read beside it (the machine's state, not a result).
TIMING = re.compile(r"wall|cpu|elapsed|perf_counter|process_time|load_av", re.IGNORECASE)
# Names of simulated configurations that say "cpu" without naming a timing: the CPU-assisted
# baselines of ``bench cache`` (``lru_cpu``, ``belady_cpu``, ``..._vs_lru_cpu``).
CPU_ASSISTED = re.compile(r"(lru|belady)_cpu", re.IGNORECASE)


def is_timing(key: str) -> bool:
    """Whether a JSON key names a timing (skipped by ``differences``)."""
    return TIMING.search(CPU_ASSISTED.sub("", key)) is not None


def differences(idle: Any, loaded: Any, where: str = "") -> list[str]:
    """Every place the two JSON values differ, skipping keys that name a timing."""
    if isinstance(idle, dict) and isinstance(loaded, dict):
        out = []
        for key in sorted(set(idle) | set(loaded)):
            if is_timing(key):
                continue
            if key not in idle or key not in loaded:
                out.append(f"{where}/{key}: only in {'loaded' if key in loaded else 'idle'}")
                continue
            out += differences(idle[key], loaded[key], f"{where}/{key}")
        return out
    if isinstance(idle, list) and isinstance(loaded, list):
        if len(idle) != len(loaded):
            return [f"{where}: {len(idle)} items idle, {len(loaded)} loaded"]
        return [d for i, (a, b) in enumerate(zip(idle, loaded, strict=True))
                for d in differences(a, b, f"{where}[{i}]")]  # fmt: skip
    if type(idle) is not type(loaded) or idle != loaded:
        return [f"{where}: idle {idle!r}, loaded {loaded!r}"]
    return []


def _run_all(names: list[str], out_dir: Path) -> dict[str, Any]:
    got = {}
    for name in names:
        path = out_dir / f"{name}.json"
        moesched = Path(sys.executable).parent / "moesched"
        subprocess.run(
            ["nice", "-n", "10", str(moesched), "bench", name, "--quick", "--json", str(path)],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        got[name] = json.loads(path.read_text())
    return got


def _load() -> tuple[float, float, float]:
    return os.getloadavg()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--benchmarks", nargs="*", default=DETERMINISTIC)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moesched-load-") as tmp:
        (Path(tmp) / "idle").mkdir()
        (Path(tmp) / "loaded").mkdir()
        load_idle, t0 = _load(), time.perf_counter()
        idle = _run_all(args.benchmarks, Path(tmp) / "idle")
        wall_idle = time.perf_counter() - t0
        burners = [
            subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while 1: pass"])
            for _ in range(args.burners)
        ]
        try:
            time.sleep(5)  # let the burners show in the load average
            load_loaded, t0 = _load(), time.perf_counter()
            loaded = _run_all(args.benchmarks, Path(tmp) / "loaded")
            wall_loaded = time.perf_counter() - t0
            load_end = _load()
        finally:
            for b in burners:
                b.terminate()
            for b in burners:
                b.wait()
    diffs = {name: differences(idle[name], loaded[name]) for name in args.benchmarks}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
        check=False,
    ).stdout.strip()  # fmt: skip
    report = {
        "commit": commit or None,  # the code the figures came from
        "benchmarks": args.benchmarks,
        "burners": args.burners,
        "load_average_idle_start": load_idle,
        "load_average_loaded_start": load_loaded,
        "load_average_loaded_end": load_end,
        "wall_s_idle": round(wall_idle, 1),
        "wall_s_loaded": round(wall_loaded, 1),
        "timing_keys_skipped": f"{TIMING.pattern} (after removing {CPU_ASSISTED.pattern})",
        "differences": diffs,
        "same": not any(diffs.values()),
    }
    print(json.dumps(report, indent=1))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    sys.exit(0 if report["same"] else 1)


if __name__ == "__main__":
    main()
