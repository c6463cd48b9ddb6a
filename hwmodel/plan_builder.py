"""Lowering: from a placement (shards per layer) to the task graph the executor runs.

For one MoE layer and micro-batch, the standard data flow is::

    [attention on home] -> dispatch activations home -> d   (one transfer per remote device)
                        -> shards on d                      (one compute task per shard)
                        -> partial sums d -> home           (one transfer per remote device)
                        -> reduce on home                   (adds every device's partial sum)

A remote device receives each token routed to any of its experts once, and returns one row
per such token: partial sums of several experts of one token are pre-added on the device
(the gate weight is applied there), so the return is as large as the dispatch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from hwmodel import cost_tables
from hwmodel.plan import ComputeTask, Plan, Residency, SolverAccount, TransferTask, WeightSlice
from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload


@dataclass(frozen=True, slots=True)
class Shard:
    """Columns ``[ffn_start, ffn_end)`` of ``expert`` for ``num_tokens`` tokens on a device."""

    device_id: str
    expert: int
    ffn_start: int
    ffn_end: int
    num_tokens: int


def whole_expert_shards(
    tokens_per_expert: Sequence[int], device_of: Sequence[str], ffn_size: int
) -> list[Shard]:
    """One full-width shard per activated expert on ``device_of[expert]``."""
    return [
        Shard(device_of[e], e, 0, ffn_size, n) for e, n in enumerate(tokens_per_expert) if n > 0
    ]


@dataclass(frozen=True, slots=True)
class WeightLoad:
    """Columns [ffn_start, ffn_end) of an expert's weights, loaded from a device to home."""

    src_device_id: str
    expert: int
    ffn_start: int
    ffn_end: int


class TaskIds:
    """How the lowering names its tasks (one place; nothing downstream parses these names:
    it reads the typed ``LoweredLayer`` instead). ``p`` is the layer and micro-batch prefix."""

    @staticmethod
    def prefix(layer: int, micro_batch: int) -> str:
        return f"L{layer}.mb{micro_batch}"

    @staticmethod
    def attention(p: str) -> str:
        return f"{p}.attn"

    @staticmethod
    def load(p: str, expert: int, ffn_start: int) -> str:
        return f"{p}.load.e{expert}.{ffn_start}"

    @staticmethod
    def dispatch(p: str, device_id: str) -> str:
        return f"{p}.to.{device_id}"

    @staticmethod
    def shard(p: str, expert: int, device_id: str, ffn_start: int) -> str:
        return f"{p}.e{expert}.{device_id}.{ffn_start}"

    @staticmethod
    def gather(p: str, device_id: str) -> str:
        return f"{p}.from.{device_id}"

    @staticmethod
    def reduce(p: str) -> str:
        return f"{p}.reduce"


IDS = TaskIds()


@dataclass(frozen=True)
class LoweredLayer:
    """One layer and micro-batch lowered, by stage, each stage in emission order.

    ``tasks()`` is the emission order, stage by stage: [attention], weight loads (in the
    ``loads`` order given), dispatches (device order), shards (device order; on the home device
    shards whose weights are loaded come last, in load order), gathers (partial-sum returns,
    device order), [reduce]. Every task comes after the tasks it waits on, and every resource's
    queue follows the data flow (tests check this contract). ``waits``: the ids the next layer
    waits on.
    """

    attention: ComputeTask | None
    loads: tuple[TransferTask, ...]
    dispatches: tuple[TransferTask, ...]
    shards: tuple[ComputeTask, ...]
    gathers: tuple[TransferTask, ...]
    reduce: ComputeTask | None
    waits: tuple[str, ...]

    def tasks(self) -> list[ComputeTask | TransferTask]:
        """Every task, in emission order."""
        head: list[ComputeTask | TransferTask] = [] if self.attention is None else [self.attention]
        tail: list[ComputeTask | TransferTask] = [] if self.reduce is None else [self.reduce]
        return [*head, *self.loads, *self.dispatches, *self.shards, *self.gathers, *tail]

    def loads_of(self, expert: int) -> list[TransferTask]:
        """The weight loads of ``expert`` (one per load piece)."""
        return [t for t in self.loads if t.weights is not None and t.weights.expert == expert]

    def shards_of(self, expert: int) -> list[ComputeTask]:
        """The shards of ``expert`` (on every device)."""
        return [t for t in self.shards if t.expert == expert]


def lower_layer(
    hardware: Hardware,
    model: ModelSpec,
    layer: int,
    shards: Sequence[Shard],
    num_tokens: int,
    after: Sequence[str] = (),
    micro_batch: int = 0,
    attention: bool = False,
    loads: Sequence[WeightLoad] = (),
) -> LoweredLayer:
    """The tasks of one layer and micro-batch, by stage (``LoweredLayer``). A home-device
    shard of a loaded expert waits for its load.

    Raises:
        ValueError: when a remote shard's device (or a load's source) has no link to or from
            the home device.
    """
    home = hardware.home_device_id
    p = IDS.prefix(layer, micro_batch)
    tab = cost_tables.tables(hardware, model)  # links looked up once per (hardware, pair)

    def link(src: str, dst: str) -> str:
        got = tab.link_between(src, dst)
        if got is None:
            raise ValueError(f"no link from '{src}' to '{dst}'")
        return got.id

    start_after = tuple(after)
    attn: ComputeTask | None = None
    if attention:
        attn = ComputeTask(
            id=IDS.attention(p), device_id=home, op="attention", layer=layer,
            num_tokens=num_tokens, after=start_after, micro_batch=micro_batch,
        )  # fmt: skip
        start_after = (attn.id,)
    load_id: dict[int, list[str]] = {}
    load_tasks: list[TransferTask] = []
    for ld in loads:
        tid = IDS.load(p, ld.expert, ld.ffn_start)
        load_id.setdefault(ld.expert, []).append(tid)
        load_tasks.append(
            TransferTask(
                id=tid, link_id=link(ld.src_device_id, home),
                src_device_id=ld.src_device_id, dst_device_id=home, payload="weights",
                layer=layer, purpose="demand", after=start_after, micro_batch=micro_batch,
                weights=WeightSlice(
                    layer=layer, expert=ld.expert, ffn_start=ld.ffn_start, ffn_end=ld.ffn_end
                ),
            )
        )  # fmt: skip
    by_device: dict[str, list[Shard]] = {}  # each device's shards, in the given order
    for s in shards:
        by_device.setdefault(s.device_id, []).append(s)
    devices = [d.id for d in hardware.devices if d.id in by_device]
    remote = [d for d in devices if d != home]
    rows: dict[str, int] = {}
    dispatches: list[TransferTask] = []
    for dev in remote:
        rows[dev] = min(num_tokens, sum({s.expert: s.num_tokens for s in by_device[dev]}.values()))
        dispatches.append(
            TransferTask(
                id=IDS.dispatch(p, dev), link_id=link(home, dev), src_device_id=home,
                dst_device_id=dev, payload="activations", layer=layer, num_tokens=rows[dev],
                after=start_after, micro_batch=micro_batch,
            )
        )  # fmt: skip
    to = {t.dst_device_id: t.id for t in dispatches}
    load_rank = {e: i for i, e in enumerate(load_id)}
    shard_ids: dict[str, list[str]] = {d: [] for d in devices}
    shard_tasks: list[ComputeTask] = []
    for dev in devices:
        mine = list(by_device[dev])
        if dev == home:
            mine.sort(key=lambda s: (s.expert in load_rank, load_rank.get(s.expert, 0)))
        for s in mine:
            sid = IDS.shard(p, s.expert, dev, s.ffn_start)
            shard_ids[dev].append(sid)
            if dev != home:
                deps: tuple[str, ...] = (to[dev],)
            elif s.expert in load_id:
                deps = (*start_after, *load_id[s.expert])
            else:
                deps = start_after
            shard_tasks.append(
                ComputeTask(
                    id=sid, device_id=dev, op="expert", layer=layer, expert=s.expert,
                    ffn_start=s.ffn_start, ffn_end=s.ffn_end, num_tokens=s.num_tokens,
                    after=deps, micro_batch=micro_batch,
                )
            )  # fmt: skip
    gathers = [
        TransferTask(
            id=IDS.gather(p, dev), link_id=link(dev, home), src_device_id=dev,
            dst_device_id=home, payload="partial_sums", layer=layer, num_tokens=rows[dev],
            after=tuple(shard_ids[dev]), micro_batch=micro_batch,
        )
        for dev in remote
    ]  # fmt: skip
    reduce: ComputeTask | None = None
    if devices:
        reduce = ComputeTask(
            id=IDS.reduce(p), device_id=home, op="reduce", layer=layer, num_tokens=num_tokens,
            num_partials=len(devices), micro_batch=micro_batch,
            after=(*(g.id for g in gathers), *shard_ids.get(home, [])),
        )  # fmt: skip
    return LoweredLayer(
        attn, tuple(load_tasks), tuple(dispatches), tuple(shard_tasks), tuple(gathers), reduce,
        (reduce.id,) if reduce is not None else start_after,
    )  # fmt: skip


def layer_tasks(
    hardware: Hardware,
    model: ModelSpec,
    layer: int,
    shards: Sequence[Shard],
    num_tokens: int,
    after: Sequence[str] = (),
    micro_batch: int = 0,
    attention: bool = False,
    loads: Sequence[WeightLoad] = (),
) -> tuple[list[ComputeTask | TransferTask], list[str]]:
    """Tasks of one layer and micro-batch in emission order (``LoweredLayer.tasks``), and the
    ids the next layer waits on."""
    lowered = lower_layer(
        hardware, model, layer, shards, num_tokens, after, micro_batch, attention, loads
    )
    return lowered.tasks(), list(lowered.waits)


def chain_layers(
    hardware: Hardware,
    model: ModelSpec,
    workload: Workload,
    shards_per_layer: Sequence[Sequence[Shard]],
    attention: bool = False,
    account: SolverAccount | None = None,
) -> Plan:
    """A plan that runs the workload's layers one after another with the given shards.

    Args:
        shards_per_layer: shards of each workload row, ``[len(workload.layer_ids)][...]``.
    """
    tasks: list[ComputeTask | TransferTask] = []
    after: list[str] = []
    for layer, shards in zip(workload.layer_ids, shards_per_layer, strict=True):
        got, after = layer_tasks(
            hardware, model, layer, shards, workload.num_tokens, after, attention=attention
        )
        tasks.extend(got)
    return Plan(tasks=tuple(tasks), account=account or SolverAccount())


Layout = Literal["round_robin", "striped"]


def effective_granules(ffn_size: int, requested: int) -> int:
    """The granule count used for a requested one: the largest divisor of ``ffn_size`` not
    above it (granules are equal column slices)."""
    return max(g for g in range(1, max(1, requested) + 1) if ffn_size % g == 0)


def stripe_granules(ffn_size: int, num_devices: int, least: int = 4, most: int = 16) -> int:
    """The granule count for striping an FFN of ``ffn_size`` columns over ``num_devices``:
    a divisor G of ``ffn_size`` (so granules are equal), at most ``most * num_devices``, whose
    granule-aligned stripes are most even (the largest stripe over the mean, ``ceil(G/n) /
    (G/n)``); on ties the smallest G of at least ``least`` (finer granules give the placement
    room to share an expert with the GPU). A 1,408-wide expert: 4 for 2 or 4 DIMMs, 88 for 6."""
    candidates = [g for g in range(1, most * num_devices + 1) if ffn_size % g == 0]
    return min(candidates, key=lambda g: (-(-g // num_devices) * num_devices / g, g < least, g))


def layout_residency(
    hardware: Hardware,
    model: ModelSpec,
    layout: Layout,
    cached_experts: Sequence[int] = (),
    kind: str = "ndp",
    num_granules: int | None = None,
) -> Residency:
    """Where expert weights live at cycle 0, by a named layout.

    * ``round_robin``: every layer's expert e whole in the memory of the (e mod n)-th device
      of ``kind`` (the MoNDE layout: one expert, one NDP unit).
    * ``striped``: device i of ``kind`` holds column slice i of every expert (the layout
      tensor parallelism wants: each NDP unit reads only its slice). The slices are cut on the
      grid of ``num_granules`` granules (default: ``stripe_granules``), as evenly as the grid
      allows, so a placement solved with the same granule count can run them.

    ``cached_experts`` are also held whole, for every layer, by the home device's memory (an
    expert cache filled ahead of time).
    """
    devices = [d for d in hardware.devices if d.kind == kind]
    if not devices:
        raise ValueError(f"layout: no device of kind '{kind}'")
    by_memory: dict[str, list[WeightSlice]] = {d.memory_id: [] for d in devices}
    if layout == "round_robin":
        for e in range(model.num_routed_experts):
            by_memory[devices[e % len(devices)].memory_id].append(WeightSlice(expert=e))
    else:
        n, width = len(devices), model.expert_ffn_size
        g = effective_granules(width, num_granules or stripe_granules(width, n))
        cuts = [round(i * g / n) * width // g for i in range(n + 1)]
        for i, d in enumerate(devices):
            by_memory[d.memory_id].append(WeightSlice(ffn_start=cuts[i], ffn_end=cuts[i + 1]))
    if cached_experts:
        home_mem = hardware.device(hardware.home_device_id).memory_id
        bad = sorted({e for e in cached_experts if not 0 <= e < model.num_routed_experts})
        if bad:
            raise ValueError(
                f"cached_experts: {bad[:5]} are not experts of {model.name} "
                f"(ids in [0, {model.num_routed_experts}))"
            )
        check_cached_fit(hardware, model, len(set(cached_experts)))
        by_memory.setdefault(home_mem, []).extend(WeightSlice(expert=e) for e in cached_experts)
    return Residency(by_memory={k: tuple(v) for k, v in by_memory.items()})


def check_cached_fit(hardware: Hardware, model: ModelSpec, num_cached: int) -> None:
    """``num_cached`` experts held whole for every MoE layer must fit the home device's memory.

    Raises:
        ValueError: ``cached_experts: ...`` with the bytes they need and the memory's size.
    """
    home_mem = hardware.device(hardware.home_device_id).memory_id
    have = next(m.capacity_bytes for m in hardware.memories if m.id == home_mem)
    need = num_cached * model.num_moe_layers * model.expert_bytes()
    if need > have:
        raise ValueError(
            f"cached_experts: {num_cached} experts x {model.num_moe_layers} layers need "
            f"{need / 2**30:.1f} GiB; '{home_mem}' holds {have / 2**30:.1f} GiB"
        )


def round_robin_residency(hardware: Hardware, model: ModelSpec, kind: str = "ndp") -> Residency:
    """Every layer's expert e held whole by the memory of device ``e % n`` of that kind."""
    return layout_residency(hardware, model, "round_robin", kind=kind)


def round_robin_devices(hardware: Hardware, model: ModelSpec, kind: str = "ndp") -> list[str]:
    """``device_of[e]``: the device of that kind whose memory holds expert e (round robin)."""
    devices = [d.id for d in hardware.devices if d.kind == kind]
    return [devices[e % len(devices)] for e in range(model.num_routed_experts)]
