"""Exact cases for the cost terms the cost group's surviving mutants showed untested there
(``python -m tests.mutants --groups costs``; docs/mutants.json): the grouped GEMM, the KV
cache size, a shared-expert slice, an explicit element size. Model and devices of
tests/test_costs_golden.py."""

from __future__ import annotations

import pytest

from hwmodel import costs
from hwmodel.plan import ComputeTask
from tests.test_costs_golden import ATTENTION, GPU, MODEL
from tests.tiny import tiny_hardware


def test_grouped_gemm_reads_each_active_expert_once() -> None:
    # Rows (3, 0, 5): 8 tokens over full-width experts (20 columns): 2 x 3 x 100 x 20 x 8 =
    # 96,000 FLOPs; the weights of the 2 experts with rows (12,000 bytes each) plus 8 rows in
    # and out (2 x 8 x 50): 24,800 bytes. Compute decides at 1 GFLOP/s: 1 us + 96 us.
    assert costs.grouped_expert_s(GPU, MODEL, (3, 0, 5)) == pytest.approx(97e-6)
    # At 1 TFLOP/s effective memory decides: 1 us + 24.8 us (the empty expert is not read:
    # 3 experts' weights would be 36,800 bytes).
    fast = GPU.model_copy(update={"peak_flops_per_s": 2e12})
    assert costs.grouped_expert_s(fast, MODEL, (3, 0, 5)) == pytest.approx(25.8e-6)


def test_kv_cache_bytes_over_every_moe_layer() -> None:
    model = MODEL.model_copy(update={"attention": ATTENTION})
    # 2 sequences at context 4 (+1 being written) x 64 bytes x 3 layers = 1,920 bytes.
    assert costs.kv_cache_bytes(model, 2, 4) == 1920.0
    assert costs.kv_cache_bytes(MODEL, 2, 4) == 0.0  # no attention shape: no cache


def test_task_cycles_of_a_grouped_gemm_and_a_shared_expert_slice() -> None:
    hw = tiny_hardware()  # 1 GHz; 'a', 'b': 1 GFLOP/s, 1 GB/s, no launch
    grouped = ComputeTask(
        id="g", device_id="a", op="expert", layer=0, expert=0, num_tokens=8, group_rows=(3, 0, 5)
    )
    # 96,000 FLOPs vs 24,800 bytes (as above): 96,000 cycles.
    assert costs.task_cycles(hw, MODEL, grouped) == ("a", 96_000, 0.0)
    # Columns [5, 10) of the 10 shared columns on 4 tokens: 2 x 3 x 100 x 5 x 4 = 12,000 FLOPs
    # vs 3,000 weight + 400 activation bytes: 12,000 cycles (the whole width: 24,000).
    piece = ComputeTask(
        id="x", device_id="b", op="shared_expert", layer=0, num_tokens=4, ffn_start=5, ffn_end=10
    )
    assert costs.task_cycles(hw, MODEL, piece) == ("b", 12_000, 0.0)


def test_a_shared_expert_slice_reads_only_its_columns() -> None:
    # 5 of the 10 columns on 4 tokens: 12,000 FLOPs (12 us) vs 3,400 bytes: 1 us + 12 us.
    assert costs.shared_expert_s(GPU, MODEL, 4, 5) == pytest.approx(13e-6)
    # A width past the 10 columns is the whole: 25 us, as without a width.
    assert costs.shared_expert_s(GPU, MODEL, 4, 30) == pytest.approx(25e-6)


def test_transfer_bytes_at_an_explicit_element_size() -> None:
    # 9 rows x 100 hidden x 2 bytes (instead of the model's 0.5 per activation).
    assert costs.transfer_bytes(MODEL, "activations", 9, 4, element_bytes=2.0) == 1800
    assert costs.transfer_bytes(MODEL, "weights", 9, 4, element_bytes=2.0) == 2400
