"""Cost model: how long one task takes on one device or link.

Every duration the executor uses comes from here, and solvers call the same functions, so a
solver's predicted makespan and the executor's simulated one are computed from one model.

    compute (roofline):  launch + max(flops / (peak * eff_c), bytes / (bw * eff_m))
    compute (NDP tiles): launch + load_1 + sum_{i>=2} max(load_i, compute_{i-1}) + compute_n,
                         weights streamed in double-buffered tiles of sram_bytes / 2,
                         load_i = tile_overhead + tile_bytes_i / (bw * eff_m)
    transfer:            latency + bytes / bandwidth

Seconds are turned into integer cycles of the reference clock once per task, rounding up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hwmodel.plan import ComputeTask, Task, TransferTask, WeightSlice
from hwmodel.spec import Device, Hardware, Link, ModelSpec

MAX_TASK_CYCLES = 2**44  # one task; 2**18 tasks of it still sum below 2**62


class CycleOverflowError(ValueError):
    """A task's modelled duration is not a finite cycle count below ``MAX_TASK_CYCLES``: the
    hardware figures (bandwidths, rates, clock) and the work are too far apart."""


def to_cycles(seconds: float, clock_hz: float) -> int:
    """Seconds -> whole cycles, rounding up (a task never takes less than its model says).

    The product is rounded to 1e-6 cycle first so that float noise (3.0000000000004) does not
    add a cycle. Checked: a product that is not finite or exceeds ``MAX_TASK_CYCLES`` raises
    ``CycleOverflowError``.
    """
    cycles = seconds * clock_hz
    if not 0 <= cycles <= MAX_TASK_CYCLES:  # NaN and inf fail here too
        raise CycleOverflowError(
            f"a task of {seconds:.3g} s at {clock_hz:.3g} Hz is {cycles:.3g} cycles, outside "
            f"[0, 2**44]: check the hardware's bandwidths, rates and clock_hz"
        )
    return math.ceil(round(cycles, 6))


def expert_flops(model: ModelSpec, num_tokens: int, ffn_width: int) -> float:
    """FLOPs of an expert slice ``ffn_width`` columns wide on ``num_tokens`` tokens.

    Gated experts do 3 GEMMs (gate, up, down), each ``2 * tokens * H * width`` FLOPs.
    """
    return 2.0 * model.num_matrices * model.hidden_size * ffn_width * num_tokens


def expert_bytes_read(model: ModelSpec, num_tokens: int, ffn_width: int) -> float:
    """Bytes an expert slice reads and writes: its weights plus input and output rows."""
    return model.expert_bytes(ffn_width) + 2 * model.activation_bytes(num_tokens)


def roofline_s(device: Device, flops: float, bytes_moved: float) -> float:
    """Launch + the slower of compute and memory time, at the device's efficiencies."""
    compute_s = flops / (device.peak_flops_per_s * device.compute_efficiency)
    memory_s = bytes_moved / (device.mem_bandwidth_bytes_per_s * device.memory_efficiency)
    return device.launch_s + max(compute_s, memory_s)


def tile_pipeline_s(device: Device, flops: float, weight_bytes: float) -> float:
    """Weights streamed through SRAM in double-buffered tiles; compute overlaps the next load.

    Args:
        device: an NDP unit with ``sram_bytes`` set.
        flops: total FLOPs, spread over tiles in proportion to their bytes.
        weight_bytes: bytes streamed from the unit's DRAM.

    Returns:
        launch + load_1 + sum_{i=2..n} max(load_i, compute_{i-1}) + compute_n, in seconds.
    """
    assert device.sram_bytes is not None
    if weight_bytes <= 0:
        return device.launch_s + flops / (device.peak_flops_per_s * device.compute_efficiency)
    tile_bytes = device.sram_bytes / 2
    num_full = int(weight_bytes // tile_bytes)
    last_bytes = weight_bytes - num_full * tile_bytes
    bw = device.mem_bandwidth_bytes_per_s * device.memory_efficiency
    seconds_per_flop = 1.0 / (device.peak_flops_per_s * device.compute_efficiency)
    flops_per_byte = flops / weight_bytes

    def load(b: float) -> float:
        return device.tile_overhead_s + b / bw

    def compute(b: float) -> float:
        return b * flops_per_byte * seconds_per_flop

    # Full tiles are identical, so the steady state is (n_full - 1) equal steps.
    if last_bytes <= 1e-9:
        total = load(tile_bytes) + (num_full - 1) * max(load(tile_bytes), compute(tile_bytes))
        total += compute(tile_bytes)
    elif num_full == 0:
        total = load(last_bytes) + compute(last_bytes)
    else:
        total = load(tile_bytes) + (num_full - 1) * max(load(tile_bytes), compute(tile_bytes))
        total += max(load(last_bytes), compute(tile_bytes)) + compute(last_bytes)
    return device.launch_s + total


def expert_shard_s(device: Device, model: ModelSpec, num_tokens: int, ffn_width: int) -> float:
    """Seconds for one expert shard on a device (tile pipeline on NDP units with SRAM)."""
    flops = expert_flops(model, num_tokens, ffn_width)
    if device.sram_bytes is not None:
        return tile_pipeline_s(device, flops, model.expert_bytes(ffn_width))
    return roofline_s(device, flops, expert_bytes_read(model, num_tokens, ffn_width))


def shared_expert_s(
    device: Device, model: ModelSpec, num_tokens: int, ffn_width: int | None = None
) -> float:
    """Seconds for the shared experts of a layer on ``num_tokens`` tokens: all of them, or a
    column slice ``ffn_width`` wide of their concatenated FFN width (a piece of a split shared
    expert reads only its slice of the weights)."""
    total = model.num_shared_experts * model.shared_expert_ffn_size
    width = total if ffn_width is None else min(ffn_width, total)
    if width <= 0:
        return 0.0
    flops = expert_flops(model, num_tokens, width)
    return roofline_s(device, flops, expert_bytes_read(model, num_tokens, width))


def attention_s(
    device: Device,
    model: ModelSpec,
    num_tokens: int,
    context_tokens: int,
    num_sequences: int = 1,
    num_partials: int = 1,
) -> float:
    """Seconds for one layer's attention on ``num_tokens`` new tokens of ``num_sequences``
    sequences, each over its own KV cache of ``context_tokens`` tokens.

    ``num_partials`` > 1: the kernel's input row is the sum of the layer before's
    ``num_partials`` partial sums, added in its prologue (a fused residual add, in place of a
    separate reduce kernel): the add's FLOPs and bytes (``reduce_s``'s) join the kernel's
    roofline, and only the reduce's own launch goes. 1: the input is one row.

    With t = num_tokens / num_sequences new tokens per sequence (a prefill chunk: one sequence,
    t = num_tokens; a decode micro-batch: num_tokens sequences, t = 1), P attention parameters
    of w bytes, kv cache bytes per token and layer, h heads of dimension d:

        FLOPs: 2 * P * num_tokens + 4 * num_tokens * (C + t) * h * d
        bytes: P * w + num_sequences * (C + t) * kv + 2 * num_tokens * hidden * act_bytes

    so a decode micro-batch of n sequences reads n * (C + 1) * kv bytes of cache, and splitting
    it in two adds one read of the weights and a launch, never less work.
    A model without an attention spec costs the launch (and the fused add) only.
    """
    fused = num_partials > 1
    add_flops, add_bytes = _add_work(model, num_tokens, num_partials) if fused else (0.0, 0.0)
    att = model.attention
    if att is None:
        return roofline_s(device, add_flops, add_bytes)
    per_seq = num_tokens // max(num_sequences, 1)
    ctx = context_tokens + per_seq
    flops = 2.0 * att.params_per_layer * num_tokens
    flops += 4.0 * num_tokens * ctx * att.num_heads * att.head_dim
    bytes_moved = att.params_per_layer * model.bytes_per_weight
    bytes_moved += num_sequences * ctx * att.kv_cache_bytes_per_token_per_layer
    bytes_moved += 2 * model.activation_bytes(num_tokens)
    return roofline_s(device, flops + add_flops, bytes_moved + add_bytes)


def kv_cache_bytes(model: ModelSpec, num_sequences: int, context_tokens: int) -> float:
    """KV cache of ``num_sequences`` decode sequences at ``context_tokens`` (+1 being written)
    over every MoE layer of the model: n * (C + 1) * kv * layers bytes (a model's few dense
    layers are not in ``ModelSpec`` and are left out: DeepSeek-V2's 1 of 60, under 2%)."""
    att = model.attention
    if att is None:
        return 0.0
    per_layer = num_sequences * (context_tokens + 1) * att.kv_cache_bytes_per_token_per_layer
    return float(per_layer * model.num_moe_layers)


def grouped_expert_s(
    device: Device,
    model: ModelSpec,
    rows: Sequence[int],
    ffn_width: int | None = None,
    widths: Sequence[int] | None = None,
) -> float:
    """Seconds for one grouped GEMM over experts with ``rows[e]`` rows each, ``ffn_width``
    columns of each (default: full width) or ``widths[e]`` of expert e: one launch; the
    weights of every expert with rows read once (an expert with none is skipped). FLOPs and
    bytes summed into one roofline, or, on an NDP unit with SRAM, into one tile pipeline (the
    experts' weights stream through the double buffer back to back, as one shard's would)."""
    width = model.expert_ffn_size if ffn_width is None else ffn_width
    each = list(widths) if widths is not None else [width] * len(rows)
    num_tokens = int(sum(rows))
    flops = sum(expert_flops(model, r, w) for r, w in zip(rows, each, strict=True))
    weight_bytes = sum(model.expert_bytes(w) for r, w in zip(rows, each, strict=True) if r > 0)
    if device.sram_bytes is not None:
        return tile_pipeline_s(device, flops, weight_bytes)
    return roofline_s(device, flops, weight_bytes + 2 * model.activation_bytes(num_tokens))


def _add_work(model: ModelSpec, num_tokens: int, num_partials: int) -> tuple[float, float]:
    """(FLOPs, bytes) of adding ``num_partials`` partial sums of ``[num_tokens, hidden]`` into
    one: every partial read, the sum written."""
    flops = float(max(num_partials - 1, 0) * num_tokens * model.hidden_size)
    return flops, (num_partials + 1) * model.activation_bytes(num_tokens)


def reduce_s(device: Device, model: ModelSpec, num_tokens: int, num_partials: int) -> float:
    """Seconds to add ``num_partials`` partial sums of ``[num_tokens, hidden]`` into one."""
    return roofline_s(device, *_add_work(model, num_tokens, num_partials))


def transfer_s(link: Link, num_bytes: float) -> float:
    """Seconds to move ``num_bytes`` over one lane of a link."""
    return link.latency_s + num_bytes / link.bandwidth_bytes_per_s


def transfer_bytes(
    model: ModelSpec,
    payload: str,
    num_tokens: int,
    ffn_width: int,
    element_bytes: float | None = None,
) -> float:
    """Bytes a transfer moves: hidden rows for activations/partial sums (at ``element_bytes``
    per element when given, else the model's activation dtype), a slice for weights."""
    if payload == "weights":
        return model.expert_bytes(ffn_width)
    if element_bytes is not None:
        return num_tokens * model.hidden_size * element_bytes
    return model.activation_bytes(num_tokens)


def weight_slice_bytes(model: ModelSpec, s: WeightSlice) -> float:
    """Bytes of a (possibly wildcard) weight slice: layers x experts x columns it covers."""
    layers = model.num_moe_layers if s.layer is None else 1
    experts = model.num_routed_experts if s.expert is None else 1
    width = (model.expert_ffn_size if s.ffn_end is None else s.ffn_end) - s.ffn_start
    return layers * experts * model.expert_bytes(max(width, 0))


def task_cycles(
    hardware: Hardware, model: ModelSpec, task: Task, context_tokens: int = 0
) -> tuple[str, int, float]:
    """Resource id, duration in cycles and bytes moved of a task whose references resolve.

    The one place durations come from: the executor and every solver call it.
    """
    clock = hardware.clock_hz
    if isinstance(task, ComputeTask):
        device = hardware.device(task.device_id)
        if task.op == "expert" and task.group_rows:
            width = (task.ffn_end or model.expert_ffn_size) - task.ffn_start
            widths = [c1 - c0 for c0, c1 in task.group_cols] if task.group_cols else None
            secs = grouped_expert_s(device, model, task.group_rows, width, widths)
        elif task.op == "expert":
            width = (task.ffn_end or model.expert_ffn_size) - task.ffn_start
            secs = expert_shard_s(device, model, task.num_tokens, width)
        elif task.op == "shared_expert":
            total = model.num_shared_experts * model.shared_expert_ffn_size
            secs = shared_expert_s(
                device, model, task.num_tokens, (task.ffn_end or total) - task.ffn_start
            )
        elif task.op == "attention":
            secs = attention_s(
                device, model, task.num_tokens, context_tokens, task.num_sequences,
                task.num_partials,
            )  # fmt: skip
        else:
            secs = reduce_s(device, model, task.num_tokens, task.num_partials)
        return task.device_id, to_cycles(secs, clock), 0.0
    if isinstance(task, TransferTask):
        link = next(lk for lk in hardware.links if lk.id == task.link_id)
        width = 0
        if task.weights is not None:
            width = (task.weights.ffn_end or model.expert_ffn_size) - task.weights.ffn_start
        num_bytes = transfer_bytes(model, task.payload, task.num_tokens, width, task.element_bytes)
        return task.link_id, to_cycles(transfer_s(link, num_bytes), clock), num_bytes
    return task.memory_id, 0, 0.0
