"""What the load check skips as timings: every key that names wall or CPU time, and nothing a
simulation computes. The CPU-assisted baselines of ``bench cache`` (``lru_cpu``,
``belady_cpu``) say "cpu" without naming a timing; skipping them hid their figures (and the
reductions against them) from the check."""

from __future__ import annotations

import pytest

from tests.load_independence import differences, is_timing


@pytest.mark.parametrize(
    "key",
    ["cpu_s", "wall_s", "planning_cpu_per_token_ms_by_row", "route_64e_8gpu_72slots_b16_p50_cpu_us",
     "server_cpu_ms_per_observation", "load_avg_1m_before", "v3_under_10s_cpu", "help_cpu_s",
     "floor_cpu_per_token_s"],
)  # fmt: skip
def test_timings_are_skipped(key: str) -> None:
    assert is_timing(key)


@pytest.mark.parametrize(
    "key",
    ["lru_cpu", "belady_cpu", "decode_latency_reduction_vs_lru_cpu",
     "decode_latency_reduction_belady_vs_lru_cpu_mean", "hit_rate", "tasks_per_step"],
)  # fmt: skip
def test_simulated_figures_are_compared(key: str) -> None:
    assert not is_timing(key)


def test_a_moved_cpu_assisted_figure_is_a_difference() -> None:
    idle = {"latency": {"lru_cpu": {"latency_per_step_ms": 9.97, "cpu_s": 1.0}}}
    loaded = {"latency": {"lru_cpu": {"latency_per_step_ms": 9.98, "cpu_s": 2.0}}}
    assert differences(idle, loaded) == [
        "/latency/lru_cpu/latency_per_step_ms: idle 9.97, loaded 9.98"
    ]
