"""Shared fixtures: a tiny hardware and model whose timelines can be computed by hand.

Clock 1 GHz (1 cycle = 1 ns). Model: H = 100, I = 10, 2 experts, 1 byte per weight and per
activation, gated (3 matrices). So for t tokens on a slice w columns wide:
    expert FLOPs   = 2 * 3 * 100 * w * t          (w = 10, t = 10: 60,000)
    weight bytes   = 3 * 100 * w                  (w = 10: 3,000)
    activation row = 100 bytes; 10 tokens = 1,000 bytes
Devices 'a' and 'b': 1 GFLOP/s, 1 GB/s, efficiencies 1, no launch cost, so a full expert on
10 tokens takes 60,000 cycles (compute-bound: 60,000 FLOPs vs 5,000 bytes).
Link 'bus': shared by gpu, a and b in every direction, 1 lane, 1 GB/s, 1 us latency: 10 rows
take 1,000 + 1,000 = 2,000 cycles.
"""

from __future__ import annotations

from hwmodel.spec import Device, Hardware, Link, Memory, ModelSpec


def tiny_device(device_id: str, kind: str = "ndp", **kw: object) -> Device:
    fields: dict[str, object] = {
        "id": device_id,
        "kind": kind,
        "memory_id": f"{device_id}_mem",
        "peak_flops_per_s": 1e9,
        "mem_bandwidth_bytes_per_s": 1e9,
        "compute_efficiency": 1.0,
        "memory_efficiency": 1.0,
        "launch_s": 0.0,
    }
    fields.update(kw)
    return Device.model_validate(fields)


def tiny_hardware(**link_kw: object) -> Hardware:
    names = ("gpu", "a", "b")
    link: dict[str, object] = {
        "id": "bus",
        "src_device_ids": names,
        "dst_device_ids": names,
        "bandwidth_bytes_per_s": 1e9,
        "latency_s": 1e-6,
    }
    link.update(link_kw)
    return Hardware(
        name="tiny",
        devices=(tiny_device("gpu", "gpu"), tiny_device("a"), tiny_device("b")),
        memories=tuple(Memory(id=f"{n}_mem", capacity_bytes=20_000) for n in names),
        links=(
            Link.model_validate(link),
            Link(
                id="down_a",
                src_device_ids=("gpu",),
                dst_device_ids=("a",),
                bandwidth_bytes_per_s=1e9,
            ),
        ),
        home_device_id="gpu",
    )


def tiny_model() -> ModelSpec:
    return ModelSpec(
        name="tiny",
        hidden_size=100,
        expert_ffn_size=10,
        num_routed_experts=2,
        top_k=1,
        num_moe_layers=2,
        bytes_per_weight=1.0,
        bytes_per_activation=1.0,
    )
