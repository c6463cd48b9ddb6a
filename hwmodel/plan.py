"""Plans: the task graph a solver hands to the executor, and the solver's own account.

A plan is a list of tasks. Each task runs on one resource: a compute task on a device, a
transfer on a link, an eviction on a memory. Per resource, tasks run one at a time (links:
``num_lanes`` at a time) in the plan's order for that resource (``Plan.order``; by default the
order in which they appear in ``tasks``), each as soon as its ``after`` tasks have ended. A
task may pin ``start_cycle``; the executor then checks that it can start exactly then.

Glossary:
    shard: one compute task of op ``expert``: a slice ``[ffn_start, ffn_end)`` of one expert's
        FFN width for ``num_tokens`` tokens on one device. Gate/up are split by column, down
        by row, so every shard of a split expert yields a partial sum that must be reduced.
    residency: what each memory holds at cycle 0 (``Residency``); weight transfers add to it
        and evictions remove from it as the plan runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from hwmodel.spec import MAX_COUNT, Frozen, ModelSpec

MAX_INDEX = 2**20  # layers, experts, FFN columns, micro-batches
MAX_START_CYCLE = 2**50  # a pinned start; task durations stay below costs.MAX_TASK_CYCLES

ComputeOp = Literal["expert", "shared_expert", "attention", "reduce"]
TransferPayload = Literal["activations", "partial_sums", "weights"]
TransferPurpose = Literal["data", "prefetch", "demand"]
SolveStatus = Literal["optimal", "feasible", "fallback", "infeasible", "given"]


class WeightSlice(Frozen):
    """Columns ``[ffn_start, ffn_end)`` of an expert's FFN width (all three matrices' share).

    ``layer`` None means every MoE layer, ``expert`` None every routed expert and ``ffn_end``
    None the full width: a compact way to say "this memory holds slice k of every expert".
    """

    layer: int | None = Field(
        default=None, ge=0, le=MAX_INDEX, description="MoE layer, or null for all."
    )
    expert: int | None = Field(
        default=None, ge=0, le=MAX_INDEX, description="Logical expert, or null for all."
    )
    ffn_start: int = Field(default=0, ge=0, le=MAX_INDEX, description="First FFN column.")
    ffn_end: int | None = Field(
        default=None,
        gt=0,
        le=MAX_INDEX,
        description="One past the last FFN column, or null for full width.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> WeightSlice:
        if self.ffn_end is not None and self.ffn_end <= self.ffn_start:
            raise ValueError("ffn_end: must exceed ffn_start")
        return self


def covers(pieces: list[tuple[int, int]], start: int, end: int) -> bool:
    """True when column pieces, sorted by start, cover [start, end)."""
    pos = start
    for lo, hi in pieces:
        if lo > pos:
            break
        pos = max(pos, hi)
        if pos >= end:
            return True
    return pos >= end


class TaskBase(Frozen):
    id: str = Field(min_length=1, max_length=128, description="Unique task id.")
    after: tuple[str, ...] = Field(default=(), description="Tasks that must end before this one.")
    start_cycle: int | None = Field(
        default=None,
        ge=0,
        le=MAX_START_CYCLE,
        description="Pinned start (a solver's timetable); the executor checks it is feasible.",
    )
    micro_batch: int = Field(
        default=0, ge=0, le=MAX_INDEX, description="Micro-batch this task belongs to."
    )


class ComputeTask(TaskBase):
    """Work on a device: an expert shard, a shared expert, attention, or a reduction."""

    kind: Literal["compute"] = "compute"
    device_id: str = Field(description="Device that runs the task.")
    op: ComputeOp = Field(description="expert, shared_expert, attention or reduce.")
    layer: int = Field(ge=0, le=MAX_INDEX, description="MoE layer index.")
    num_tokens: int = Field(ge=0, le=MAX_COUNT, description="Tokens (rows) processed.")
    expert: int | None = Field(
        default=None, ge=0, le=MAX_INDEX, description="Logical expert (op expert)."
    )
    ffn_start: int = Field(
        default=0,
        ge=0,
        le=MAX_INDEX,
        description="First FFN column (op expert; op shared_expert: of the shared experts' "
        "concatenated width).",
    )
    ffn_end: int | None = Field(
        default=None,
        gt=0,
        le=MAX_INDEX,
        description="One past the last FFN column; null: full width.",
    )
    num_partials: int = Field(
        default=1,
        ge=1,
        le=MAX_INDEX,
        description=(
            "Partial sums added per token (op reduce; op attention: the layer before's partial "
            "sums, added in the kernel's prologue instead of by a separate reduce; 1: none)."
        ),
    )
    num_sequences: int = Field(
        default=1,
        ge=1,
        le=MAX_COUNT,
        description=(
            "Sequences the attention task serves (op attention): 1 is a prefill chunk of "
            "num_tokens new tokens over one KV cache; num_tokens sequences is a decode "
            "micro-batch, one new token per sequence, each reading its own KV cache."
        ),
    )
    group_rows: tuple[Annotated[int, Field(ge=0, le=MAX_COUNT)], ...] = Field(
        default=(),
        description=(
            "Grouped GEMM (op expert): rows of each of the consecutive experts expert, "
            "expert + 1, ... computed by this one launch, columns [ffn_start, ffn_end) of "
            "each; their sum is num_tokens, and an expert with 0 rows is not read. Empty: "
            "the single expert 'expert'."
        ),
    )
    group_cols: tuple[tuple[int, int], ...] = Field(
        default=(),
        description=(
            "A grouped GEMM whose experts each have their own column slice (op expert, with "
            "group_rows): [start, end) of each expert of group_rows, in order, within "
            "[ffn_start, ffn_end). Empty: [ffn_start, ffn_end) of each."
        ),
    )

    @model_validator(mode="after")
    def _op_fields(self) -> ComputeTask:
        if self.op == "expert" and self.expert is None:
            raise ValueError("expert: required when op is 'expert'")
        if self.group_rows:  # (most tasks have none: this check runs for every task built)
            if sum(self.group_rows) != self.num_tokens:
                raise ValueError("group_rows: must sum to num_tokens")
            if any(r < 0 for r in self.group_rows):
                raise ValueError("group_rows: rows cannot be negative")
        if self.group_cols:
            if len(self.group_cols) != len(self.group_rows):
                raise ValueError("group_cols: one slice per expert of group_rows")
            top = self.ffn_end if self.ffn_end is not None else MAX_INDEX
            if any(not self.ffn_start <= c0 < c1 <= top for c0, c1 in self.group_cols):
                raise ValueError("group_cols: each slice non-empty, within [ffn_start, ffn_end)")
        if self.num_sequences > 1 and self.num_tokens % self.num_sequences:
            raise ValueError("num_sequences: must divide num_tokens")
        if self.ffn_end is not None and self.ffn_end <= self.ffn_start:
            raise ValueError("ffn_end: must exceed ffn_start")
        return self


class TransferTask(TaskBase):
    """Bytes moved over a link: activations, partial sums, or expert weights."""

    kind: Literal["transfer"] = "transfer"
    link_id: str = Field(description="Link that carries the bytes.")
    src_device_id: str = Field(description="Sending device.")
    dst_device_id: str = Field(description="Receiving device (weights land in its memory).")
    payload: TransferPayload = Field(description="activations, partial_sums or weights.")
    layer: int = Field(ge=0, le=MAX_INDEX, description="MoE layer the bytes belong to.")
    num_tokens: int = Field(
        default=0, ge=0, le=MAX_COUNT, description="Rows moved (activations/partial_sums)."
    )
    weights: WeightSlice | None = Field(default=None, description="What is moved (weights).")
    purpose: TransferPurpose = Field(
        default="data",
        description="data (activations), prefetch (staged ahead) or demand (loaded on a miss).",
    )
    element_bytes: float | None = Field(
        default=None,
        ge=0.0625,
        le=16,
        description=(
            "Bytes per moved element of activation rows (FP8 dispatch with per-128 scales: "
            "1 + 4/128); null: the model's bytes_per_activation."
        ),
    )

    @model_validator(mode="after")
    def _payload_fields(self) -> TransferTask:
        if self.payload == "weights":
            if self.weights is None:
                raise ValueError("weights: required when payload is 'weights'")
            if self.weights.layer is None or self.weights.expert is None:
                raise ValueError("weights: a transfer moves one layer's expert slice")
        return self


class EvictTask(TaskBase):
    """Frees an expert slice from a memory (instant once its dependencies have ended)."""

    kind: Literal["evict"] = "evict"
    memory_id: str = Field(description="Memory that drops the weights.")
    weights: WeightSlice = Field(description="What is dropped (one layer's expert slice).")


Task = Annotated[ComputeTask | TransferTask | EvictTask, Field(discriminator="kind")]


class Residency(Frozen):
    """What each memory holds at cycle 0, by memory id."""

    by_memory: dict[str, tuple[WeightSlice, ...]] = Field(
        default_factory=dict, description="Memory id -> weight slices held at cycle 0."
    )
    reserved_bytes: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description=(
            "Memory id -> bytes held for the whole run besides expert slices (KV cache, "
            "attention and shared-expert weights); counted against the memory's capacity."
        ),
    )

    def problems(self, model: ModelSpec, memory_ids: set[str]) -> list[str]:
        """Messages (``by_memory.MEM[i]: reason``) for every slice that names a memory the
        hardware lacks, or a layer, expert or column range the model does not have (such a
        slice holds nothing the plans can use, so it is a mistake, not a no-op)."""
        out = []
        for mem, slices in self.by_memory.items():
            if mem not in memory_ids:
                out.append(f"by_memory.{mem}: the hardware has no memory '{mem}'")
            for i, s in enumerate(slices):
                where = f"by_memory.{mem}[{i}]"
                if s.layer is not None and s.layer >= model.num_moe_layers:
                    out.append(f"{where}: layer {s.layer}, want < {model.num_moe_layers}")
                if s.expert is not None and s.expert >= model.num_routed_experts:
                    out.append(f"{where}: expert {s.expert}, want < {model.num_routed_experts}")
                end = model.expert_ffn_size if s.ffn_end is None else s.ffn_end
                if end > model.expert_ffn_size or s.ffn_start >= model.expert_ffn_size:
                    out.append(
                        f"{where}: columns [{s.ffn_start}, {end}), the FFN width is "
                        f"{model.expert_ffn_size}"
                    )
        return out

    def holds(
        self, memory_id: str, layer: int, expert: int, start: int, end: int, ffn_size: int
    ) -> bool:
        """True when the memory holds columns [start, end) of (layer, expert) at cycle 0."""
        pieces = sorted(
            (s.ffn_start, ffn_size if s.ffn_end is None else s.ffn_end)
            for s in self.by_memory.get(memory_id, ())
            if s.layer in (None, layer) and s.expert in (None, expert)
        )
        return covers(pieces, start, end)


class SolverAccount(Frozen):
    """How a plan was found: the solver's own record of quality and effort."""

    problem: str = Field(default="given", description="placement, ordering, prefetch, ...")
    backend: str = Field(default="given", description="cpsat, milp, greedy, auto or given.")
    status: SolveStatus = Field(default="given", description="How the solve ended.")
    objective_cycles: int | None = Field(default=None, description="Objective (makespan).")
    lower_bound_cycles: int | None = Field(default=None, description="Proven lower bound.")
    gap: float | None = Field(default=None, description="(objective - bound) / objective.")
    wall_time_s: float = Field(default=0.0, ge=0, description="Solver wall time.")
    fallback_reason: str | None = Field(default=None, description="Why a fallback was used.")
    predicted_makespan_cycles: int | None = Field(
        default=None, description="Makespan the solver predicts for this plan."
    )


class Plan(Frozen):
    """A schedule: tasks, their order per resource, and the solver's account."""

    tasks: tuple[Task, ...] = Field(description="Every task of the schedule.")
    order: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description=(
            "Resource id (device, link or memory) -> task ids in run order. Resources not "
            "listed run their tasks in the order of 'tasks'."
        ),
    )
    account: SolverAccount = Field(
        default_factory=SolverAccount, description="How the plan was found."
    )

    def shards(self) -> list[ComputeTask]:
        """The expert shards of the plan (compute tasks of op 'expert')."""
        return [t for t in self.tasks if isinstance(t, ComputeTask) and t.op == "expert"]
