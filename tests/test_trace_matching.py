"""Traces from other models and from serving logs: which preset a trace is replayed on
(``match_model``), and requests interleaved by continuous batching regrouped into sequences
(``RoutingTrace.per_sequence``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwmodel.routing_traces import match_model
from hwmodel.workload import RoutingTrace


def trace(layers: int, experts_routed: int, top_k: int, seq_ids: list[int]) -> RoutingTrace:
    """Tokens routed round-robin over experts ``0 .. experts_routed - 1``."""
    n = len(seq_ids)
    ids = (np.arange(n * layers * top_k) % experts_routed).reshape(n, layers, top_k)
    return RoutingTrace(
        "unknown", np.arange(layers, dtype=np.int32), ids.astype(np.int16), None,
        np.asarray(seq_ids, dtype=np.int32), experts_routed,
    )  # fmt: skip


def test_a_trace_that_never_routes_its_top_experts_still_finds_its_model() -> None:
    """Qwen3-30B-A3B: 48 MoE layers, 128 experts, top-8; ids only up to 119 in the file."""
    name, fitted = match_model(trace(48, 120, 8, [0] * 4))
    assert name == "qwen3-30b-a3b" and fitted.num_experts == 128


def test_top_k_decides_between_presets_of_one_shape() -> None:
    """26 layers x 64 experts is DeepSeek-V2-Lite at top-6; at top-8 no preset fits."""
    assert match_model(trace(26, 64, 6, [0, 0]))[0] == "deepseek-v2-lite"
    with pytest.raises(ValueError, match=r"no preset fits the trace .*top-8"):
        match_model(trace(26, 64, 8, [0, 0]))


def test_a_named_preset_that_does_not_fit_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="model: mixtral-8x7b has 32 MoE layers"):
        match_model(trace(26, 64, 6, [0]), "mixtral-8x7b")
    with pytest.raises(ValueError, match="has 64 routed experts"):
        match_model(trace(26, 80, 6, [0]), "deepseek-v2-lite")


def test_interleaved_requests_become_contiguous_sequences_in_order() -> None:
    t = trace(2, 8, 2, [0, 0, 1, 0, 1, 2, 0])
    got = t.per_sequence()
    assert got.seq_ids.tolist() == [0, 0, 0, 0, 1, 1, 2]
    assert got.sequences() == [(0, 4), (4, 6), (6, 7)]
    # Each sequence keeps its own tokens in their order.
    assert got.expert_ids[:4].tolist() == t.expert_ids[[0, 1, 3, 6]].tolist()
    assert got.step_ids is None and "regrouped into 3 sequences" in got.notes[-1]
    assert t.per_sequence().per_sequence() is not t and got.per_sequence() is got


def test_a_batched_decode_layout_loads_as_a_trace_of_its_sequences(
    tmp_path: Path, traces: Path
) -> None:
    """``[positions, layers, sequences, top_k]`` as JSON and .npy (what ``eplb --from
    routing-log`` reads) loads for replay too: position-major engine steps, regrouped into
    one run of positions per sequence. The shared FLAME file still loads as FLAME."""
    from hwmodel.routing_traces import FLAME_FILE, load_trace

    ids = np.arange(5 * 2 * 3 * 2).reshape(5, 2, 3, 2) % 8  # 5 positions, 2 layers, 3 seqs
    (tmp_path / "b.json").write_text(json.dumps({"topk_ids": ids.tolist()}))
    np.save(tmp_path / "b.npy", ids)
    for name in ("b.json", "b.npy"):
        got = load_trace(tmp_path / name).per_sequence()
        assert got.sequences() == [(0, 5), (5, 10), (10, 15)]
        assert got.expert_ids[5:10].tolist() == ids[:, :, 1, :].tolist()  # sequence 1
    assert load_trace(traces / FLAME_FILE).model == "flame-moe-290m"
