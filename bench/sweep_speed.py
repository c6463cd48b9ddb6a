"""How a sweep scales on Ray: the same points on 1 and on 2 workers, as a ratio in one run.

Each point is a short decode-loop replay (DeepSeek-V2-Lite on ESFT law, GPU-NDP presets);
both runs compute every point (fresh result files) on a local Ray instance of 1 and then 2
CPUs. The figures are wall times (this is a speed benchmark); the rows of both runs must be
identical but for host time, which the summary checks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.common import BenchResult
from bench.sweep import SweepSpec, run_sweep


def spec(quick: bool) -> SweepSpec:
    """32 points (8 with ``quick``): DIMM count x NDP SRAM x GPU cache share."""
    shares = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5]
    return SweepSpec(
        name="scaling",
        base={"prompt_tokens": 16, "decode_steps": 4},
        axes={
            "hardware": ["gpu-ndp-2dimm", "gpu-ndp-4dimm"],
            "hw.devices[kind=ndp].sram_bytes": [262144] if quick else [65536, 262144],
            "cache_share": shares[:2] if quick else shares,
        },
    )


def run(quick: bool = False) -> BenchResult:
    result = BenchResult("sweep")
    s = spec(quick)
    outcomes = {}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            got = run_sweep(s, Path(tmp) / f"w{workers}.csv", num_cpus=workers)
            outcomes[workers] = got
            result.rows.append(
                {"workers": workers, "points": got.total, "computed": got.computed,
                 "failed": got.failed, "wall_s": got.wall_s}
            )  # fmt: skip
    same = [{k: v for k, v in r.items() if k != "wall_s"} for r in outcomes[1].rows] == [
        {k: v for k, v in r.items() if k != "wall_s"} for r in outcomes[2].rows
    ]
    result.summary = {
        "points": outcomes[1].total,
        "speedup_2_over_1_workers": outcomes[1].wall_s / outcomes[2].wall_s,
        "target_speedup": 1.7,
        "rows_identical": same,
        # Wall times depend on what else runs: the 1-minute load average around the runs.
        "load_avg_1m_before": load_before,
        "load_avg_1m_after": os.getloadavg()[0],
    }
    return result
