"""Design-space sweeps: spec expansion, hardware overrides, resumable results, real Ray runs.

The Ray tests join the cluster named by ``RAY_ADDRESS`` (``.ci/run`` starts a real head on
loopback) or start a local Ray instance; nothing about Ray is mocked.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.sweep import (
    ResultsFile,
    SweepSpec,
    columns_of,
    evaluate,
    override_hardware,
    pareto_front,
    point_key,
    run_sweep,
    sensitivity,
)
from hwmodel.presets import hardware_preset

TINY = {"prompt_tokens": 16, "decode_steps": 2, "policy": "moesched"}


def tiny_spec(name: str = "tiny", **axes: list) -> SweepSpec:
    return SweepSpec(
        name=name,
        base=TINY,
        axes=axes or {"hardware": ["gpu-ndp-2dimm", "gpu-ndp-4dimm"], "cache_share": [0.1, 0.3]},
    )


def simulated(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows without host time: what must not depend on the machine or the run."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_points_are_the_product_and_paired_values_set_together() -> None:
    spec = SweepSpec(
        name="s",
        base={"decode_steps": 4},
        axes={
            "workload": [
                {"model": "deepseek-v2-lite", "trace": "esft-law"},
                {"model": "flame-moe-290m", "trace": "flame"},
            ],
            "cache_share": [0.1, 0.2, 0.4],
        },
    )
    points = spec.points()
    assert len(points) == 6
    assert [(p["model"], p["trace"], p["cache_share"]) for p in points[:3]] == [
        ("deepseek-v2-lite", "esft-law", 0.1),
        ("deepseek-v2-lite", "esft-law", 0.2),
        ("deepseek-v2-lite", "esft-law", 0.4),
    ]
    assert {p["decode_steps"] for p in points} == {4}
    assert "workload" not in spec.parameter_names()
    assert len({point_key("decode", p) for p in points}) == 6


def test_spec_refuses_empty_axes_and_unknown_fields() -> None:
    with pytest.raises(ValueError, match=r"axes\.cache_share: needs at least one value"):
        SweepSpec(name="s", axes={"cache_share": []})
    with pytest.raises(ValueError, match="extra"):
        SweepSpec.model_validate({"name": "s", "axes": {"x": [1]}, "bogus": 1})


def test_point_key_is_the_same_in_another_process() -> None:
    params = {"hardware": "gpu-ndp-4dimm", "cache_share": 0.2, "hw.clock_hz": 1e9}
    code = (
        "from bench.sweep import point_key; "
        "print(point_key('decode', {'cache_share': 0.2, 'hw.clock_hz': 1e9, "
        "'hardware': 'gpu-ndp-4dimm'}))"
    )
    keys = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert keys == {point_key("decode", params)}


def test_hardware_overrides_by_kind_by_id_and_top_level() -> None:
    hw = hardware_preset("gpu-ndp-4dimm")
    got = override_hardware(
        hw,
        {
            "devices[kind=ndp].sram_bytes": 1 << 20,
            "links[pcie_down].bandwidth_bytes_per_s": 25e9,
            "clock_hz": 2e9,
        },
    )
    assert [d.sram_bytes for d in got.devices_of_kind("ndp")] == [1 << 20] * 4
    assert got.device("gpu").sram_bytes == hw.device("gpu").sram_bytes
    assert {lk.id: lk.bandwidth_bytes_per_s for lk in got.links} == {
        "pcie_down": 25e9,
        "pcie_up": 50e9,
    }
    assert got.clock_hz == 2e9


def test_hardware_overrides_name_the_path_when_refused() -> None:
    hw = hardware_preset("gpu-ndp-2dimm")
    with pytest.raises(ValueError, match=r"hw\.devices\[ndp9\]\.sram_bytes: matches no field"):
        override_hardware(hw, {"devices[ndp9].sram_bytes": 1})
    with pytest.raises(ValueError, match=r"hw\.devices\[gpu\]\.nope: matches no field"):
        override_hardware(hw, {"devices[gpu].nope": 1})
    with pytest.raises(ValueError, match="peak_flops_per_s"):
        override_hardware(hw, {"devices[gpu].peak_flops_per_s": -1.0})


def test_a_failing_point_is_a_row_with_its_error() -> None:
    row = evaluate("decode", {**tiny_spec().points()[0], "model": "no-such-model"})
    assert row["status"] == "error"
    assert "no-such-model" in row["error"]


def test_results_file_keeps_finished_rows_and_drops_a_row_cut_short(tmp_path: Path) -> None:
    spec = tiny_spec()
    out = tmp_path / "rows.csv"
    results = ResultsFile(out, columns_of(spec))
    first = {"key": "a", "status": "ok", "latency_s": 0.5}
    results.append(first)
    with out.open("a") as f:
        f.write("b,ok")  # a kill in the middle of a row
    again = ResultsFile(out, columns_of(spec))
    assert set(again.done) == {"a"}
    assert again.done["a"]["latency_s"] == "0.5"
    with pytest.raises(ValueError, match="columns"):
        ResultsFile(out, ["key", "status"])


def test_pareto_front_and_sensitivity() -> None:
    assert pareto_front([(1, 5), (2, 3), (3, 4), (2, 6), (4, 1)]) == [(1, 5), (2, 3), (4, 1)]
    rows = [
        {"status": "ok", "cache_share": "0.1", "latency_s": "3.0"},
        {"status": "ok", "cache_share": "0.2", "latency_s": "1.0"},
        {"status": "error", "cache_share": "0.2", "latency_s": ""},
    ]
    assert sensitivity(rows, {"cache_share": [0.1, 0.2]}, "latency_s") == {
        "cache_share": {"0.1": 1.5, "0.2": 0.5}
    }


def ray_address() -> str | None:
    return os.environ.get("RAY_ADDRESS") or None


@pytest.mark.slow
def test_sweep_on_ray_is_checked_and_resumes_without_recomputing(tmp_path: Path) -> None:
    spec = tiny_spec()
    out = tmp_path / "rows.csv"
    seen: list[tuple[int, int]] = []
    first = run_sweep(
        spec, out, address=ray_address(), num_cpus=2, on_row=lambda d, t: seen.append((d, t))
    )
    assert (first.total, first.reused, first.computed, first.failed) == (4, 0, 4, 0)
    assert seen[-1] == (4, 4)
    assert [r["status"] for r in first.rows] == ["ok"] * 4
    assert all(r["executor_violations"] == "0" for r in first.rows)
    # More cache never makes the replay slower on the same hardware and tokens.
    by = {(r["hardware"], r["cache_share"]): float(r["latency_s"]) for r in first.rows}
    assert by[("gpu-ndp-2dimm", "0.3")] <= by[("gpu-ndp-2dimm", "0.1")]
    again = run_sweep(spec, out, address=ray_address(), num_cpus=2)
    assert (again.reused, again.computed) == (4, 0)
    assert simulated(again.rows) == simulated(first.rows)


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_gives_the_rows_of_an_uninterrupted_one(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(
        "name: kill\nkind: decode\n"
        "base: {prompt_tokens: 16, decode_steps: 2}\n"
        "axes:\n  cache_share: [0.05, 0.1, 0.3, 0.5]\n"
    )
    out = tmp_path / "rows.csv"
    cmd = [sys.executable, "-m", "service.cli", "sweep", str(spec_path), "--out", str(out),
           "--workers", "1", "--quiet"]  # fmt: skip
    if ray_address():
        cmd += ["--address", ray_address()]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 3:  # header + 2 rows
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with out.open() as f:
        finished = [r for r in csv.DictReader(f) if r.get("status")]
    assert 2 <= len(finished) < 4
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} reused" in resumed.stdout
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4
    fresh = run_sweep(
        SweepSpec.model_validate(
            {"name": "kill", "base": TINY | {"policy": "moesched"},
             "axes": {"cache_share": [0.05, 0.1, 0.3, 0.5]}}
        ),
        tmp_path / "fresh.csv", address=ray_address(), num_cpus=2,
    )  # fmt: skip
    order = {r["key"]: r for r in rows}
    assert simulated([order[r["key"]] for r in fresh.rows]) == simulated(fresh.rows)


def cli_sweep(spec_path: Path, out: Path, env: dict[str, str], *extra: str) -> list[dict[str, str]]:
    """Run ``moesched sweep`` in a fresh process; the rows it wrote, in spec order."""
    cmd = [sys.executable, "-m", "service.cli", "sweep", str(spec_path), "--out", str(out),
           "--workers", "2", "--quiet", *extra]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    with out.open() as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.skipif(not ray_address(), reason="needs the Ray head tests/with_services.sh starts")
def test_the_shipped_example_gives_the_same_rows_on_the_cluster_as_on_a_local_ray(
    tmp_path: Path,
) -> None:
    """examples/ndp_design.yaml with its replay shortened, each axis cut to its first two values
    and the cache share to its first (8 points)."""
    import yaml

    example = yaml.safe_load((Path(__file__).parents[1] / "examples/ndp_design.yaml").read_text())
    example["base"] |= {"prompt_tokens": 16, "decode_steps": 2}
    axes = example["axes"]
    example["axes"] = {name: v[: 1 if name == "cache_share" else 2] for name, v in axes.items()}
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(example))
    local_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    local = cli_sweep(spec_path, tmp_path / "local.csv", local_env)
    cluster = cli_sweep(spec_path, tmp_path / "cluster.csv", dict(os.environ),
                        "--address", str(ray_address()))  # fmt: skip
    assert len(local) == 8 and all(r["status"] == "ok" for r in local)
    by_key = {r["key"]: r for r in cluster}
    assert simulated([by_key[r["key"]] for r in local]) == simulated(local)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"axes": {"bogus": [1]}}, "bogus: not a parameter"),
        ({"axes": {"model": ["gpt-5"]}}, "model: 'gpt-5' is not one of"),
        ({"axes": {"cache_share": [1.5]}}, r"cache_share: 1.5 is not a share"),
        ({"base": {"decode_steps": 10**6}, "axes": {"cache_share": [0.2]}}, "decode_steps"),
        ({"axes": {"hw.devices[gpu].peak_flops_per_s": [-1.0]}}, "peak_flops_per_s"),
    ],
)
def test_a_spec_whose_points_cannot_run_is_refused_before_anything_runs(
    change: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        SweepSpec.model_validate({"name": "s", **change})
