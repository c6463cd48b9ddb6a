"""Hardware and model descriptions: the static inputs of every scheduling problem.

Glossary:
    device: something that computes (a GPU, a near-data-processing (NDP) unit, a CPU).
    memory: something that holds expert weights, with a capacity; every device reads its
        weights from exactly one memory (``Device.memory_id``).
    link: something that moves bytes between devices (PCIe, NVLink, an RDMA NIC, a DDR bus);
        a link serves ``num_lanes`` transfers at once, each at ``bandwidth_bytes_per_s``,
        and later users queue.
    logical expert: one routed expert of the model (``0 <= expert < num_routed_experts``).
    FFN width: the expert's intermediate size; tensor-parallel shards split it into slices.

All models here are frozen pydantic models, validated once at the edge; hot loops in the
executor work on plain slotted copies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Ranges of the physical figures, documented and checked once when a request is parsed. They
# are wide (a bandwidth of 1 B/s and an exaflop device are both accepted) but keep every
# duration the cost model computes finite and every cycle count inside 64-bit integers.
MIN_RATE = 1.0  # B/s or FLOP/s
MAX_BANDWIDTH_BYTES_PER_S = 1e18  # tests model "free" memory with 1e18
MAX_FLOPS_PER_S = 1e21
MAX_BYTES = 2**60  # memory capacities
MAX_FIXED_COST_S = 1.0  # launch, latency, tile overhead per task
MIN_EFFICIENCY = 1e-3
MIN_CLOCK_HZ, MAX_CLOCK_HZ = 1e3, 1e12
MAX_COUNT = 2**40  # tokens, counts, parameters

DeviceKind = Literal["gpu", "ndp", "cpu"]
AttentionKind = Literal["mha", "gqa", "mla"]


class Frozen(BaseModel):
    """Base for every domain model: immutable, no unknown fields, NaN/inf refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Device(Frozen):
    """A compute device and its cost-model figures."""

    id: str = Field(min_length=1, max_length=64, description="Unique device id, e.g. 'gpu0'.")
    kind: DeviceKind = Field(description="gpu, ndp (near-data-processing unit) or cpu.")
    memory_id: str = Field(description="Id of the memory this device reads weights from.")
    peak_flops_per_s: float = Field(
        ge=MIN_RATE, le=MAX_FLOPS_PER_S, description="Dense peak at the weight precision."
    )
    mem_bandwidth_bytes_per_s: float = Field(
        ge=MIN_RATE,
        le=MAX_BANDWIDTH_BYTES_PER_S,
        description="Bandwidth from the device to its own memory.",
    )
    compute_efficiency: float = Field(
        default=0.8, ge=MIN_EFFICIENCY, le=1, description="Achievable fraction of peak_flops_per_s."
    )
    memory_efficiency: float = Field(
        default=0.85,
        ge=MIN_EFFICIENCY,
        le=1,
        description="Achievable fraction of mem_bandwidth_bytes_per_s.",
    )
    launch_s: float = Field(
        default=5e-6,
        ge=0,
        le=MAX_FIXED_COST_S,
        description="Fixed cost per compute task (kernel launch, command).",
    )
    sram_bytes: int | None = Field(
        default=None,
        gt=0,
        le=MAX_BYTES,
        description=(
            "On-unit SRAM for the NDP tile pipeline. When set, weights stream through it in "
            "double-buffered tiles of sram_bytes/2; when null the roofline model is used."
        ),
    )
    tile_overhead_s: float = Field(
        default=0.0,
        ge=0,
        le=MAX_FIXED_COST_S,
        description="Fixed cost of issuing one weight tile (NDP only; row activation, command).",
    )
    source: str = Field(default="", description="Where the figures come from.")


class Memory(Frozen):
    """A memory that can hold expert weights."""

    id: str = Field(min_length=1, max_length=64, description="Unique memory id.")
    capacity_bytes: int = Field(
        gt=0, le=MAX_BYTES, description="Bytes available for expert weights."
    )
    source: str = Field(default="", description="Where the figure comes from.")


class Link(Frozen):
    """A directed interconnect: any source device can send to any destination device over it."""

    id: str = Field(min_length=1, max_length=64, description="Unique link id.")
    src_device_ids: tuple[str, ...] = Field(min_length=1, description="Devices that can send.")
    dst_device_ids: tuple[str, ...] = Field(min_length=1, description="Devices that can receive.")
    bandwidth_bytes_per_s: float = Field(
        ge=MIN_RATE,
        le=MAX_BANDWIDTH_BYTES_PER_S,
        description="Bandwidth of one lane, one direction.",
    )
    latency_s: float = Field(
        default=0.0, ge=0, le=MAX_FIXED_COST_S, description="Fixed cost per transfer."
    )
    num_lanes: int = Field(
        default=1, ge=1, le=64, description="Transfers served at once; later ones queue."
    )
    source: str = Field(default="", description="Where the figures come from.")


class Hardware(Frozen):
    """A hardware setting: devices, memories and links, plus the executor's reference clock."""

    name: str = Field(min_length=1, max_length=128, description="Name of the setting.")
    description: str = Field(default="", description="What this setting is.")
    clock_hz: float = Field(
        default=1e9,
        ge=MIN_CLOCK_HZ,
        le=MAX_CLOCK_HZ,
        description="Reference clock of the executor (1e9: 1 cycle = 1 ns).",
    )
    devices: tuple[Device, ...] = Field(min_length=1, description="Compute devices.")
    memories: tuple[Memory, ...] = Field(min_length=1, description="Weight memories.")
    links: tuple[Link, ...] = Field(default=(), description="Interconnects.")
    groups: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description=(
            "Named device groups, e.g. 'attention' and 'experts' for disaggregated expert "
            "parallelism (attention + shared experts on one group, routed experts on the other)."
        ),
    )
    home_device_id: str = Field(
        description=(
            "Device where token activations live between layers (the GPU that runs attention); "
            "experts computed elsewhere need their activations dispatched from it and their "
            "results returned to it."
        )
    )

    @model_validator(mode="after")
    def _ids_resolve(self) -> Hardware:
        device_ids = [d.id for d in self.devices]
        memory_ids = [m.id for m in self.memories]
        link_ids = [lk.id for lk in self.links]
        # One namespace: Plan.order keys name devices, links and memories alike.
        all_ids = device_ids + memory_ids + link_ids
        dupes = sorted({i for i in all_ids if all_ids.count(i) > 1})
        if dupes:
            raise ValueError(f"devices/memories/links: ids must be unique, repeated {dupes}")
        known_memories = set(memory_ids)
        for d in self.devices:
            if d.memory_id not in known_memories:
                raise ValueError(f"devices[{d.id}].memory_id: unknown memory '{d.memory_id}'")
        known_devices = set(device_ids)
        for lk in self.links:
            for end in (*lk.src_device_ids, *lk.dst_device_ids):
                if end not in known_devices:
                    raise ValueError(f"links[{lk.id}]: unknown device '{end}'")
        for name, members in self.groups.items():
            unknown = [m for m in members if m not in known_devices]
            if unknown or not members:
                raise ValueError(f"groups[{name}]: unknown or no devices {unknown}")
        if self.home_device_id not in known_devices:
            raise ValueError(f"home_device_id: unknown device '{self.home_device_id}'")
        return self

    def device(self, device_id: str) -> Device:
        """The device with this id (KeyError when unknown)."""
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(device_id)

    def memory_of(self, device_id: str) -> Memory:
        """The memory the device reads its weights from."""
        mem_id = self.device(device_id).memory_id
        return next(m for m in self.memories if m.id == mem_id)

    def link_between(self, src_device_id: str, dst_device_id: str) -> Link | None:
        """The first link that can carry bytes from src to dst, or None."""
        for lk in self.links:
            if src_device_id in lk.src_device_ids and dst_device_id in lk.dst_device_ids:
                return lk
        return None

    def devices_of_kind(self, kind: DeviceKind) -> list[Device]:
        """Devices of one kind, in declaration order."""
        return [d for d in self.devices if d.kind == kind]


class AttentionSpec(Frozen):
    """Attention shape, for the attention-cost term of the DEP pipeline."""

    kind: AttentionKind = Field(description="mha, gqa or mla.")
    num_heads: int = Field(gt=0, le=4096, description="Query heads.")
    num_kv_heads: int = Field(gt=0, le=4096, description="Key/value heads (mla: 1, the latent).")
    head_dim: int = Field(
        gt=0, le=65536, description="Per-head dimension of q/k (mla: nope + rope)."
    )
    kv_cache_bytes_per_token_per_layer: int = Field(
        gt=0,
        le=MAX_COUNT,
        description="KV-cache bytes one token adds per layer at the cache dtype.",
    )
    params_per_layer: int = Field(
        gt=0, le=MAX_COUNT, description="Attention weights per layer (parameters)."
    )


class ModelSpec(Frozen):
    """An MoE model's shape, as far as scheduling needs it."""

    name: str = Field(min_length=1, max_length=128, description="Model name.")
    hidden_size: int = Field(gt=0, le=65536, description="Model width H.")
    expert_ffn_size: int = Field(gt=0, le=262144, description="Routed expert's FFN width I.")
    num_routed_experts: int = Field(gt=0, le=4096, description="Routed experts per MoE layer.")
    top_k: int = Field(gt=0, le=4096, description="Routed experts per token.")
    num_moe_layers: int = Field(gt=0, le=1024, description="Layers with routed experts.")
    num_shared_experts: int = Field(
        default=0, ge=0, le=256, description="Shared experts per MoE layer."
    )
    shared_expert_ffn_size: int = Field(
        default=0, ge=0, le=262144, description="FFN width of one shared expert (0 when none)."
    )
    gated: bool = Field(
        default=True, description="True: 3 matrices (gate, up, down, SwiGLU); False: 2 (up, down)."
    )
    bytes_per_weight: float = Field(
        default=2.0, ge=0.0625, le=16, description="Expert weight bytes (bf16: 2)."
    )
    bytes_per_activation: float = Field(
        default=2.0,
        ge=0.0625,
        le=16,
        description="Bytes of one activation element moved between devices.",
    )
    attention: AttentionSpec | None = Field(default=None, description="Attention shape.")
    source: str = Field(default="", description="Where the figures come from.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.top_k > self.num_routed_experts:
            raise ValueError(
                f"top_k: {self.top_k} exceeds num_routed_experts {self.num_routed_experts}"
            )
        if (self.num_shared_experts > 0) != (self.shared_expert_ffn_size > 0):
            raise ValueError(
                "shared_expert_ffn_size: must be > 0 exactly when num_shared_experts > 0"
            )
        return self

    @property
    def num_matrices(self) -> int:
        """Weight matrices per expert: 3 when gated, else 2."""
        return 3 if self.gated else 2

    def expert_bytes(self, ffn_width: int | None = None) -> float:
        """Weight bytes of one expert, or of a slice ``ffn_width`` columns wide."""
        width = self.expert_ffn_size if ffn_width is None else ffn_width
        return self.num_matrices * self.hidden_size * width * self.bytes_per_weight

    def activation_bytes(self, num_tokens: int) -> float:
        """Bytes of ``num_tokens`` hidden-state rows (``[num_tokens, hidden_size]``)."""
        return num_tokens * self.hidden_size * self.bytes_per_activation
