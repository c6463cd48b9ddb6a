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


def layer_tasks(
    hardware: Hardware,
    model: ModelSpec,
    layer: int,
    shards: Sequence[Shard],
    num_tokens: int,
    after: Sequence[str] = (),
    micro_batch: int = 0,
    attention: bool = False,
) -> tuple[list[ComputeTask | TransferTask], list[str]]:
    """Tasks of one layer and micro-batch; returns them and the ids the next layer waits on.

    Raises:
        ValueError: when a remote shard's device has no link from/to the home device.
    """
    home = hardware.home_device_id
    p = f"L{layer}.mb{micro_batch}"
    tasks: list[ComputeTask | TransferTask] = []
    start_after = list(after)
    if attention:
        tasks.append(
            ComputeTask(
                id=f"{p}.attn", device_id=home, op="attention", layer=layer,
                num_tokens=num_tokens, after=tuple(start_after), micro_batch=micro_batch,
            )
        )  # fmt: skip
        start_after = [f"{p}.attn"]
    devices = [d.id for d in hardware.devices if any(s.device_id == d.id for s in shards)]
    returns: list[str] = []
    for dev in devices:
        mine = [s for s in shards if s.device_id == dev]
        rows = min(num_tokens, sum({s.expert: s.num_tokens for s in mine}.values()))
        shard_after = start_after
        down, up = hardware.link_between(home, dev), hardware.link_between(dev, home)
        if dev != home:
            if down is None or up is None:
                raise ValueError(f"no link between home '{home}' and '{dev}'")
            tasks.append(
                TransferTask(
                    id=f"{p}.to.{dev}", link_id=down.id, src_device_id=home, dst_device_id=dev,
                    payload="activations", layer=layer, num_tokens=rows,
                    after=tuple(start_after), micro_batch=micro_batch,
                )
            )  # fmt: skip
            shard_after = [f"{p}.to.{dev}"]
        shard_ids = []
        for s in mine:
            sid = f"{p}.e{s.expert}.{dev}.{s.ffn_start}"
            shard_ids.append(sid)
            tasks.append(
                ComputeTask(
                    id=sid, device_id=dev, op="expert", layer=layer, expert=s.expert,
                    ffn_start=s.ffn_start, ffn_end=s.ffn_end, num_tokens=s.num_tokens,
                    after=tuple(shard_after), micro_batch=micro_batch,
                )
            )  # fmt: skip
        if dev == home or up is None:
            returns.extend(shard_ids)
            continue
        tasks.append(
            TransferTask(
                id=f"{p}.from.{dev}", link_id=up.id, src_device_id=dev, dst_device_id=home,
                payload="partial_sums", layer=layer, num_tokens=rows,
                after=tuple(shard_ids), micro_batch=micro_batch,
            )
        )  # fmt: skip
        returns.append(f"{p}.from.{dev}")
    if not devices:
        return tasks, start_after
    tasks.append(
        ComputeTask(
            id=f"{p}.reduce", device_id=home, op="reduce", layer=layer, num_tokens=num_tokens,
            num_partials=len(devices), after=tuple(returns), micro_batch=micro_batch,
        )
    )  # fmt: skip
    return tasks, [f"{p}.reduce"]


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


def round_robin_residency(hardware: Hardware, model: ModelSpec, kind: str = "ndp") -> Residency:
    """Every layer's expert e held whole by the memory of device ``e % n`` of that kind."""
    devices = [d for d in hardware.devices if d.kind == kind]
    by_memory: dict[str, list[WeightSlice]] = {d.memory_id: [] for d in devices}
    for e in range(model.num_routed_experts):
        by_memory[devices[e % len(devices)].memory_id].append(WeightSlice(expert=e))
    return Residency(by_memory={k: tuple(v) for k, v in by_memory.items()})


def round_robin_devices(hardware: Hardware, model: ModelSpec, kind: str = "ndp") -> list[str]:
    """``device_of[e]``: the device of that kind whose memory holds expert e (round robin)."""
    devices = [d.id for d in hardware.devices if d.kind == kind]
    return [devices[e % len(devices)] for e in range(model.num_routed_experts)]
