"""The cost model, term by term, on figures computed by hand.

Every formula of ``hwmodel.costs`` is evaluated on inputs chosen so that each operand shows
(no factor of 1 or 0 hides a wrong operator), and each ``max`` is tried on both sides.
Seconds are compared with ``approx`` (float rounding) and cycles exactly.
"""

from __future__ import annotations

import pytest

from hwmodel import costs
from hwmodel.plan import ComputeTask, EvictTask, TransferTask, WeightSlice
from hwmodel.spec import AttentionSpec, Device, Hardware, Link, Memory, ModelSpec
from tests.tiny import tiny_device, tiny_hardware

# H = 100, I = 20, gated, 2 bytes per weight, 0.5 per activation: a w-column slice has
# 3 x 100 x w x 2 = 600 w weight bytes; a row is 50 bytes.
MODEL = ModelSpec(
    name="cost", hidden_size=100, expert_ffn_size=20, num_routed_experts=4, top_k=2,
    num_moe_layers=3, num_shared_experts=2, shared_expert_ffn_size=5, bytes_per_weight=2.0,
    bytes_per_activation=0.5,
)  # fmt: skip
# 2 GFLOP/s at 50% and 4 GB/s at 25%: effectively 1 GFLOP/s and 1 GB/s; launch 1 us.
GPU = tiny_device(
    "g", "gpu", peak_flops_per_s=2e9, compute_efficiency=0.5, mem_bandwidth_bytes_per_s=4e9,
    memory_efficiency=0.25, launch_s=1e-6,
)  # fmt: skip
# NDP unit: 1 GFLOP/s, 1 GB/s, 1,000-byte SRAM (500-byte tiles), 100 ns per tile, 2 us launch;
# the same effective figures again as 4 GFLOP/s at 25% and 2 GB/s at 50%.
NDP = tiny_device("n", sram_bytes=1000, tile_overhead_s=1e-7, launch_s=2e-6)
NDP_DERATED = NDP.model_copy(
    update={
        "peak_flops_per_s": 4e9, "compute_efficiency": 0.25, "mem_bandwidth_bytes_per_s": 2e9,
        "memory_efficiency": 0.5,
    }
)  # fmt: skip


def test_to_cycles_rounds_up_but_not_float_noise() -> None:
    assert costs.to_cycles(2e-9, 1e9) == 2
    assert costs.to_cycles(2.5e-9, 1e9) == 3
    assert costs.to_cycles(3.0000000000004e-9, 1e9) == 3
    # Rounded to exactly 1e-6 cycle first: 4e-7 above a whole cycle is noise, 4e-6 is not.
    assert costs.to_cycles(2.0000004e-9, 1e9) == 2
    assert costs.to_cycles(2.000004e-9, 1e9) == 3
    assert costs.to_cycles(1.5e-6, 2e9) == 3000
    assert costs.to_cycles(0.0, 1e9) == 0


def test_flops_and_bytes_of_a_slice() -> None:
    assert costs.expert_flops(MODEL, 7, 3) == 2 * 3 * 100 * 3 * 7  # 12,600
    assert costs.expert_flops(MODEL.model_copy(update={"gated": False}), 7, 3) == 8400
    assert costs.expert_bytes_read(MODEL, 7, 3) == 1800 + 2 * 7 * 50  # 2,500


def test_roofline_takes_the_slower_side_plus_the_launch() -> None:
    assert costs.roofline_s(GPU, 3000, 2000) == pytest.approx(1e-6 + 3e-6)  # compute-bound
    assert costs.roofline_s(GPU, 3000, 5000) == pytest.approx(1e-6 + 5e-6)  # memory-bound


@pytest.mark.parametrize(
    ("flops", "weight_bytes", "want_ns"),
    [
        # no weights: launch + compute only
        (3000, 0, 2000 + 3000),
        # 3 full tiles, compute-bound (1,000 ns per tile vs 600 ns load): 600 + 2 x 1,000 + 1,000
        (3000, 1500, 2000 + 3600),
        # 3 full tiles, load-bound (100 ns compute): 600 + 2 x 600 + 100
        (300, 1500, 2000 + 1900),
        # 2 full tiles + 200 bytes: 600 + 1,000 + max(300, 1,000) + 400
        (2400, 1200, 2000 + 3000),
        # 2 full tiles + 200 bytes, load-bound (fpb 0.1): 600 + 600 + max(300, 50) + 20
        (120, 1200, 2000 + 1520),
        # one partial tile: load 400 + compute 600
        (600, 300, 2000 + 1000),
        # one byte: load 101 + compute 600
        (600, 1, 2000 + 701),
        # 3 full tiles + 1 byte: 600 + 2 x 1,000 + max(101, 1,000) + 2
        (3002, 1501, 2000 + 3602),
    ],
)
@pytest.mark.parametrize("device", [NDP, NDP_DERATED], ids=["ndp", "ndp-derated"])
def test_ndp_tile_pipeline(
    device: Device, flops: float, weight_bytes: float, want_ns: float
) -> None:
    assert costs.tile_pipeline_s(device, flops, weight_bytes) == pytest.approx(want_ns * 1e-9)


def test_expert_shard_uses_tiles_on_ndp_and_the_roofline_elsewhere() -> None:
    # 2 tokens on 1 column: 1,200 FLOPs, 600 weight bytes (+ 100 activation bytes on the GPU).
    # NDP: one 500-byte tile (600 ns load, 1,000 ns compute) then 100 bytes (200 ns, 200 ns):
    # 600 + max(200, 1,000) + 200 = 1,800 ns, + 2 us launch.
    assert costs.expert_shard_s(NDP, MODEL, 2, 1) == pytest.approx(3.8e-6)
    # GPU: max(1,200 ns, 700 ns) + 1 us.
    assert costs.expert_shard_s(GPU, MODEL, 2, 1) == pytest.approx(2.2e-6)


def test_shared_experts() -> None:
    # 2 shared experts of width 5 = 10 columns on 4 tokens: 2*3*100*10*4 = 24,000 FLOPs;
    # 6,000 weight bytes + 400 activation bytes: compute-bound, 24 us + 1 us.
    assert costs.shared_expert_s(GPU, MODEL, 4) == pytest.approx(25e-6)
    # On a 1 TFLOP/s device memory decides: 6,400 ns + 1 us.
    fast = GPU.model_copy(update={"peak_flops_per_s": 2e12})
    assert costs.shared_expert_s(fast, MODEL, 4) == pytest.approx(7.4e-6)
    none = MODEL.model_copy(update={"num_shared_experts": 0, "shared_expert_ffn_size": 0})
    assert costs.shared_expert_s(GPU, none, 4) == 0.0


ATTENTION = AttentionSpec(
    kind="gqa", num_heads=2, num_kv_heads=1, head_dim=8, kv_cache_bytes_per_token_per_layer=64,
    params_per_layer=1000,
)  # fmt: skip


def test_attention() -> None:
    model = MODEL.model_copy(update={"attention": ATTENTION})
    # 3 new tokens over a context of 5 (ctx 8): FLOPs 2 x 1,000 x 3 + 4 x 3 x 8 x 2 x 8 =
    # 7,536; bytes 1,000 x 2 + 8 x 64 + 2 x 150 = 2,812: compute-bound, 7,536 ns + 1 us.
    assert costs.attention_s(GPU, model, 3, 5) == pytest.approx(8.536e-6)
    # At 1 TFLOP/s memory decides: 2,812 ns + 1 us.
    fast = GPU.model_copy(update={"peak_flops_per_s": 2e12})
    assert costs.attention_s(fast, model, 3, 5) == pytest.approx(3.812e-6)
    assert costs.attention_s(GPU, MODEL, 3, 5) == pytest.approx(1e-6)  # no shape: launch only
    # Adding 3 partial sums of 3 rows in the prologue (fused residual add): + 2 x 3 x 100 =
    # 600 FLOPs and + 4 x 150 = 600 bytes: 8,136 FLOPs, 3,412 bytes, still one launch:
    # 8,136 ns + 1 us, where a reduce of its own would cost 600 ns + 1 us more.
    assert costs.attention_s(GPU, model, 3, 5, num_partials=3) == pytest.approx(9.136e-6)
    assert costs.reduce_s(GPU, model, 3, 3) == pytest.approx(1.6e-6)
    # At 1 TFLOP/s memory decides: 3,412 ns + 1 us. No attention shape: the add alone.
    assert costs.attention_s(fast, model, 3, 5, num_partials=3) == pytest.approx(4.412e-6)
    assert costs.attention_s(GPU, MODEL, 3, 5, num_partials=3) == pytest.approx(1.6e-6)


def test_reduce_and_transfer() -> None:
    # 3 partial sums of 4 rows: 2 x 4 x 100 = 800 FLOPs; 4 x 200 = 800 bytes... with a GB/s
    # either way: max(800, 800) ns; 5 partials: 1,600 FLOPs vs 1,200 bytes.
    assert costs.reduce_s(GPU, MODEL, 4, 3) == pytest.approx(1.8e-6)
    assert costs.reduce_s(GPU, MODEL, 4, 5) == pytest.approx(2.6e-6)
    assert costs.reduce_s(GPU, MODEL, 4, 0) == pytest.approx(1.2e-6)  # no FLOPs, 200 bytes
    link = Link(id="l", src_device_ids=("g",), dst_device_ids=("n",),
                bandwidth_bytes_per_s=2e9, latency_s=3e-7)  # fmt: skip
    assert costs.transfer_s(link, 1000) == pytest.approx(8e-7)
    assert costs.transfer_bytes(MODEL, "weights", 9, 4) == 2400
    assert costs.transfer_bytes(MODEL, "activations", 9, 4) == 450
    assert costs.transfer_bytes(MODEL, "partial_sums", 9, 4) == 450


def test_weight_slice_bytes() -> None:
    expert = 12_000.0  # 600 bytes per column x 20
    assert costs.weight_slice_bytes(MODEL, WeightSlice()) == 3 * 4 * expert
    assert costs.weight_slice_bytes(MODEL, WeightSlice(layer=1)) == 4 * expert
    assert costs.weight_slice_bytes(MODEL, WeightSlice(expert=2)) == 3 * expert
    assert costs.weight_slice_bytes(MODEL, WeightSlice(layer=0, expert=1, ffn_start=5)) == 9000
    assert costs.weight_slice_bytes(MODEL, WeightSlice(layer=0, expert=1, ffn_end=4)) == 2400
    assert costs.weight_slice_bytes(MODEL, WeightSlice(layer=0, expert=1, ffn_start=20)) == 0


def test_task_cycles_of_every_kind() -> None:
    hw = tiny_hardware()  # 1 GHz; a, b: 1 GFLOP/s, 1 GB/s, no launch; bus 1 GB/s, 1 us
    shard = ComputeTask(
        id="s", device_id="a", op="expert", layer=0, expert=1, num_tokens=2, ffn_start=5,
        ffn_end=15,
    )  # fmt: skip
    # 10 columns x 2 tokens: 12,000 FLOPs vs 6,000 + 100 bytes.
    assert costs.task_cycles(hw, MODEL, shard) == ("a", 12_000, 0.0)
    whole = shard.model_copy(update={"ffn_start": 0, "ffn_end": None})
    assert costs.task_cycles(hw, MODEL, whole) == ("a", 24_000, 0.0)
    shared = ComputeTask(id="x", device_id="b", op="shared_expert", layer=0, num_tokens=4)
    assert costs.task_cycles(hw, MODEL, shared) == ("b", 24_000, 0.0)
    red = ComputeTask(id="r", device_id="gpu", op="reduce", layer=0, num_tokens=4, num_partials=3)
    assert costs.task_cycles(hw, MODEL, red) == ("gpu", 800, 0.0)
    move = TransferTask(
        id="w", link_id="bus", src_device_id="a", dst_device_id="gpu", payload="weights",
        layer=0, weights=WeightSlice(layer=0, expert=1, ffn_start=4, ffn_end=6),
    )  # fmt: skip
    assert costs.task_cycles(hw, MODEL, move) == ("bus", 1000 + 1200, 1200.0)
    rows = TransferTask(
        id="t", link_id="bus", src_device_id="gpu", dst_device_id="a", payload="activations",
        layer=0, num_tokens=6,
    )  # fmt: skip
    assert costs.task_cycles(hw, MODEL, rows) == ("bus", 1300, 300.0)
    # Attention of 3 tokens on 'a' (no launch): the context defaults to 0 (ctx 3): 2 x 1,000 x 3
    # + 4 x 3 x 3 x 2 x 8 = 6,576 FLOPs vs 2,000 + 192 + 300 bytes; with 5 more: 7,536.
    att = ComputeTask(id="q", device_id="a", op="attention", layer=0, num_tokens=3)
    with_att = MODEL.model_copy(update={"attention": ATTENTION})
    assert costs.task_cycles(hw, with_att, att) == ("a", 6576, 0.0)
    assert costs.task_cycles(hw, with_att, att, 5) == ("a", 7536, 0.0)
    evict = EvictTask(id="e", memory_id="a_mem", weights=WeightSlice(layer=0, expert=1))
    assert costs.task_cycles(hw, MODEL, evict) == ("a_mem", 0, 0.0)


def test_grouped_gemm_on_a_column_slice() -> None:
    # Experts 0 and 2 of a group (rows 1, 0, 1), columns 5 wide: 2 x 3,000 weight bytes and
    # 2 x 3 x 2 x 100 x 5 = 6,000 FLOPs. On the NDP unit one tile pipeline over 6,000 bytes:
    # 12 tiles of 500 bytes (load 600 ns, compute 500 ns): 600 + 11 x 600 + 500 = 7,700 ns,
    # + one 2 us launch; one slice alone is 600 + 5 x 600 + 500 + 2,000 = 6,100 ns, so the
    # group saves a launch and a pipeline fill against two shards (12,200 ns).
    assert costs.grouped_expert_s(NDP, MODEL, (1, 0, 1), 5) == pytest.approx(9.7e-6)
    assert costs.expert_shard_s(NDP, MODEL, 1, 5) == pytest.approx(6.1e-6)
    # On the GPU one roofline: max(6,000 FLOPs, 6,000 + 2 x 100 bytes) = 6,200 ns + 1 us.
    assert costs.grouped_expert_s(GPU, MODEL, (1, 0, 1), 5) == pytest.approx(7.2e-6)
    task = ComputeTask(id="g", device_id="n", op="expert", layer=0, expert=0, ffn_start=5,
                       ffn_end=10, num_tokens=2, group_rows=(1, 0, 1))  # fmt: skip
    hw = Hardware(
        name="h", devices=(NDP,), memories=(Memory(id="n_mem", capacity_bytes=10**6),),
        links=(), home_device_id="n",
    )  # fmt: skip
    assert costs.task_cycles(hw, MODEL, task)[1] == 9_700
