"""The command line on traces unlike the shared ones: other shapes, serving logs that
interleave requests, traces too short to score. Each either runs on the right model and
tokens or exits 2 with one line saying what is missing, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from service.cli import app
from service.input_errors import input_error_text

runner = CliRunner()


def flame_file(
    path: Path, tokens: int, layers: int, experts: int, top_k: int, seq_len: int = 512
) -> Path:
    """A FLAME-format trace ``indices [layers][tokens][top_k]`` in sequences of ``seq_len``
    tokens, routed round-robin (every expert up to ``experts - 1`` used)."""
    ids = (np.arange(layers * tokens * top_k) % experts).reshape(layers, tokens, top_k)
    path.write_text(
        json.dumps(
            {
                "meta": {"num_experts": experts, "top_k": top_k, "seq_len": seq_len},
                "layers": list(range(layers)),
                "indices": ids.tolist(),
                "scores": np.full(ids.shape, 1.0 / top_k).tolist(),
            }
        )
    )
    return path


def route_log(path: Path, steps: int, layers: int, experts: int, top_k: int) -> Path:
    """A serving log of two requests decoded together, one token each per engine step (no
    prefill pass): requests a and b alternate token by token in every pass."""
    rng = np.random.default_rng(0)
    lines = [{"type": "meta", "top_k": top_k, "num_experts": experts}]
    for _ in range(steps):
        for layer in range(layers):
            for t, req in enumerate(("a", "b")):
                ids = rng.choice(experts, size=top_k, replace=False).tolist()
                lines.append(
                    {"type": "route", "req_id": req, "token_idx": t, "layer": layer,
                     "topk_ids": ids, "topk_weights": [1.0 / top_k] * top_k}
                )  # fmt: skip
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_replay_of_a_serving_log_decodes_each_request_as_one_sequence(tmp_path: Path) -> None:
    """FLAME-MoE's shape (8 MoE layers, 64 experts, top-6), 24 steps of 2 requests: the
    replay's runs are the two requests (24 tokens each, a quarter of them prompt), not the
    one-token runs a change of request cut before."""
    log = route_log(tmp_path / "log.jsonl", 24, 8, 64, 6)
    out = tmp_path / "replay.json"
    got = runner.invoke(
        app, ["replay", "--trace", str(log), "--json", str(out), "--sequences", "2",
              "--policy", "lru", "-q"],
    )  # fmt: skip
    assert got.exit_code == 0, got.output
    report = json.loads(out.read_text())
    assert report["model"] == "flame-moe-290m"
    assert report["decode_runs"] == [[0, 6, 24], [24, 30, 48]]


def test_replay_with_nothing_to_decode_exits_2_saying_so(tmp_path: Path) -> None:
    trace = flame_file(tmp_path / "one.json", 1, 8, 64, 6)
    got = runner.invoke(app, ["replay", "--trace", str(trace), "--json", str(tmp_path / "x")])
    assert got.exit_code == 2
    assert "no token left to decode" in got.output and "Traceback" not in got.output


def test_replay_names_the_model_by_top_k_too(tmp_path: Path) -> None:
    """26 x 64 at top-8 is not DeepSeek-V2-Lite (top-6): refused, not replayed on it."""
    trace = flame_file(tmp_path / "t8.json", 32, 26, 64, 8)
    got = runner.invoke(app, ["replay", "--trace", str(trace), "--json", str(tmp_path / "x")])
    assert got.exit_code == 2 and "no preset fits the trace" in got.output
    assert "top-8" in got.output


def test_replay_says_which_option_sizes_a_cache_too_large(tmp_path: Path) -> None:
    """Mixtral (32 layers, 8 experts of 336 MiB): every expert cached needs 86 GB."""
    trace = flame_file(tmp_path / "mixtral.json", 32, 32, 8, 2)
    got = runner.invoke(
        app, ["replay", "--trace", str(trace), "--json", str(tmp_path / "x"),
              "--capacity-fraction", "1.0"],
    )  # fmt: skip
    assert got.exit_code == 2 and "--capacity-experts" in got.output


def test_eplb_gives_experts_a_log_never_routed_a_slot(tmp_path: Path) -> None:
    """A log of a 72-expert model that routed only ids below 64 (no num_experts in its meta):
    --num-experts 72 places all 72; fewer than the loads have is refused."""
    log = route_log(tmp_path / "log.jsonl", 4, 2, 64, 2)
    lines = log.read_text().splitlines()
    lines[0] = json.dumps({"type": "meta", "top_k": 2})  # the count is not in the file
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "answer.json"
    args = ["eplb", "--num-gpus", "8", "--num-replicas", "80", "--from", "routing-log",
            str(log), "--json", str(out), "-q"]  # fmt: skip
    got = runner.invoke(app, [*args, "--num-experts", "72"])
    assert got.exit_code == 0, got.output
    placed = np.asarray(json.loads(out.read_text())["physical_to_logical"])
    assert placed.shape == (2, 80) and all(set(row) == set(range(72)) for row in placed.tolist())
    fewer = runner.invoke(app, [*args, "--num-experts", "32"])
    assert fewer.exit_code == 2 and "num_logical_experts" in fewer.output


def test_benchmarks_refuse_traces_too_short_to_score(tmp_path: Path) -> None:
    short = flame_file(tmp_path / "short.json", 100, 8, 64, 6)
    out = tmp_path / "x.json"
    cache = bench_quick("cache", short, out)
    assert cache.exit_code == 2 and "needs at least 2" in cache.output
    balance = bench_quick("balance", short, out)
    assert balance.exit_code == 2 and "needs at least 512" in balance.output
    assert "Traceback" not in cache.output + balance.output


def test_solve_refuses_cached_experts_the_gpu_cannot_hold(tmp_path: Path) -> None:
    request = {
        "hardware_preset": "gpu-ndp-4dimm", "model_preset": "mixtral-8x7b",
        "workload": {"layer_ids": [0], "tokens_per_expert": [[5, 6, 2, 1, 5, 7, 4, 2]],
                     "num_tokens": 16},
        "layout": "striped", "cached_experts": [0, 1, 2, 3],
    }  # fmt: skip
    path = tmp_path / "req.json"
    path.write_text(json.dumps(request))
    got = runner.invoke(app, ["solve", str(path)])
    assert got.exit_code == 2
    assert "cached_experts: 4 experts x 32 layers need 42.0 GiB" in got.output


def test_an_error_that_names_its_file_is_not_prefixed_twice() -> None:
    exc = ValueError("tr/x.json: layer 3 has 5 tokens")
    assert input_error_text(exc, "tr/x.json") == "tr/x.json: layer 3 has 5 tokens"
    assert input_error_text(ValueError("bad"), "tr/x.json") == "tr/x.json: bad"


def bench_quick(name: str, trace: Path, out: Path) -> Any:
    """``moesched bench NAME --quick --trace TRACE --json OUT``: the CLI runner's result."""
    return runner.invoke(
        app, ["bench", name, "--quick", "--trace", str(trace), "--json", str(out), "-q"]
    )


def test_bench_ndp_runs_the_reproduction_on_a_trace_file(tmp_path: Path) -> None:
    """FLAME-MoE's shape, 540 tokens: the 512-token prompt and 24 decode tokens of --quick,
    moesched against both MoNDE baselines on the fitted preset, every step executor-valid."""
    trace = flame_file(tmp_path / "mine.json", 540, 8, 64, 6)
    out = tmp_path / "ndp.json"
    got = bench_quick("ndp", trace, out)
    assert got.exit_code == 0, got.output
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert (row["model"], row["trace"]) == ("flame-moe-290m", f"file:{trace}")
    assert data["summary"]["executor_violations"] == 0
    assert row["speedup_vs_monde_paper"] >= row["speedup"] > 0
    short = flame_file(tmp_path / "short.json", 100, 8, 64, 6)
    refused = bench_quick("ndp", short, out)
    assert refused.exit_code == 2 and "512-token prompt" in refused.output


def test_bench_cache_on_a_model_whose_experts_the_gpu_cannot_all_hold(tmp_path: Path) -> None:
    """Mixtral's shape (32 layers, 8 experts of 336 MiB, top-2), two sequences: the cache is
    what the GPU holds (3 a layer, not 2 x top_k = 4), and the every-expert-resident floor,
    which no machine of this GPU can be, is skipped and reported as None, not as 0."""
    trace = flame_file(tmp_path / "mixtral.json", 80, 32, 8, 2, seq_len=40)
    out = tmp_path / "cache.json"
    got = bench_quick("cache", trace, out)
    assert got.exit_code == 0, got.output
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert (row["model"], row["capacity_experts"]) == ("mixtral-8x7b", 3)
    assert "skipped" in row["latency"]["all_resident"]
    assert row["decode_latency_reduction_all_resident_vs_lru_cpu"] is None
    assert data["summary"]["decode_latency_reduction_all_resident_vs_lru_cpu_mean"] is None
    assert data["summary"]["executor_violations"] == 0


def test_a_benchmark_missing_one_shared_trace_says_which_and_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The traces folder is there but lacks a file a benchmark reads: the message names the
    folder, the file and the variable to set (not a bare 'No such file')."""
    (tmp_path / "traces").mkdir()
    monkeypatch.setenv("MOESCHED_TRACES_DIR", str(tmp_path / "traces"))
    got = runner.invoke(app, ["bench", "balance", "--quick", "--json", str(tmp_path / "x")])
    assert got.exit_code == 2
    assert "MOESCHED_TRACES_DIR" in got.output and "is missing" in got.output
