"""HTTP request and response envelopes; they wrap the domain types instead of redefining them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hwmodel.plan import ComputeTask, Plan, Residency, SolverAccount
from hwmodel.presets import HARDWARE_PRESETS, MODEL_PRESETS, hardware_preset, model_preset
from hwmodel.report import Report
from hwmodel.spec import MAX_COUNT, Hardware, ModelSpec
from hwmodel.workload import Workload
from service.input_errors import DomainError

# A count or load: finite, in [0, 2**40] (sums over 2**16 entries stay exact in float64).
Count = Annotated[float, Field(ge=0, le=MAX_COUNT, allow_inf_nan=False)]


class ProblemRequest(BaseModel):
    """Hardware and model, each either given in full or named as a preset."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    hardware: Hardware | None = Field(default=None, description="Full hardware description.")
    hardware_preset: str | None = Field(
        default=None,
        max_length=64,
        description="Or a hardware preset name (GET /v1/presets/hardware).",
    )
    model: ModelSpec | None = Field(default=None, description="Full model description.")
    model_preset: str | None = Field(
        default=None, max_length=64, description="Or a model preset name (GET /v1/presets/models)."
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> ProblemRequest:
        if (self.hardware is None) == (self.hardware_preset is None):
            raise ValueError("hardware: give exactly one of 'hardware' and 'hardware_preset'")
        if (self.model is None) == (self.model_preset is None):
            raise ValueError("model: give exactly one of 'model' and 'model_preset'")
        return self

    def resolved_hardware(self) -> Hardware:
        """The hardware, from the request or the preset (DomainError 422 when unknown)."""
        if self.hardware is not None:
            return self.hardware
        assert self.hardware_preset is not None
        if self.hardware_preset not in HARDWARE_PRESETS:
            raise DomainError(
                422, "unknown_preset", "body.hardware_preset",
                f"unknown preset '{self.hardware_preset}'; known: {sorted(HARDWARE_PRESETS)}",
            )  # fmt: skip
        return hardware_preset(self.hardware_preset)

    def resolved_model(self) -> ModelSpec:
        """The model, from the request or the preset (DomainError 422 when unknown)."""
        if self.model is not None:
            return self.model
        assert self.model_preset is not None
        if self.model_preset not in MODEL_PRESETS:
            raise DomainError(
                422, "unknown_preset", "body.model_preset",
                f"unknown preset '{self.model_preset}'; known: {sorted(MODEL_PRESETS)}",
            )  # fmt: skip
        return model_preset(self.model_preset)


class SimulateRequest(ProblemRequest):
    """A plan to check and simulate, with the hardware, model and (optionally) the workload."""

    plan: Plan = Field(description="The plan to run.")
    workload: Workload | None = Field(
        default=None, description="Histogram the plan must cover (coverage is checked when given)."
    )
    residency: Residency | None = Field(default=None, description="What memories hold at cycle 0.")
    include_timeline: bool = Field(default=False, description="Return every task's span.")
    context_tokens: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="KV-cache length for attention costs (default: the workload's, else 0).",
    )


class SimulateResponse(BaseModel):
    """The executor's report on the plan."""

    report: Report = Field(description="Timing, utilization, traffic and violations.")


class HardwarePresetSummary(BaseModel):
    """One hardware preset, briefly."""

    name: str = Field(description="Preset name.")
    description: str = Field(description="What it is.")
    num_devices: int = Field(description="Devices.")
    device_kinds: dict[str, int] = Field(description="Devices per kind.")


class ModelPresetSummary(BaseModel):
    """One model preset, briefly."""

    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(description="Preset name.")
    num_routed_experts: int = Field(description="Routed experts per MoE layer.")
    top_k: int = Field(description="Experts per token.")
    num_moe_layers: int = Field(description="MoE layers.")
    expert_bytes: float = Field(description="Bytes of one routed expert's weights.")


class HealthResponse(BaseModel):
    """Liveness / readiness."""

    status: str = Field(description="ok")


class InfoResponse(BaseModel):
    """Versions and limits."""

    version: str = Field(description="moesched version.")
    versions: dict[str, str] = Field(description="Versions of the solver and web libraries.")
    limits: dict[str, Any] = Field(description="Server-side size, time and session limits.")
    api_key_required: bool = Field(description="Whether /v1 calls need an X-API-Key header.")
    warnings: list[str] = Field(
        description="Configuration risks, e.g. a non-loopback bind address without an API key."
    )


class PlacementOptions(BaseModel):
    """How to solve: backend, deadline and the shape of the search."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["greedy", "cpsat", "milp", "auto"] = Field(
        default="auto", description="greedy, cpsat, milp, or auto (greedy, then CP-SAT hinted)."
    )
    deadline_s: float = Field(default=2.0, gt=0, le=600, description="Wall-clock budget.")
    num_granules: int = Field(
        default=4, ge=1, le=64, description="Tensor-parallel granularity (column slices)."
    )
    allow_loads: bool = Field(default=True, description="Allow loading experts to the home GPU.")
    attention: bool = Field(default=False, description="Put each layer's attention in the plan.")


class PlacementRequest(ProblemRequest):
    """Place every layer of a workload's histogram onto the hardware."""

    workload: Workload = Field(description="Tokens per expert for each MoE layer to place.")
    residency: Residency | None = Field(
        default=None, description="What every memory holds at cycle 0 (or give 'layout')."
    )
    layout: Literal["round_robin", "striped"] | None = Field(
        default=None,
        description="Named weight layout over the NDP units: round_robin (whole experts) or "
        "striped (each unit holds one column slice of every expert).",
    )
    cached_experts: tuple[int, ...] = Field(
        default=(), description="Experts the home GPU holds whole for every layer (with layout)."
    )
    options: PlacementOptions = Field(default_factory=PlacementOptions, description="Solving.")

    @model_validator(mode="after")
    def _one_layout(self) -> PlacementRequest:
        if (self.residency is None) == (self.layout is None):
            raise ValueError("residency: give exactly one of 'residency' and 'layout'")
        return self


AnswerStatus = Literal["optimal", "feasible", "fallback", "given"]
STATUS_MEANING: dict[str, str] = {
    "optimal": "proven optimal: the objective equals a proven lower bound",
    "feasible": "a valid plan, not proven optimal: 'gap' says how far from the best bound",
    "fallback": "the backend asked for gave nothing usable in time; a simpler backend's plan "
    "(greedy, EPLB's own) was returned instead, for the reason in 'why'",
    "given": "not solved here: the plan came with the request",
}
STATUS_DESCRIPTION = "One status per answer. " + "; ".join(
    f"{k}: {v}" for k, v in STATUS_MEANING.items()
)


def one_status(account: SolverAccount) -> SolverAccount:
    """The account with a single status: a proven optimum reads 'optimal' whatever else
    happened; otherwise any fallback reason makes it 'fallback' (with that reason)."""
    if account.status in ("optimal", "fallback", "infeasible") or not account.fallback_reason:
        return account
    return account.model_copy(update={"status": "fallback"})


def status_why(account: SolverAccount) -> str:
    """Why the answer has its status, in words."""
    if account.status == "optimal":
        why = "the plan meets the proven lower bound"
        if account.fallback_reason:
            why += f" (the exact backend added nothing: {account.fallback_reason})"
        return why
    if account.status == "fallback":
        return account.fallback_reason or "the exact backend gave no plan"
    if account.status == "feasible":
        gap = "unknown" if account.gap is None else f"{account.gap:.2%}"
        return f"a valid plan, not proven optimal: gap {gap} to the best lower bound"
    return STATUS_MEANING.get(account.status, account.status)


ShardAt = tuple[str, int, int | None]


class LayerMap(BaseModel):
    """Where one layer's experts run."""

    layer: int = Field(description="MoE layer.")
    experts: dict[int, list[ShardAt]] = Field(
        description="Logical expert -> [[device id, ffn_start, ffn_end], ...]: each shard's device "
        "and its FFN column slice [ffn_start, ffn_end) (ffn_end null: the full width)."
    )


def _ffn_start(shard: ShardAt) -> int:
    return shard[1]


def _grouped_shards(task: ComputeTask) -> list[tuple[int, int, int | None]]:
    """(expert, ffn start, ffn end) of each expert an expert task computes: the one expert,
    or each expert of a grouped GEMM with rows (its own column slice where it has one)."""
    assert task.expert is not None
    if not task.group_rows:
        return [(task.expert, task.ffn_start, task.ffn_end)]
    cols = task.group_cols or [(task.ffn_start, task.ffn_end)] * len(task.group_rows)
    return [
        (task.expert + i, start, end)
        for i, (rows, (start, end)) in enumerate(zip(task.group_rows, cols, strict=True))
        if rows > 0
    ]


def expert_maps(plan: Plan) -> list[LayerMap]:
    """Per layer, each active expert's shards (device and FFN slice), from the plan's tasks."""
    by_layer: dict[int, dict[int, list[ShardAt]]] = {}
    for task in plan.tasks:
        if task.kind != "compute" or task.op != "expert" or task.expert is None:
            continue
        for expert, start, end in _grouped_shards(task):
            shard = (task.device_id, start, end)
            shards = by_layer.setdefault(task.layer, {}).setdefault(expert, [])
            if shard not in shards:  # micro-batches repeat the same shard
                shards.append(shard)
    return [
        LayerMap(
            layer=layer, experts={e: sorted(sh, key=_ffn_start) for e, sh in sorted(ex.items())}
        )
        for layer, ex in sorted(by_layer.items())
    ]


class PlanSummary(BaseModel):
    """The answer first: status, gap, makespan, and where every expert runs."""

    status: AnswerStatus = Field(description=STATUS_DESCRIPTION)
    why: str = Field(description="Why this status, in words (the fallback's reason, the gap).")
    gap: float | None = Field(description="(objective - bound) / objective; 0 when optimal.")
    makespan_cycles: int = Field(description="Simulated makespan (the executor's), in cycles.")
    makespan_ms: float = Field(description="The same in milliseconds.")
    valid: bool = Field(description="The executor found no violation (always true here).")
    layers: list[LayerMap] = Field(description="Per layer: expert -> [[device, ffn slice]].")


def plan_summary(account: SolverAccount, report: Report, plan: Plan) -> PlanSummary:
    """The summary of a solved plan (``account`` already through ``one_status``)."""
    status = account.status if account.status != "infeasible" else "fallback"
    return PlanSummary(
        status=status,
        why=status_why(account),
        gap=account.gap,
        makespan_cycles=report.makespan_cycles,
        makespan_ms=report.makespan_s * 1e3,
        valid=report.valid,
        layers=expert_maps(plan),
    )


class SummarizedPlan(BaseModel):
    """A solved plan's answer: ``summary`` first (filled from the account, report and plan),
    then the account, the executor's report and the task graph."""

    summary: PlanSummary | None = Field(
        default=None, description="The answer first: status, gap, makespan, expert map."
    )
    account: SolverAccount = Field(description="Backend, status, objective, bound, gap, time.")
    report: Report = Field(description="The executor's simulation of the plan (valid).")
    plan: Plan = Field(description="The task graph: every task, in run order per resource.")

    @model_validator(mode="after")
    def _summarize(self) -> SummarizedPlan:
        self.account = one_status(self.account)
        if self.plan.account != self.account:
            self.plan = self.plan.model_copy(update={"account": self.account})
        self.summary = plan_summary(self.account, self.report, self.plan)
        return self


class LayerAccountOut(BaseModel):
    """One layer's solve."""

    layer: int = Field(description="MoE layer.")
    account: SolverAccount = Field(description="How its placement was found.")


class PlacementResponse(SummarizedPlan):
    """The summary first; then how the plan was found, the executor's report, the task graph."""

    layers: list[LayerAccountOut] = Field(description="Per-layer accounts.")


class RuntimeDump(BaseModel):
    """A file a runtime wrote, sent as it is (base64), read by moesched's readers."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["sglang", "vllm", "deepseek", "routing-log"] = Field(
        description="Who wrote it: sglang (expert-distribution dump, stat or detail mode), "
        "vllm (expert_load_window + physical_to_logical_map), deepseek (EPLB weight), "
        "routing-log (vLLM-style route JSON lines, or a batched decode layout)."
    )
    filename: str = Field(
        min_length=1,
        max_length=255,
        description="The file's name; its suffix picks the reader (.pt, .json, .jsonl, .jsonl.gz).",
    )
    content_base64: str = Field(min_length=1, description="The file's bytes, base64-encoded.")


class EplbRequest(BaseModel):
    """DeepSeek EPLB's arguments, or a window of samples a runtime recorded; the answer has
    EPLB's shapes, and the runtime's file when ``format`` names one.

    Give exactly one of ``weights`` (EPLB's ``weight``), ``window`` (logical loads per sample),
    ``physical_window`` (per-slot loads, folded by ``current_physical_to_logical``) or ``dump``.
    With more than one sample, the placement is fitted to per-batch routing over the window and
    never worse than EPLB on it; with ``current_physical_to_logical`` its slots are aligned with
    the current ones and only replicas that must move are counted.
    """

    model_config = ConfigDict(extra="forbid")

    weights: list[list[Count]] | None = Field(
        default=None,
        description="Load per logical expert, [num_layers, num_logical_experts], each in "
        "[0, 2**40].",
    )
    window: list[list[list[Count]]] | None = Field(
        default=None,
        description="Logical loads per sample (batch / forward pass), "
        "[num_samples, num_layers, num_logical_experts].",
    )
    physical_window: list[list[list[Count]]] | None = Field(
        default=None,
        description="Loads per physical slot, [num_samples, num_layers, num_replicas] "
        "(vLLM's expert_load_window); needs current_physical_to_logical.",
    )
    dump: RuntimeDump | None = Field(default=None, description="A runtime's file, as written.")
    current_physical_to_logical: list[list[int]] | None = Field(
        default=None,
        description="The placement the runtime runs now, [num_layers, num_replicas]; taken "
        "from the dump when it has one (SGLang detail mode, vLLM).",
    )
    num_logical_experts: int | None = Field(
        default=None, ge=1, le=65536, description="Logical experts (default: from the data)."
    )
    num_replicas: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Physical slots, a multiple of num_gpus (default: the current placement's).",
    )
    num_groups: int = Field(
        default=1, ge=1, le=4096, description="Expert groups (divides the experts)."
    )
    num_nodes: int = Field(default=1, ge=1, le=4096, description="Nodes (divides num_gpus).")
    num_gpus: int = Field(ge=1, le=4096, description="GPUs.")
    max_moved_replicas: int | None = Field(
        default=None,
        ge=0,
        description="At most this many slots change expert (window mode, with a current map).",
    )
    move_cost: float = Field(
        default=0.0005,
        ge=0,
        le=1,
        description="Balancedness a moved replica must buy, per layer (window mode).",
    )
    backend: Literal["greedy", "cpsat", "auto"] = Field(
        default="auto", description="greedy (EPLB's algorithm), cpsat, or auto (one sample)."
    )
    deadline_s: float = Field(default=5.0, gt=0, le=600, description="Wall-clock budget.")
    format: Literal["moesched", "sglang", "vllm", "deepseek"] = Field(
        default="moesched",
        description="Also return the runtime's file: sglang (--init-expert-location JSON, "
        "physical_to_logical_map), vllm (EplbState's names), deepseek (phy2log, log2phy, "
        "logcnt).",
    )
    logical_count: bool = Field(
        default=False, description="With format sglang: add logical_count [layers][logical]."
    )

    @model_validator(mode="before")
    @classmethod
    def _shapes(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        depth_of = {"weights": 2, "window": 3, "physical_window": 3}
        for name, want in depth_of.items():
            value = data.get(name)
            if value is None:
                continue
            depth, probe = 0, value
            while isinstance(probe, list) and probe:
                depth, probe = depth + 1, probe[0]
            if depth != want:
                hint = {
                    "weights": "[num_layers, num_logical_experts]; a window of samples goes in "
                    "'window' [num_samples, num_layers, num_logical_experts]",
                    "window": "[num_samples, num_layers, num_logical_experts]",
                    "physical_window": "[num_samples, num_layers, num_replicas]",
                }[name]
                raise ValueError(f"{name}: a {depth}-D array; want {hint}")
        given = [n for n in ("weights", "window", "physical_window", "dump") if data.get(n)]
        if len(given) != 1:
            raise ValueError(
                "weights: give exactly one of weights, window, physical_window and dump "
                f"(got {given or 'none'})"
            )
        return data


class EplbLayerMap(BaseModel):
    """Where one layer's logical experts have replicas."""

    layer: int = Field(description="MoE layer.")
    experts: dict[int, list[int]] = Field(
        description="Logical expert -> the GPU of each of its replicas (a GPU twice: two slots)."
    )


class EplbSummary(BaseModel):
    """The answer first: status, gap to the proven bound, balance, and each expert's GPUs."""

    status: AnswerStatus = Field(description=STATUS_DESCRIPTION)
    why: str = Field(description="Why this status, in words.")
    gap: float = Field(description="Largest over layers of (max_load - bound) / max_load.")
    balancedness_mean: float = Field(description="Mean over layers of mean / max GPU load.")
    layers: list[EplbLayerMap] = Field(description="Per layer: expert -> [GPU of each replica].")


def eplb_gap(max_load: list[float], bound: list[float]) -> float:
    """Largest relative gap between a layer's busiest GPU and its proven lower bound."""
    return max(((m - b) / m if m > 0 else 0.0) for m, b in zip(max_load, bound, strict=True))


class EplbResponse(BaseModel):
    """The summary first; then maps in EPLB's shapes plus loads and balancedness."""

    summary: EplbSummary | None = Field(
        default=None, description="The answer first: status, gap, balance, expert -> GPUs."
    )
    physical_to_logical: list[list[int]] = Field(description="[num_layers, num_replicas].")
    logical_to_physical: list[list[list[int]]] = Field(
        description="[num_layers, num_logical_experts, max_replicas], -1 padded."
    )
    logical_replica_count: list[list[int]] = Field(description="[num_layers, num_logical].")
    gpu_loads: list[list[float]] = Field(
        description="[num_layers, num_gpus], replicas splitting the (summed) load evenly."
    )
    balancedness: list[float] = Field(description="Per layer: mean / max GPU load.")
    balancedness_mean: float = Field(description="Mean over layers.")
    max_load: list[float] = Field(description="Per layer: the largest GPU load.")
    max_load_bound: list[float] = Field(description="Per layer: a proven lower bound on it.")
    backend: str = Field(description="Backend asked for.")
    status: str = Field(description="The same as summary.status: " + STATUS_DESCRIPTION)
    wall_time_s: float = Field(description="Solve wall time.")
    fallback_reason: str | None = Field(default=None, description="Why a fallback was used.")
    num_samples: int = Field(default=1, description="Samples in the window solved for.")
    window_balancedness: list[float] | None = Field(
        default=None,
        description="Window mode, per layer: routed balancedness of the answer over the "
        "window's evaluation batches (tokens split among replicas per batch).",
    )
    window_balancedness_eplb: list[float] | None = Field(
        default=None, description="The same for EPLB's placement on the window's sum."
    )
    window_balancedness_current: list[float] | None = Field(
        default=None, description="The same for the current placement."
    )
    moved_replicas: int | None = Field(
        default=None, description="Slots whose expert changes against the current placement."
    )
    moved_replicas_unaligned: int | None = Field(
        default=None, description="The same without aligning the new slots with the old ones."
    )
    layers_adopted: list[int] | None = Field(
        default=None, description="Layers whose placement changes (window mode)."
    )
    notes: list[str] = Field(default_factory=list, description="What the reader assumed/dropped.")
    format: str = Field(default="moesched", description="The runtime format of runtime_file.")
    runtime_file: dict[str, Any] | None = Field(
        default=None, description="What the runtime loads, in its own names (see format)."
    )

    @model_validator(mode="after")
    def _summarize(self) -> EplbResponse:
        gap = eplb_gap(self.max_load, self.max_load_bound) if self.max_load else 0.0
        if gap <= 1e-9:  # every layer at its proven bound: optimal, whichever backend got there
            self.status = "optimal"
            why = "every layer's busiest GPU meets its proven lower bound"
            if self.fallback_reason:
                why += f" (the exact backend added nothing: {self.fallback_reason})"
        elif self.status == "fallback" or self.fallback_reason:
            self.status = "fallback"
            why = self.fallback_reason or "the exact backend gave no placement"
        else:
            why = f"not proven optimal: gap {gap:.2%} to the proven bound"
        per_gpu = len(self.physical_to_logical[0]) // max(1, len(self.gpu_loads[0] or [0]))
        layers = []
        for layer, row in enumerate(self.physical_to_logical):
            experts: dict[int, list[int]] = {}
            for slot, expert in enumerate(row):
                experts.setdefault(expert, []).append(slot // max(per_gpu, 1))
            layers.append(EplbLayerMap(layer=layer, experts=dict(sorted(experts.items()))))
        status = self.status if self.status in STATUS_MEANING else "feasible"
        self.summary = EplbSummary(
            status=status,
            why=why,
            gap=gap,
            balancedness_mean=self.balancedness_mean,
            layers=layers,
        )
        return self


class OrderingOptions(BaseModel):
    """How to solve the micro-batch pipeline."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["greedy", "cpsat", "milp", "auto"] = Field(
        default="auto", description="Backend."
    )
    deadline_s: float = Field(default=3.0, gt=0, le=600, description="Wall-clock budget.")
    max_micro_batches: int = Field(default=16, ge=1, le=64, description="Largest r searched.")


class OrderingRequest(ProblemRequest):
    """Disaggregated expert parallelism: micro-batch count and task order for a run of layers."""

    batch_tokens: int = Field(
        ge=1, le=1_000_000, description="Decode tokens in the step (all attention GPUs)."
    )
    num_layers: int = Field(default=2, ge=1, le=16, description="MoE layers in the run simulated.")
    context_tokens: int = Field(default=2048, ge=0, le=1_000_000, description="KV-cache length.")
    options: OrderingOptions = Field(default_factory=OrderingOptions, description="Solving.")


class OrderingResponse(SummarizedPlan):
    """The summary first; then the chosen pipeline, the baselines at their best, and the
    executor's report."""

    micro_batches: int = Field(description="Chosen micro-batch count r.")
    why: str = Field(description="Why this r (against r + 1).")
    makespan_cycles: int = Field(description="moesched's run time.")
    serial_cycles: int = Field(description="Serial (no overlap) run time.")
    pppipe_cycles: int = Field(description="PPPipe run time at its best micro-batch count.")
    pppipe_micro_batches: int = Field(description="PPPipe's best micro-batch count.")
    makespan_by_micro_batches: dict[str, int] = Field(
        description="moesched's run time per r tried."
    )
    throughput_tokens_per_s: float = Field(description="batch_tokens / simulated run time.")


class SessionPolicy(BaseModel):
    """How a sidecar session keeps its plan current."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["greedy", "cpsat", "milp", "auto"] = Field(
        default="auto", description="Backend."
    )
    deadline_s: float = Field(default=1.0, gt=0, le=600, description="Budget of each re-solve.")
    drift_threshold: float = Field(
        default=0.2,
        gt=0,
        le=1,
        description="Re-solve when the mean over layers of the total variation distance between "
        "the running counts and the counts the plan was solved for exceeds this.",
    )
    decay: float = Field(
        default=0.98,
        gt=0,
        le=1,
        description="Running counts are multiplied by this per observation.",
    )
    plan_batch_tokens: int = Field(default=1, ge=1, le=65536, description="Batch the plan is for.")
    num_granules: int = Field(default=4, ge=1, le=64, description="Tensor-parallel granularity.")


class SessionCreate(ProblemRequest):
    """Register hardware and model; the service keeps running counts and a current plan."""

    layout: Literal["round_robin", "striped"] = Field(
        default="striped", description="Weight layout."
    )
    cached_experts: tuple[int, ...] = Field(default=(), description="Experts the GPU holds whole.")
    policy: SessionPolicy = Field(default_factory=SessionPolicy, description="Re-solve policy.")
    initial_counts: list[list[Count]] | None = Field(
        default=None,
        description="Seed counts [num_moe_layers, num_experts], each in [0, 2**40], e.g. from "
        "the prompt's prefill.",
    )


MAX_IDS_B64_CHARS = 64 * 2**20  # (the server's body limit bounds it first)


class Observation(BaseModel):
    """The latest routing: a histogram, or routed expert ids per token."""

    model_config = ConfigDict(extra="forbid")

    histogram: list[list[Annotated[int, Field(ge=0, le=MAX_COUNT)]]] | None = Field(
        default=None, description="Tokens per expert, [num_moe_layers, num_experts]."
    )
    expert_ids: list[list[list[Annotated[int, Field(ge=0, le=65535)]]]] | None = Field(
        default=None, description="Routed experts per token, [num_tokens, num_moe_layers, top_k]."
    )
    expert_ids_b64: str | None = Field(
        default=None,
        max_length=MAX_IDS_B64_CHARS,
        description="expert_ids packed, the compact form for batched observations: standard "
        "base64 of the ids as little-endian int16 in C order, shape expert_ids_shape "
        "(numpy: base64.b64encode(ids.astype('<i2').tobytes())). Decoding JSON integers "
        "costs the server about 20 us of CPU per token of [num_moe_layers, top_k] ids; "
        "this, about 1 us.",
    )
    expert_ids_shape: list[Annotated[int, Field(ge=0, le=65535)]] | None = Field(
        default=None,
        min_length=3,
        max_length=3,
        description="[num_tokens, num_moe_layers, top_k] of expert_ids_b64 (given with it, "
        "and only with it).",
    )
    observation_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="A client-chosen id: an observation whose id the session has seen before "
        "(a retry, to this replica or another) is acknowledged again but not counted again.",
    )

    @model_validator(mode="after")
    def _one(self) -> Observation:
        given = (self.histogram, self.expert_ids, self.expert_ids_b64)
        if sum(v is not None for v in given) != 1:
            raise ValueError(
                "histogram: give exactly one of 'histogram', 'expert_ids' and 'expert_ids_b64'"
            )
        if (self.expert_ids_shape is None) != (self.expert_ids_b64 is None):
            raise ValueError(
                "expert_ids_shape: give it with expert_ids_b64, and only with expert_ids_b64"
            )
        return self


class ObservationAck(BaseModel):
    """What an observation did."""

    version: int = Field(description="Version of the current plan.")
    num_observations: int = Field(description="Observations so far.")
    drift: float = Field(description="Drift of the running counts from the plan's counts.")
    resolve_started: bool = Field(description="Whether this observation started a re-solve.")
    counted: bool = Field(
        default=True, description="False when observation_id was seen before (not counted again)."
    )


class SessionInfo(BaseModel):
    """A session and its current plan."""

    id: str = Field(description="Session id.")
    version: int = Field(description="Plan version (starts at 1, +1 per swap).")
    num_observations: int = Field(description="Observations so far.")
    drift: float = Field(description="Drift of the running counts from the plan's counts.")
    resolving: bool = Field(description="A re-solve is running.")
    plan: PlacementResponse = Field(description="The current plan, its account and report.")


class ScheduleRequest(PlacementRequest):
    """Placement of every layer, then (optionally) the order of every task of the plan."""

    problems: tuple[Literal["placement", "ordering"], ...] = Field(
        default=("placement", "ordering"),
        description="placement is always solved; ordering then reorders every resource's queue "
        "(dispatches, shards, returns, loads) so transfers hide behind compute.",
    )


class ScheduleResponse(PlacementResponse):
    """The placement response, plus the ordering step's account when it ran."""

    ordering: SolverAccount | None = Field(default=None, description="How the order was found.")


class RouteRequest(BaseModel):
    """One layer's replica placement and one batch's tokens per logical expert."""

    model_config = ConfigDict(extra="forbid")

    physical_to_logical: list[Annotated[int, Field(ge=0, le=65535)]] = Field(
        min_length=1, max_length=65536, description="Logical expert of each slot, GPU-major."
    )
    num_gpus: int = Field(ge=1, le=4096, description="GPUs (slots divide evenly over them).")
    loads: list[Annotated[int, Field(ge=0, le=2**30)]] = Field(
        min_length=1, max_length=65536, description="Tokens per logical expert."
    )

    @model_validator(mode="after")
    def _total(self) -> RouteRequest:
        # The exact router's flow network uses 32-bit capacities.
        if sum(self.loads) >= 2**31:
            raise ValueError("loads: the total must stay below 2**31 tokens")
        return self


class RouteResponse(BaseModel):
    """Tokens per replica slot, and the balance they give."""

    tokens_per_slot: list[int] = Field(description="Tokens each replica slot receives.")
    gpu_loads: list[int] = Field(description="Tokens per GPU.")
    max_load: int = Field(description="Largest GPU load (the optimum over integer splits).")
    balancedness: float = Field(description="mean / max GPU load after routing.")
    even_split_balancedness: float = Field(description="The same with replicas splitting evenly.")


class EpSessionCreate(BaseModel):
    """An expert-parallel sidecar: route every batch over replicas; re-place when balance drops."""

    model_config = ConfigDict(extra="forbid")

    num_layers: int = Field(ge=1, le=256, description="MoE layers.")
    num_experts: int = Field(ge=1, le=1024, description="Logical experts per layer.")
    num_gpus: int = Field(ge=1, le=512, description="GPUs.")
    num_replicas: int = Field(ge=1, le=8192, description="Replica slots (a multiple of num_gpus).")
    window: int = Field(default=64, ge=4, le=1024, description="Recent batches kept.")
    rebalance_below: float = Field(
        default=0.85,
        gt=0,
        le=1,
        description="Re-place when the window's routed balancedness falls below.",
    )
    min_gain: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="A layer's new placement must beat its current one by this much routed "
        "balancedness over the window, plus move_cost per replica it moves, to be adopted "
        "(decided per layer, gain and cost both in balancedness).",
    )
    move_cost: float = Field(
        default=0.0005,
        ge=0,
        le=1,
        description="Balancedness a moved replica must pay for, in its layer.",
    )
    deadline_s: float = Field(
        default=2.0,
        gt=0,
        le=600,
        description="Wall-clock limit on creating the session (its first placement) and on each "
        "re-placement's worker, which is stopped at it; what a re-placement decides comes from "
        "a fixed move budget per layer, not from the clock.",
    )

    @model_validator(mode="after")
    def _fits(self) -> EpSessionCreate:
        if self.num_replicas % self.num_gpus or self.num_replicas < self.num_experts:
            raise ValueError("num_replicas: a multiple of num_gpus, at least num_experts")
        return self


class EpBatch(BaseModel):
    """One batch: tokens per logical expert in every layer."""

    model_config = ConfigDict(extra="forbid")

    histogram: list[list[Annotated[int, Field(ge=0, le=2**24)]]] = Field(
        description="Tokens per expert, [num_layers, num_experts]."
    )


class EpRouting(BaseModel):
    """How to route this batch, and the session's state."""

    tokens_per_slot: list[list[int]] = Field(description="Per layer, tokens for each replica slot.")
    balancedness: list[float] = Field(description="Per layer, mean / max GPU load of this batch.")
    version: int = Field(description="Placement version used.")
    window_balancedness: float = Field(description="Routed balancedness over the window.")
    replace_started: bool = Field(description="Whether this batch started a re-placement.")


class EpReplaceDecision(BaseModel):
    """The last re-placement a session considered, and why it was (not) adopted."""

    at_batch: int = Field(description="Batches routed when the window was taken.")
    adopted: bool = Field(description="Whether any layer took its new placement.")
    gain: float = Field(
        description="Window balancedness gained (mean over layers, routed, over the window)."
    )
    moved: int = Field(description="Replicas moved (slots whose expert changed).")
    moved_unaligned: int = Field(description="Replicas the fit would move without alignment.")
    layers_adopted: list[int] = Field(description="Layers that took their new placement.")
    why: str = Field(description="The rule and the figures that decided.")


class EpSessionInfo(BaseModel):
    """An EP session's placement."""

    id: str = Field(description="Session id.")
    version: int = Field(description="Placement version (+1 per adopted re-placement).")
    num_batches: int = Field(description="Batches routed so far.")
    physical_to_logical: list[list[int]] = Field(description="[num_layers, num_replicas].")
    moved_replicas_last: int = Field(description="Replicas the last adopted re-placement moved.")
    last_replace: EpReplaceDecision | None = Field(
        default=None, description="The last re-placement considered (kept in memory)."
    )
