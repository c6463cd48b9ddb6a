"""Hardware and model presets, each figure with its source.

Source keys (S-xx) refer to ../shared/reference/hardware.md section 7. Tags: [src] the number
is in the source; [derived] computed from sourced numbers (formula given); [choice] our own
documented value where the papers publish none (the NDP internals of arXiv 2601.03992 and
MoNDE are not public: the NDP figures are parametric, anchored on shipped PIM parts).

Presets are built by functions and looked up by lower-case name; ``HARDWARE_PRESETS`` and
``MODEL_PRESETS`` are the registries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from pydantic import Field

from hwmodel.spec import AttentionSpec, Device, Frozen, Hardware, Link, Memory, ModelSpec

GB = 10**9
GIB = 2**30

# ---------------------------------------------------------------------------- GPU-NDP (edge)

_RTX5080 = (
    "RTX 5080-class (GB203): 84 SM x 2.617 GHz boost; dense FP16 tensor with FP32 accumulate "
    "112.6 TFLOPS [derived: the RTX 4090's 165.2 TFLOPS per 128 SM x 2.52 GHz (S-G7) scaled to "
    "84 SM x 2.617 GHz; unverified]; 16 GB GDDR7 256-bit at 30 Gb/s = 960 GB/s [derived, "
    "unverified]; 5 us per kernel launch (S-K1)"
)
_NDP_DIMM = (
    "NDP-DIMM [choice, parametric; the paper's figures are not public]: DDR5-4800 DIMM, 2 ranks "
    "read in parallel by the buffer-chip PU = 2 x 38.4 GB/s = 76.8 GB/s internal; 8 PUs x 32 "
    "GFLOPS (the GDDR6-AiM per-PU rate, S-M6/S-M7: 1 TFLOPS / 32 PUs) = 256 GFLOPS; 256 KiB SRAM "
    "(within the 64 KB - 2 MB range of shipped PIM, S-M9); 50 ns per tile (one DRAM row cycle); "
    "32 GB per DIMM"
)
_PCIE5 = (
    "PCIe Gen5 x16, 50 GB/s effective per direction (hardware.md 1.3 simulator default); 1 us "
    "per DMA transfer [choice: activation-sized DMA, below the ~10 us cudaMemcpy figure]"
)


def gpu_ndp(num_dimms: int) -> Hardware:
    """The edge GPU-NDP setting of arXiv 2601.03992: one RTX 5080-class GPU + NDP-DIMMs.

    Expert weights live in the DIMMs; the GPU keeps an expert cache; activations and weights
    cross PCIe, one link per direction.
    """
    ndps = [f"ndp{i}" for i in range(num_dimms)]
    devices = [
        Device(
            id="gpu",
            kind="gpu",
            memory_id="gpu_vram",
            peak_flops_per_s=112.6e12,
            mem_bandwidth_bytes_per_s=960 * GB,
            launch_s=5e-6,
            source=_RTX5080,
        )
    ]
    memories = [
        Memory(
            id="gpu_vram",
            capacity_bytes=12 * GIB,
            source="16 GB VRAM less ~4 GB for attention weights, KV cache, activations [choice]",
        )
    ]
    for i, name in enumerate(ndps):
        devices.append(
            Device(
                id=name,
                kind="ndp",
                memory_id=f"dimm{i}",
                peak_flops_per_s=256e9,
                mem_bandwidth_bytes_per_s=76.8 * GB,
                compute_efficiency=0.9,
                memory_efficiency=0.9,
                launch_s=1e-6,
                sram_bytes=256 * 1024,
                tile_overhead_s=50e-9,
                source=_NDP_DIMM,
            )
        )
        memories.append(Memory(id=f"dimm{i}", capacity_bytes=32 * GB, source=_NDP_DIMM))
    links = [
        Link(
            id="pcie_down",
            src_device_ids=("gpu",),
            dst_device_ids=tuple(ndps),
            bandwidth_bytes_per_s=50 * GB,
            latency_s=1e-6,
            source=_PCIE5,
        ),
        Link(
            id="pcie_up",
            src_device_ids=tuple(ndps),
            dst_device_ids=("gpu",),
            bandwidth_bytes_per_s=50 * GB,
            latency_s=1e-6,
            source=_PCIE5,
        ),
    ]
    return Hardware(
        name=f"gpu-ndp-{num_dimms}dimm",
        description=(
            f"Edge GPU-NDP (arXiv 2601.03992): RTX 5080-class GPU + {num_dimms} NDP-DIMMs over "
            "PCIe Gen5"
        ),
        devices=tuple(devices),
        memories=tuple(memories),
        links=tuple(links),
        home_device_id="gpu",
    )


def orin_agx_ndp4() -> Hardware:
    """Jetson AGX Orin with 4 NDP units in its LPDDR5 (LPDDR5-PIM style), one shared bus."""
    orin = (
        "Jetson AGX Orin 64GB: dense FP16 tensor ~42.5 TFLOPS [derived: 85 dense INT8 TOPS / 2, "
        "S-J1]; LPDDR5 256-bit 204.8 GB/s [unverified, S-J7]"
    )
    ndp = (
        "LPDDR5 NDP unit [choice, parametric]: one per 64-bit channel group; internal 102.4 GB/s "
        "(2x its 51.2 GB/s share, bank-group parallelism as AttAcc's BG 8x/3x, S-A1); 4 PUs x "
        "32 GFLOPS = 128 GFLOPS (S-M7 per-PU rate); 128 KiB SRAM; 12 GB each"
    )
    units = [f"ndp{i}" for i in range(4)]
    devices = [
        Device(
            id="gpu",
            kind="gpu",
            memory_id="gpu_carveout",
            peak_flops_per_s=42.5e12,
            mem_bandwidth_bytes_per_s=204.8 * GB,
            launch_s=5e-6,
            source=orin,
        )
    ] + [
        Device(
            id=u,
            kind="ndp",
            memory_id=f"lpddr5_{i}",
            peak_flops_per_s=128e9,
            mem_bandwidth_bytes_per_s=102.4 * GB,
            compute_efficiency=0.9,
            memory_efficiency=0.9,
            launch_s=1e-6,
            sram_bytes=128 * 1024,
            tile_overhead_s=50e-9,
            source=ndp,
        )
        for i, u in enumerate(units)
    ]
    memories = [Memory(id="gpu_carveout", capacity_bytes=8 * GIB, source="expert cache [choice]")]
    memories += [Memory(id=f"lpddr5_{i}", capacity_bytes=12 * GB, source=ndp) for i in range(4)]
    everyone = ("gpu", *units)
    links = [
        Link(
            id="lpddr5_bus",
            src_device_ids=everyone,
            dst_device_ids=everyone,
            bandwidth_bytes_per_s=204.8 * GB * 0.85,
            latency_s=0.5e-6,
            source="unified LPDDR5 bus, 204.8 GB/s x 0.85 achievable [derived]; 0.5 us [choice]",
        )
    ]
    return Hardware(
        name="orin-agx-ndp4",
        description="Jetson AGX Orin + 4 LPDDR5 NDP units on the shared memory bus",
        devices=tuple(devices),
        memories=tuple(memories),
        links=tuple(links),
        home_device_id="gpu",
    )


# ---------------------------------------------------------------------------- DEP clusters


class DepCluster(Frozen):
    """A DEP cluster class: one GPU type, its NIC and its intra-node link, with sources.

    ``dep_hardware`` builds a Hardware of it for any attention:expert split.
    """

    name: str
    gpu: str
    peak_flops_per_s: float
    hbm_bytes_per_s: float
    hbm_bytes: int
    intra_node_bytes_per_s: float
    intra_node_latency_s: float
    nic_bytes_per_s: float = Field(description="Payload bytes/s per direction per GPU.")
    nic_latency_s: float
    gpus_per_node: int = 8
    num_gpus: int = Field(description="GPU budget of the cluster (attention + expert).")
    num_attention_gpus: int = Field(description="Default split: attention GPUs.")
    source: str
    nic_source: str
    intra_source: str


_RDMA400 = (
    "400 Gb/s RDMA NIC per GPU (CX7): 45 GB/s payload per direction (DeepEP internode "
    "43-58 GB/s, S-N3); 15 us per message (NCCL alpha, hardware.md 1.4)"
)


def _a6000_nic(gbit: int) -> str:
    payload = {100: "11.7 GB/s (ib_write_bw, S-N1)", 200: "23 GB/s (ib_read_bw, S-N2)"}[gbit]
    return (
        f"one {gbit} Gb/s NIC per 8-GPU node, {payload} measured per direction, shared evenly "
        "by the node's 8 GPUs under all-to-all traffic [choice: one NIC per node, as in "
        "FinDEP's A6000 cluster class (peers.md 1.3: PCIe within a node, 100/200 Gb/s between "
        "nodes)]; 20 us per message (NCCL alpha at 200G, hardware.md 1.4)"
    )


DEP_CLUSTERS: dict[str, DepCluster] = {
    "dep-h20": DepCluster(
        name="dep-h20", gpu="H20", peak_flops_per_s=148e12, hbm_bytes_per_s=4000 * GB,
        hbm_bytes=96 * GB, intra_node_bytes_per_s=380 * GB, intra_node_latency_s=5e-6,
        nic_bytes_per_s=45 * GB, nic_latency_s=15e-6, num_gpus=16, num_attention_gpus=8,
        source="H20 96GB: 148 TFLOPS BF16 dense, 4000 GB/s, 96 GB (S-G6, S-G9)",
        nic_source=_RDMA400,
        intra_source="NVLink 900 bidir, ~380 GB/s measured per direction on H100-class (S-P5)",
    ),
    "dep-h800": DepCluster(
        name="dep-h800", gpu="H800", peak_flops_per_s=989e12, hbm_bytes_per_s=3352 * GB,
        hbm_bytes=80 * GB, intra_node_bytes_per_s=155 * GB, intra_node_latency_s=5e-6,
        nic_bytes_per_s=45 * GB, nic_latency_s=15e-6, num_gpus=16, num_attention_gpus=8,
        source="H800 80GB: 989 TFLOPS BF16 dense, 3352 GB/s (S-G6)",
        nic_source=_RDMA400,
        intra_source="NVLink ~153-158 GB/s measured (DeepEP intranode, S-N3)",
    ),
    **{
        f"dep-a6000-{gbit}g": DepCluster(
            name=f"dep-a6000-{gbit}g", gpu="RTX A6000", peak_flops_per_s=154.8e12,
            hbm_bytes_per_s=768 * GB, hbm_bytes=48 * GB, intra_node_bytes_per_s=25 * GB,
            intra_node_latency_s=10e-6, nic_bytes_per_s=(11.7 if gbit == 100 else 23) * GB / 8,
            nic_latency_s=20e-6, num_gpus=32, num_attention_gpus=16,
            source=(
                "RTX A6000: 48 GB GDDR6 ECC, 768 GB/s, 154.8 TFLOPS dense FP16/BF16 tensor "
                "(servethehome.com RTX A6000 spec table; llmperf.net citing Microway's Ampere "
                "comparison); 4 nodes x 8 GPUs = 32 (FinDEP's 32-GPU system, peers.md 1.3)"
            ),
            nic_source=_a6000_nic(gbit),
            intra_source=(
                "PCIe Gen4 x16 inside a node, ~25 GB/s measured peak (S-P1); 10 us per "
                "transfer (hardware.md 1.3 simulator default)"
            ),
        )
        for gbit in (100, 200)
    },
}  # fmt: skip


def dep_hardware(
    cluster: str, num_attention_gpus: int | None = None, num_expert_gpus: int | None = None
) -> Hardware:
    """A DEP cluster split into attention and expert GPUs (default: the cluster's split).

    Every GPU has its NIC share as two ports: egress (``a2e{i}`` from attention GPU i to the
    expert group, ``e2a{j}`` from expert GPU j to the attention group) and ingress
    (``a2e_in{j}`` into expert GPU j, ``e2a_in{i}`` into attention GPU i), so a split with more
    attention than expert GPUs loads the expert ports more. One intra-node link per group.
    """
    spec = DEP_CLUSTERS[cluster]
    a = spec.num_attention_gpus if num_attention_gpus is None else num_attention_gpus
    e = spec.num_gpus - a if num_expert_gpus is None else num_expert_gpus
    if a < 1 or e < 1:
        raise ValueError("num_attention_gpus: both groups need at least one GPU")
    attn = [f"attn{i}" for i in range(a)]
    experts = [f"exp{i}" for i in range(e)]
    devices = [
        Device(
            id=d, kind="gpu", memory_id=f"{d}_hbm", peak_flops_per_s=spec.peak_flops_per_s,
            mem_bandwidth_bytes_per_s=spec.hbm_bytes_per_s, launch_s=5e-6,
            source=spec.source + "; 5 us per kernel launch (S-K1)",
        )
        for d in attn + experts
    ]  # fmt: skip
    memories = [
        Memory(id=f"{d}_hbm", capacity_bytes=spec.hbm_bytes, source=spec.source)
        for d in attn + experts
    ]

    def nic(lid: str, src: list[str], dst: list[str]) -> Link:
        return Link(
            id=lid, src_device_ids=tuple(src), dst_device_ids=tuple(dst),
            bandwidth_bytes_per_s=spec.nic_bytes_per_s, latency_s=spec.nic_latency_s,
            source=spec.nic_source,
        )  # fmt: skip

    links = [nic(f"a2e{i}", [d], experts) for i, d in enumerate(attn)]
    links += [nic(f"e2a{j}", [d], attn) for j, d in enumerate(experts)]
    links += [nic(f"a2e_in{j}", attn, [d]) for j, d in enumerate(experts)]
    links += [nic(f"e2a_in{i}", experts, [d]) for i, d in enumerate(attn)]
    for group, members in (("attn", attn), ("exp", experts)):
        links.append(
            Link(
                id=f"intra_{group}", src_device_ids=tuple(members),
                dst_device_ids=tuple(members), bandwidth_bytes_per_s=spec.intra_node_bytes_per_s,
                latency_s=spec.intra_node_latency_s, num_lanes=len(members),
                source=spec.intra_source,
            )
        )  # fmt: skip
    return Hardware(
        name=cluster,
        description=(
            f"Disaggregated expert parallelism: {a} {spec.gpu} attention GPUs + {e} {spec.gpu} "
            f"expert GPUs, {spec.nic_bytes_per_s / GB:.2f} GB/s NIC share per GPU and direction"
        ),
        devices=tuple(devices),
        memories=tuple(memories),
        links=tuple(links),
        groups={"attention": tuple(attn), "experts": tuple(experts)},
        home_device_id=attn[0],
    )


def dep_h20() -> Hardware:
    """DEP on H20 nodes (FinDEP's cluster class): 8 attention + 8 expert GPUs."""
    return dep_hardware("dep-h20")


def dep_h800() -> Hardware:
    """DEP on H800 nodes (DeepSeek's cluster class): 8 attention + 8 expert GPUs."""
    return dep_hardware("dep-h800")


def dep_a6000_100g() -> Hardware:
    """DEP on 4 nodes of 8 RTX A6000 (FinDEP's A6000 class), 100 Gb/s NIC: 16 + 16 GPUs."""
    return dep_hardware("dep-a6000-100g")


def dep_a6000_200g() -> Hardware:
    """As ``dep-a6000-100g`` with a 200 Gb/s NIC per node."""
    return dep_hardware("dep-a6000-200g")


# ---------------------------------------------------------------------------- offloading


def _offload(
    name: str,
    gpu: str,
    peak_flops_per_s: float,
    vram_bytes_per_s: float,
    cache_bytes: int,
    host_bytes_per_s: float,
    host_bytes: int,
    cpu_flops_per_s: float,
    source: str,
) -> Hardware:
    pcie = (
        "PCIe Gen4 x16: ~25 GB/s measured H2D (S-P1, hardware.md 1.3); 10 us per transfer "
        "[unverified, hardware.md 1.3]"
    )
    devices = (
        Device(
            id="gpu",
            kind="gpu",
            memory_id="gpu_vram",
            peak_flops_per_s=peak_flops_per_s,
            mem_bandwidth_bytes_per_s=vram_bytes_per_s,
            launch_s=5e-6,
            source=source,
        ),
        Device(
            id="cpu",
            kind="cpu",
            memory_id="host_dram",
            peak_flops_per_s=cpu_flops_per_s,
            mem_bandwidth_bytes_per_s=host_bytes_per_s,
            compute_efficiency=0.5,
            memory_efficiency=0.7,
            launch_s=20e-6,
            source=source,
        ),
    )
    memories = (
        Memory(id="gpu_vram", capacity_bytes=cache_bytes, source="expert cache share of VRAM"),
        Memory(id="host_dram", capacity_bytes=host_bytes, source=source),
    )
    links = (
        Link(
            id="pcie_h2d",
            src_device_ids=("cpu",),
            dst_device_ids=("gpu",),
            bandwidth_bytes_per_s=25 * GB,
            latency_s=10e-6,
            source=pcie,
        ),
        Link(
            id="pcie_d2h",
            src_device_ids=("gpu",),
            dst_device_ids=("cpu",),
            bandwidth_bytes_per_s=25 * GB,
            latency_s=10e-6,
            source=pcie,
        ),
    )
    return Hardware(
        name=name,
        description=f"{gpu} with experts offloaded to host DRAM over PCIe Gen4 (expert cache)",
        devices=devices,
        memories=memories,
        links=links,
        home_device_id="gpu",
    )


def offload_a6000() -> Hardware:
    """RTX A6000 + Xeon host over PCIe Gen4 (the SMoE paper's machine, arXiv 2508.18983)."""
    return _offload(
        "offload-a6000-pcie4",
        "RTX A6000",
        154.8e12,
        768 * GB,
        40 * GB,
        307 * GB,
        512 * GB,
        3.7e12,
        "RTX A6000: 48 GB GDDR6, 768 GB/s, 154.8 TFLOPS dense FP16 tensor (309.7 sparse / 2) "
        "[unverified]; 40 GB of it as expert cache [choice]. Host: Xeon Gold 6444Y (SMoE's, "
        "peers.md 1.2), 16 cores x 3.6 GHz x 64 BF16 FLOP/cycle ~3.7 TFLOPS [derived, "
        "unverified]; 8 x DDR5-4800 = 307 GB/s [derived]",
    )


def offload_rtx4090() -> Hardware:
    """RTX 4090 + desktop host over PCIe Gen4."""
    return _offload(
        "offload-rtx4090-pcie4",
        "RTX 4090",
        165.2e12,
        1008 * GB,
        20 * GB,
        89.6 * GB,
        128 * GB,
        1.0e12,
        "RTX 4090: 24 GB GDDR6X, 1008 GB/s, 165.2 TFLOPS dense FP16 (FP32 acc) (S-G7, S-G8); "
        "20 GB as expert cache [choice]. Host: 2 x DDR5-5600 = 89.6 GB/s [derived], ~1 TFLOPS "
        "CPU [choice]",
    )


HARDWARE_PRESETS: dict[str, Callable[[], Hardware]] = {
    "gpu-ndp-2dimm": lambda: gpu_ndp(2),
    "gpu-ndp-4dimm": lambda: gpu_ndp(4),
    "gpu-ndp-6dimm": lambda: gpu_ndp(6),
    "orin-agx-ndp4": orin_agx_ndp4,
    "dep-h20": dep_h20,
    "dep-h800": dep_h800,
    "dep-a6000-100g": dep_a6000_100g,
    "dep-a6000-200g": dep_a6000_200g,
    "offload-a6000-pcie4": offload_a6000,
    "offload-rtx4090-pcie4": offload_rtx4090,
}

# ---------------------------------------------------------------------------- models


def _gqa(hidden: int, heads: int, kv_heads: int, head_dim: int) -> AttentionSpec:
    """GQA/MHA shape; params = H*nh*hd (q) + 2*H*nkv*hd (k, v) + nh*hd*H (o) (hardware.md 6)."""
    params = hidden * heads * head_dim * 2 + 2 * hidden * kv_heads * head_dim
    return AttentionSpec(
        kind="mha" if heads == kv_heads else "gqa",
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        kv_cache_bytes_per_token_per_layer=2 * kv_heads * head_dim * 2,
        params_per_layer=params,
    )


def _mla(hidden: int, heads: int, q_lora: int | None) -> AttentionSpec:
    """MLA (kv_lora 512, nope 128, rope 64, v 128): params per hardware.md 6, cache 1152 B."""
    q = hidden * q_lora + q_lora * heads * 192 if q_lora else hidden * heads * 192
    kv = hidden * (512 + 64) + 512 * heads * (128 + 128)
    o = heads * 128 * hidden
    return AttentionSpec(
        kind="mla",
        num_heads=heads,
        num_kv_heads=1,
        head_dim=192,
        kv_cache_bytes_per_token_per_layer=(512 + 64) * 2,
        params_per_layer=q + kv + o,
    )


def _model(**kw: object) -> Callable[[], ModelSpec]:
    return lambda: ModelSpec.model_validate(kw)


MODEL_PRESETS: dict[str, Callable[[], ModelSpec]] = {
    "mixtral-8x7b": _model(
        name="mixtral-8x7b", hidden_size=4096, expert_ffn_size=14336, num_routed_experts=8,
        top_k=2, num_moe_layers=32, attention=_gqa(4096, 32, 8, 128),
        source="HF config (S-C1, S-C2): 32 layers, H 4096, I 14336, 8 experts top-2, GQA 32/8",
    ),
    "deepseek-v2-lite": _model(
        name="deepseek-v2-lite", hidden_size=2048, expert_ffn_size=1408, num_routed_experts=64,
        top_k=6, num_moe_layers=26, num_shared_experts=2, shared_expert_ffn_size=1408,
        attention=_mla(2048, 16, None),
        source=(
            "S-C1, S-C4: 26 MoE layers (+1 dense), H 2048, I 1408, 64 routed + 2 shared, top-6, "
            "MLA"
        ),
    ),
    "deepseek-v2": _model(
        name="deepseek-v2", hidden_size=5120, expert_ffn_size=1536, num_routed_experts=160,
        top_k=6, num_moe_layers=59, num_shared_experts=2, shared_expert_ffn_size=1536,
        attention=_mla(5120, 128, 1536),
        source="S-C1: 59 MoE layers (+1 dense), H 5120, I 1536, 160 routed + 2 shared, top-6, MLA",
    ),
    "deepseek-v3": _model(
        name="deepseek-v3", hidden_size=7168, expert_ffn_size=2048, num_routed_experts=256,
        top_k=8, num_moe_layers=58, num_shared_experts=1, shared_expert_ffn_size=2048,
        bytes_per_weight=1.0, attention=_mla(7168, 128, 1536),
        source=(
            "S-C1, S-C5, S-C6: 58 MoE layers (+3 dense), H 7168, I 2048, 256 routed + 1 shared, "
            "top-8, fp8 experts"
        ),
    ),
    "qwen1.5-moe-a2.7b": _model(
        name="qwen1.5-moe-a2.7b", hidden_size=2048, expert_ffn_size=1408, num_routed_experts=60,
        top_k=4, num_moe_layers=24, num_shared_experts=1, shared_expert_ffn_size=5632,
        attention=_gqa(2048, 16, 16, 128),
        source="S-C7: 24 layers, H 2048, I 1408, 60 routed top-4, 1 fused shared (5632), MHA 16",
    ),
    "qwen2-57b-a14b": _model(
        name="qwen2-57b-a14b", hidden_size=3584, expert_ffn_size=2560, num_routed_experts=64,
        top_k=8, num_moe_layers=28, num_shared_experts=1, shared_expert_ffn_size=20480,
        attention=_gqa(3584, 28, 4, 128),
        source="S-C1: 28 layers, H 3584, I 2560, 64 routed top-8, 1 fused shared (20480), GQA 28/4",
    ),
    "qwen3-30b-a3b": _model(
        name="qwen3-30b-a3b", hidden_size=2048, expert_ffn_size=768, num_routed_experts=128,
        top_k=8, num_moe_layers=48, attention=_gqa(2048, 32, 4, 128),
        source="S-C1, S-C5: 48 layers, H 2048, I 768, 128 experts top-8, GQA 32/4",
    ),
    "qwen3-235b-a22b": _model(
        name="qwen3-235b-a22b", hidden_size=4096, expert_ffn_size=1536, num_routed_experts=128,
        top_k=8, num_moe_layers=94, attention=_gqa(4096, 64, 4, 128),
        source="S-C1, S-C5: 94 layers, H 4096, I 1536, 128 experts top-8, GQA 64/4",
    ),
    "olmoe-1b-7b": _model(
        name="olmoe-1b-7b", hidden_size=2048, expert_ffn_size=1024, num_routed_experts=64,
        top_k=8, num_moe_layers=16, attention=_gqa(2048, 16, 16, 128),
        source=(
            "S-C8: 16 layers, H 2048, I 1024 (checkpoint, not the transformers default), 64 "
            "experts top-8"
        ),
    ),
    "flame-moe-290m": _model(
        name="flame-moe-290m", hidden_size=1024, expert_ffn_size=704, num_routed_experts=64,
        top_k=6, num_moe_layers=8, num_shared_experts=2, shared_expert_ffn_size=704,
        attention=_gqa(1024, 16, 16, 64),
        source=(
            "FLAME-MoE-290M-1.3B release script (secondary: a public fork of "
            "CMU-FLAME/MoE-Research, scripts/release/flame-moe-290m): 9 layers (MoE layers "
            "2-9), H 1024, I 704, 16 heads, 64 experts + 2 shared; top-6 as recorded in the "
            "trace (traces/README.md 2)"
        ),
    ),
    "gpt-oss-20b": _model(
        name="gpt-oss-20b", hidden_size=2880, expert_ffn_size=2880, num_routed_experts=32,
        top_k=4, num_moe_layers=24, bytes_per_weight=4.25 / 8, attention=_gqa(2880, 64, 8, 64),
        source=(
            "S-C10, S-C11: 24 layers, H 2880, I 2880, 32 experts top-4; MXFP4 experts = 4 bits + "
            "an 8-bit scale per 32 = 4.25 bits [derived]"
        ),
    ),
    "switch-base-128": _model(
        name="switch-base-128", hidden_size=768, expert_ffn_size=3072, num_routed_experts=128,
        top_k=1, num_moe_layers=12, gated=False, attention=_gqa(768, 12, 12, 64),
        source=(
            "S-C9: 6 encoder + 6 decoder sparse layers, d_model 768, d_ff 3072 [unverified], 128 "
            "experts top-1, ReLU (2 matrices)"
        ),
    ),
}  # fmt: skip


@functools.cache
def hardware_preset(name: str) -> Hardware:
    """The hardware preset of that name (KeyError listing the known names); built once per
    process (a frozen model, so every caller may share it)."""
    try:
        return HARDWARE_PRESETS[name]()
    except KeyError:
        raise KeyError(
            f"unknown hardware preset '{name}'; known: {sorted(HARDWARE_PRESETS)}"
        ) from None


@functools.cache
def model_preset(name: str) -> ModelSpec:
    """The model preset of that name (KeyError listing the known names); built once per
    process."""
    try:
        return MODEL_PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown model preset '{name}'; known: {sorted(MODEL_PRESETS)}") from None
