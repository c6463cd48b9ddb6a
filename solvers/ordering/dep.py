"""Disaggregated expert parallelism (FinDEP, arXiv 2512.21487; MegaScale-Infer, arXiv
2504.02263): a run of MoE decode layers on an attention group (attention + shared experts, the
KV cache) and an expert group (routed experts), with dispatch (A2E) and combine (E2A) over the
network, split at two granularities.

Glossary:
    m: micro-batches on the attention side. Micro-batch i holds ``n_i`` of an attention GPU's
        decode sequences; its attention reads their KV caches, its shared experts run on its
        rows, and layer l + 1's attention of i waits for layer l's combine and shared experts
        of i. Every micro-batch re-reads the attention, shared and routed weights.
    k: chunks per micro-batch on the expert side, by local-expert subset: chunk j of an expert
        GPU's E/G local experts is A2E_j (the rows routed to subset j) -> one grouped GEMM_j
        (one launch over subset j) -> E2A_j; each waits only on its own chunk. Chunks cost a
        message latency each way and a launch, never extra weight reads.
    p: pieces of the shared experts (column slices of their FFN width), free to fill gaps of
        the attention GPU.
    template: the attention GPU's order: ``after`` (shared pieces of i right after attention
        of i) or ``deferred`` (after the attention of i + 1, so A2E of i + 1 leaves sooner).

The groups are symmetric (data-parallel attention GPUs, experts spread evenly over the expert
GPUs), so one attention GPU, the hottest expert GPU and their NIC ports stand for the cluster.
A2E moves the attention GPU's rows out of its egress port and the expert GPU's rows into its
ingress port at the same time; the busier port sets the transfer's duration, so the task runs
on that port (likewise for E2A). A split with more attention than expert GPUs loads the expert
ports more.

Policies, each scored on the same executor model:
* ``serial``: one micro-batch, one chunk, nothing overlaps (shared experts before dispatch).
* ``pppipe-paper``: MegaScale-Infer as published: m in {3, 4}, one chunk, shared experts
  serial before A2E (MegaScale-Infer has no shared-expert handling).
* ``pppipe-tuned``: ping-pong at its best m in 1..16, shared experts overlapping A2E.
* ``moesched``: (m, k, p, template) searched by a local search on the forward pass, the best
  candidates reordered by greedy list scheduling and CP-SAT.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from hwmodel import costs
from hwmodel.plan import ComputeTask, Plan, Residency, TransferTask, WeightSlice
from hwmodel.spec import Hardware, Link, ModelSpec
from solvers import portfolio
from solvers.common import Backend, Budget, budget_of
from solvers.common import account as make_account
from solvers.ordering.graph import AnyTask, TaskGraph, list_schedule
from solvers.ordering.solve import ordering_portfolio

Policy = Literal["serial", "pppipe-paper", "pppipe-tuned", "moesched"]
Template = Literal["after", "deferred"]
POLICIES: tuple[Policy, ...] = ("serial", "pppipe-paper", "pppipe-tuned", "moesched")

RUNTIME_RESERVE_FRACTION = 0.10
"""Share of every GPU's memory kept for activations, workspace and the CUDA context: vLLM's
default ``gpu_memory_utilization`` of 0.9 [src: vLLM engine arguments]."""

FP8_ELEMENT_BYTES = 1.0 + 4.0 / 128
"""FP8 dispatch: one byte per element plus a float32 scale per 128 channels (DeepEP's FP8
dispatch / BF16 combine, hardware.md S-N3; DeepSeek-V3's 1x128 activation tiles)."""

MAX_MICRO_BATCHES = 16
MAX_SHARED_PIECES = 4


@dataclass(frozen=True)
class DepProblem:
    """One decode step of ``batch_tokens`` sequences (one new token each) over a run of
    ``num_layers`` MoE layers at ``context_tokens`` of KV cache per sequence.

    Options: ``fp8_dispatch`` (A2E in FP8 with scales, E2A in BF16), ``dedup_per_node``
    (a token crosses the network once per expert node and chunk it is routed to, DeepEP's
    node-level forwarding), ``expert_load`` (share of routed rows per logical expert, e.g. a
    trace's histogram; None: balanced), ``expert_gpus_per_node`` (for the dedup),
    ``expert_load_by_layer`` (one load per layer). Caveat of the last, measured on the ESFT
    trace: the representative expert GPU follows each layer's hottest GPU, so its NIC ports
    change from layer to layer and their contention across layers is under-counted (a
    NIC-bound run came out faster than with balanced routing); the benchmark leaves it out.
    """

    hardware: Hardware
    model: ModelSpec
    batch_tokens: int
    num_layers: int = 16
    context_tokens: int = 2048
    fp8_dispatch: bool = False
    dedup_per_node: bool = False
    expert_load: tuple[float, ...] | None = None
    expert_gpus_per_node: int = 8
    expert_load_by_layer: tuple[tuple[float, ...], ...] | None = None

    @property
    def attention_gpus(self) -> tuple[str, ...]:
        return self.hardware.groups["attention"]

    @property
    def expert_gpus(self) -> tuple[str, ...]:
        return self.hardware.groups["experts"]

    @property
    def sequences_per_attention_gpu(self) -> int:
        """The largest share of the batch on one attention GPU (it sets the pace)."""
        return -(-self.batch_tokens // len(self.attention_gpus))

    @property
    def experts_per_gpu(self) -> int:
        return self.model.num_routed_experts // len(self.expert_gpus)

    def load(self) -> list[float]:
        """Share of routed rows per logical expert (sums to 1), the same in every layer."""
        e = self.model.num_routed_experts
        if self.expert_load is None:
            return [1.0 / e] * e
        total = float(sum(self.expert_load))
        return [x / total for x in self.expert_load]

    def layer_loads(self) -> list[list[float]]:
        """One load per distinct layer of the run: layer l uses entry l % len (one entry
        unless ``expert_load_by_layer`` is given)."""
        if self.expert_load_by_layer is None:
            return [self.load()]
        return [[x / float(sum(row)) for x in row] for row in self.expert_load_by_layer]

    def hottest_expert_gpu(self, load: Sequence[float] | None = None) -> int:
        """Index of the expert GPU with the most routed rows (it sets the expert stage)."""
        per = self.experts_per_gpu
        load = self.load() if load is None else load
        sums = [sum(load[g * per : (g + 1) * per]) for g in range(len(self.expert_gpus))]
        return max(range(len(sums)), key=lambda g: (sums[g], -g))

    def attention_memory_bytes(self) -> dict[str, float]:
        """What one attention GPU holds, by part (bytes): weights of every layer, KV cache,
        runtime reserve."""
        m, att = self.model, self.model.attention
        cap = self.hardware.memory_of(self.attention_gpus[0]).capacity_bytes
        shared = m.num_shared_experts * m.num_matrices * m.hidden_size * m.shared_expert_ffn_size
        return {
            "attention_weights": (att.params_per_layer if att else 0)
            * m.bytes_per_weight
            * m.num_moe_layers,
            "shared_expert_weights": shared * m.bytes_per_weight * m.num_moe_layers,
            "kv_cache": costs.kv_cache_bytes(
                m, self.sequences_per_attention_gpu, self.context_tokens
            ),
            "runtime_reserve": RUNTIME_RESERVE_FRACTION * cap,
        }

    def expert_memory_bytes(self) -> float:
        """Routed-expert weights one expert GPU holds (every MoE layer)."""
        return self.experts_per_gpu * self.model.expert_bytes() * self.model.num_moe_layers

    def max_sequences_per_attention_gpu(self) -> int:
        """The most decode sequences one attention GPU's KV cache holds at this context."""
        parts = self.attention_memory_bytes()
        cap = self.hardware.memory_of(self.attention_gpus[0]).capacity_bytes
        free = cap - parts["attention_weights"] - parts["shared_expert_weights"]
        free -= parts["runtime_reserve"]
        per_seq = costs.kv_cache_bytes(self.model, 1, self.context_tokens)
        return max(0, int(free // per_seq)) if per_seq > 0 else 10**9

    def check(self) -> list[str]:
        """Messages (field: reason) for every way the problem cannot be built or run."""
        out = []
        for group in ("attention", "experts"):
            if group not in self.hardware.groups:
                out.append(f"hardware.groups: needs an '{group}' group (a DEP preset has both)")
        if out:
            return out
        attn, exp = self.attention_gpus, self.expert_gpus
        if (
            self.hardware.link_between(attn[0], exp[0]) is None
            or self.hardware.link_between(exp[0], attn[0]) is None
        ):
            out.append("hardware.links: need links both ways between the groups")
        if self.batch_tokens < len(attn):
            out.append(f"batch_tokens: fewer than one token per attention GPU ({len(attn)})")
        if self.model.num_routed_experts % len(exp):
            out.append("model.num_routed_experts: must divide evenly over the expert GPUs")
            return out
        if self.num_layers < 1 or self.num_layers > self.model.num_moe_layers:
            out.append(f"num_layers: must be 1..{self.model.num_moe_layers} (the model's depth)")
        for row in self.expert_load_by_layer or ():
            if len(row) != self.model.num_routed_experts or min(row) < 0 or sum(row) <= 0:
                out.append(
                    "expert_load_by_layer: every row needs one share >= 0 per routed expert, "
                    "with a positive sum"
                )
                break
        if self.expert_load_by_layer is not None and self.dedup_per_node:
            out.append("dedup_per_node: modelled for balanced routing only")
        if self.expert_load is not None:
            if len(self.expert_load) != self.model.num_routed_experts:
                out.append("expert_load: needs one share per routed expert")
            elif min(self.expert_load) < 0 or sum(self.expert_load) <= 0:
                out.append("expert_load: shares must be >= 0 with a positive sum")
            elif self.dedup_per_node:
                out.append("dedup_per_node: modelled for balanced routing only")
        cap = self.hardware.memory_of(attn[0]).capacity_bytes
        used = sum(self.attention_memory_bytes().values())
        if used > cap:
            fit = self.max_sequences_per_attention_gpu()
            out.append(
                f"batch_tokens: {self.sequences_per_attention_gpu} sequences per attention GPU "
                f"need {used / 1e9:.1f} GB (KV cache at {self.context_tokens} tokens, weights, "
                f"reserve) > {cap / 1e9:.1f} GB; at most {fit} fit"
            )
        exp_cap = self.hardware.memory_of(exp[0]).capacity_bytes
        exp_used = self.expert_memory_bytes() + RUNTIME_RESERVE_FRACTION * exp_cap
        if exp_used > exp_cap:
            out.append(
                f"hardware.groups: {self.experts_per_gpu} experts x {self.model.num_moe_layers} "
                f"layers per expert GPU need {exp_used / 1e9:.1f} GB > {exp_cap / 1e9:.1f} GB"
            )
        return out

    def residency(self) -> Residency:
        """Expert GPU g holds experts g * E/G .. for every layer; every GPU reserves its
        non-expert bytes (attention GPUs: weights, KV cache, reserve; expert GPUs: reserve)."""
        hw = self.hardware
        per = self.experts_per_gpu
        reserved = {
            hw.device(d).memory_id: float(sum(self.attention_memory_bytes().values()))
            for d in self.attention_gpus
        }
        for d in self.expert_gpus:
            cap = hw.memory_of(d).capacity_bytes
            reserved[hw.device(d).memory_id] = RUNTIME_RESERVE_FRACTION * cap
        return Residency(
            by_memory={
                hw.device(d).memory_id: tuple(WeightSlice(expert=g * per + e) for e in range(per))
                for g, d in enumerate(self.expert_gpus)
            },
            reserved_bytes=reserved,
        )


def _split(total: int, parts: int) -> list[int]:
    """``total`` into ``parts`` integers differing by at most one (larger first)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _apportion(total: int, shares: Sequence[float]) -> list[int]:
    """``total`` into integers proportional to ``shares`` (largest remainder, ties to the
    lower index), summing to ``total``."""
    raw = [total * s for s in shares]
    out = [math.floor(x) for x in raw]
    left = total - sum(out)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - out[i]), i))
    for i in order[:left]:
        out[i] += 1
    return out


def _hit_probability(num_experts: int, subset: int, top_k: int) -> float:
    """P(a token's top_k distinct experts, drawn uniformly, include one of ``subset``)."""
    if subset <= 0:
        return 0.0
    if num_experts - subset < top_k:
        return 1.0
    return 1.0 - math.comb(num_experts - subset, top_k) / math.comb(num_experts, top_k)


# ---------------------------------------------------------------------------- the task graph


@dataclass(frozen=True)
class Shape:
    """A point of the search space: m micro-batches, k expert chunks, p shared pieces, the
    attention GPU's template, and whether A2E waits for the shared experts (serial)."""

    m: int
    k: int
    p: int = 1
    template: Template = "after"
    shared_before_a2e: bool = False

    def label(self) -> str:
        tail = ", shared before A2E" if self.shared_before_a2e else ""
        return f"m={self.m}, k={self.k}, p={self.p}, {self.template}{tail}"


@dataclass(slots=True)
class _Node:
    """A task before it becomes a plan task: what it is, where, and what it waits on."""

    id: str
    kind: str  # attn | shared | a2e | gemm | e2a
    layer: int
    mb: int
    resource: str
    key: tuple[object, ...]  # everything its duration depends on
    preds: list[int]
    tokens: int
    rows: tuple[int, ...] = ()
    expert: int = 0
    ffn: tuple[int, int] = (0, 0)
    link: str = ""
    src: str = ""
    dst: str = ""


@dataclass
class DepGraph:
    """Tasks in emission order (a data-flow order and every resource's queue order) with
    their durations in cycles."""

    problem: DepProblem
    shape: Shape
    nodes: list[_Node]
    duration: list[int]

    def makespan(self) -> int:
        """The forward pass: each task starts when its inputs have ended and its resource
        has finished the task emitted before it."""
        end = [0] * len(self.nodes)
        free: dict[str, int] = {}
        for i, n in enumerate(self.nodes):
            start = max(free.get(n.resource, 0), max((end[p] for p in n.preds), default=0))
            end[i] = start + self.duration[i]
            free[n.resource] = end[i]
        return max(end, default=0)

    def work_by_resource(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n, d in zip(self.nodes, self.duration, strict=True):
            out[n.resource] = out.get(n.resource, 0) + d
        return out

    def tasks(self) -> list[AnyTask]:
        """The plan tasks, in emission order."""
        return [self._task(n) for n in self.nodes]

    def _task(self, n: _Node) -> AnyTask:
        after = tuple(self.nodes[p].id for p in n.preds)
        p = self.problem
        if n.kind == "attn":
            return ComputeTask(
                id=n.id, device_id=n.resource, op="attention", layer=n.layer,
                num_tokens=n.tokens, num_sequences=max(n.tokens, 1), micro_batch=n.mb,
                after=after,
            )  # fmt: skip
        if n.kind == "shared":
            return ComputeTask(
                id=n.id, device_id=n.resource, op="shared_expert", layer=n.layer,
                num_tokens=n.tokens, ffn_start=n.ffn[0], ffn_end=n.ffn[1], micro_batch=n.mb,
                after=after,
            )  # fmt: skip
        if n.kind == "gemm":
            return ComputeTask(
                id=n.id, device_id=n.resource, op="expert", layer=n.layer, expert=n.expert,
                num_tokens=sum(n.rows), group_rows=n.rows, micro_batch=n.mb, after=after,
            )  # fmt: skip
        fp8 = p.fp8_dispatch and n.kind == "a2e"
        return TransferTask(
            id=n.id, link_id=n.link, src_device_id=n.src, dst_device_id=n.dst,
            payload="activations", layer=n.layer, num_tokens=n.tokens, micro_batch=n.mb,
            element_bytes=FP8_ELEMENT_BYTES if fp8 else None, after=after,
        )  # fmt: skip


_Side = tuple[int, str, Link, Link, Link | None, Link | None]


class _Builder:
    """Builds DepGraphs of one problem; durations cached by what they depend on."""

    def __init__(self, problem: DepProblem) -> None:
        self.p = problem
        hw, model = problem.hardware, problem.model
        self.attn = problem.attention_gpus[0]
        self.cache: dict[tuple[object, ...], int] = {}
        self.rows_cache: dict[tuple[object, ...], list[tuple[int, int, tuple[int, ...], int]]] = {}
        self.shared_width = model.num_shared_experts * model.shared_expert_ffn_size
        self.loads = problem.layer_loads()
        self.sides = [self._side(hw, load) for load in self.loads]
        self.use_layer(0)

    def _side(
        self, hw: Hardware, load: list[float]
    ) -> tuple[int, str, Link, Link, Link | None, Link | None]:
        """(hottest expert GPU, its id, A2E egress, E2A egress, A2E ingress, E2A ingress)."""
        g = self.p.hottest_expert_gpu(load)
        exp = self.p.expert_gpus[g]
        a2e_out = hw.link_between(self.attn, exp)
        e2a_out = hw.link_between(exp, self.attn)
        assert a2e_out is not None and e2a_out is not None
        a2e_in = _ingress(hw, exp, a2e_out.id, self.p.attention_gpus)
        e2a_in = _ingress(hw, self.attn, e2a_out.id, self.p.expert_gpus)
        return g, exp, a2e_out, e2a_out, a2e_in, e2a_in

    def use_layer(self, layer: int) -> None:
        """Point the builder at layer ``layer``'s routing: its load and hottest expert GPU."""
        self.side = layer % len(self.loads)
        self.load = self.loads[self.side]
        self.g, self.exp, self.a2e_out, self.e2a_out, self.a2e_in, self.e2a_in = self.sides[
            self.side
        ]
        self.first_local = self.g * self.p.experts_per_gpu

    def cycles(self, node: _Node, proto: AnyTask) -> int:
        got = self.cache.get(node.key)
        if got is None:
            _, got, _ = costs.task_cycles(
                self.p.hardware, self.p.model, proto, self.p.context_tokens
            )
            self.cache[node.key] = got
        return got

    def chunks(self, k: int) -> list[tuple[int, int]]:
        """Local-expert subsets [start, end) of the k chunks (empty ones dropped)."""
        sizes = [s for s in _split(self.p.experts_per_gpu, k) if s > 0]
        starts = list(itertools.accumulate([0, *sizes]))
        return list(itertools.pairwise(starts))

    def expert_rows(self, group_tokens: int) -> list[int]:
        """Rows of every logical expert for ``group_tokens`` tokens of the whole group."""
        return _apportion(group_tokens * self.p.model.top_k, self.load)

    def port_rows(self, n: int, chunk: tuple[int, int], rows: list[int]) -> tuple[int, int]:
        """(attention-port rows, expert-port rows) of chunk ``chunk`` of a micro-batch of
        ``n`` sequences per attention GPU."""
        p, model = self.p, self.p.model
        lo, hi = chunk
        per, num_gpus = p.experts_per_gpu, len(p.expert_gpus)
        mine = rows[self.first_local + lo : self.first_local + hi]
        exp_rows = int(sum(mine))
        if p.dedup_per_node:
            e = model.num_routed_experts
            gpn = max(1, min(p.expert_gpus_per_node, num_gpus))
            nodes = -(-num_gpus // gpn)
            hit = _hit_probability(e, (hi - lo) * gpn, model.top_k)
            attn_rows = math.ceil(n * nodes * hit)
            group = n * len(p.attention_gpus)
            exp_rows = math.ceil(group * hit / gpn)
            return attn_rows, exp_rows
        share = sum(sum(self.load[g * per + lo : g * per + hi]) for g in range(num_gpus))
        return round(n * model.top_k * share), exp_rows

    def chunk_rows(
        self, n: int, chunks: list[tuple[int, int]]
    ) -> list[tuple[int, int, tuple[int, ...], int]]:
        """Per chunk of a micro-batch of ``n`` sequences per attention GPU: (attention-port
        rows, expert-port rows, rows of each local expert of the chunk, its first expert)."""
        key = (self.side, n, tuple(chunks))
        got = self.rows_cache.get(key)
        if got is None:
            rows = self.expert_rows(n * len(self.p.attention_gpus))
            got = []
            for chunk in chunks:
                attn_rows, exp_rows = self.port_rows(n, chunk, rows)
                lo, hi = chunk
                grp = tuple(rows[self.first_local + lo : self.first_local + hi])
                got.append((attn_rows, exp_rows, grp, self.first_local + lo))
            self.rows_cache[key] = got
        return got

    def makespan(self, shape: Shape) -> int:
        """``build(shape).makespan()`` without building every layer: layers 1.. repeat layer
        1's tasks, each waiting on the same positions of the layer before, so the forward
        pass runs over layer 0's and layer 1's durations with shifted indices (the tests
        check it equals the full build)."""
        layers = self.p.num_layers
        if layers <= 2 or len(self.loads) > 1:
            return self.build(shape).makespan()
        g = self.build(shape, num_layers=2)
        n0 = sum(1 for n in g.nodes if n.layer == 0)
        n1 = len(g.nodes) - n0
        if n0 != n1:
            return self.build(shape).makespan()
        res_id: dict[str, int] = {}
        res = [res_id.setdefault(n.resource, len(res_id)) for n in g.nodes]
        dur, preds = g.duration, [n.preds for n in g.nodes]
        free = [0] * len(res_id)
        end = [0] * (n0 * layers)
        last = 0
        for i in range(n0 * layers):
            t = i if i < n0 else n0 + (i - n0) % n1
            shift = i - t
            start = free[res[t]]
            for q in preds[t]:
                e = end[q + shift]
                if e > start:
                    start = e
            e = start + dur[t]
            end[i] = e
            free[res[t]] = e
            if e > last:
                last = e
        return last

    def build(
        self, shape: Shape, micro: Sequence[int] | None = None, num_layers: int | None = None
    ) -> DepGraph:
        p = self.p
        n_per = p.sequences_per_attention_gpu
        if micro is None:
            micro = [t for t in _split(n_per, min(shape.m, n_per)) if t > 0]
        chunks = self.chunks(shape.k)
        pieces = (
            [(a, b) for a, b in itertools.pairwise(
                list(itertools.accumulate([0, *_split(self.shared_width, shape.p)])))
             if b > a]
            if self.shared_width
            else []
        )  # fmt: skip
        nodes: list[_Node] = []
        duration: list[int] = []
        graph = DepGraph(p, shape, nodes, duration)

        def add(node: _Node) -> int:
            nodes.append(node)
            got = self.cache.get(node.key)
            duration.append(got if got is not None else self.cycles(node, graph._task(node)))
            return len(nodes) - 1

        done: dict[int, list[int]] = {}  # micro-batch -> what its next layer waits on
        for layer in range(p.num_layers if num_layers is None else num_layers):
            self.use_layer(layer)
            pending_shared: list[tuple[int, int]] = []  # (mb, attention node) deferred
            for i, n in enumerate(micro):
                pre = f"L{layer}.mb{i}"
                a = add(_Node(
                    f"{pre}.attn", "attn", layer, i, self.attn, ("attn", n), done.get(i, []), n,
                ))  # fmt: skip
                shared_ids: list[int] = []
                if shape.template == "deferred" and not shape.shared_before_a2e:
                    for mb, att in pending_shared:
                        done[mb] += self._shared(add, layer, mb, micro[mb], att, pieces)
                    pending_shared = [(i, a)]
                else:
                    shared_ids = self._shared(add, layer, i, n, a, pieces)
                waits = shared_ids if shape.shared_before_a2e and shared_ids else [a]
                finals = list(shared_ids)
                for j, (attn_rows, exp_rows, grp, first) in enumerate(self.chunk_rows(n, chunks)):
                    if attn_rows + exp_rows == 0:
                        continue
                    x = add(self._xfer(f"{pre}.a2e{j}", "a2e", layer, i, attn_rows, exp_rows,
                                       waits))  # fmt: skip
                    gm = add(_Node(
                        f"{pre}.gemm{j}", "gemm", layer, i, self.exp, ("gemm", self.exp, grp), [x],
                        sum(grp), rows=grp, expert=first,
                    ))  # fmt: skip
                    finals.append(add(self._xfer(f"{pre}.e2a{j}", "e2a", layer, i, attn_rows,
                                                 exp_rows, [gm])))  # fmt: skip
                done[i] = finals
            for mb, att in pending_shared:
                done[mb] += self._shared(add, layer, mb, micro[mb], att, pieces)
        return graph

    def _shared(
        self, add: object, layer: int, mb: int, n: int, attn: int, pieces: list[tuple[int, int]]
    ) -> list[int]:
        assert callable(add)
        return [
            add(_Node(
                f"L{layer}.mb{mb}.shared{q}", "shared", layer, mb, self.attn,
                ("shared", n, lo, hi), [attn], n, ffn=(lo, hi),
            ))
            for q, (lo, hi) in enumerate(pieces)
        ]  # fmt: skip

    def _xfer(
        self, tid: str, kind: str, layer: int, mb: int, attn_rows: int, exp_rows: int,
        preds: list[int],
    ) -> _Node:  # fmt: skip
        """A2E/E2A on the busier of its two ports, moving that port's rows."""
        if kind == "a2e":
            out, inn, src, dst = self.a2e_out, self.a2e_in, self.attn, self.exp
            on_out = attn_rows >= exp_rows or inn is None
            link, tokens = (out.id, attn_rows) if on_out else (inn.id, exp_rows)  # type: ignore[union-attr]
        else:
            out, inn, src, dst = self.e2a_out, self.e2a_in, self.exp, self.attn
            on_out = exp_rows >= attn_rows or inn is None
            link, tokens = (out.id, exp_rows) if on_out else (inn.id, attn_rows)  # type: ignore[union-attr]
        return _Node(
            tid, kind, layer, mb, link, (kind, link, tokens), preds, tokens, link=link,
            src=src, dst=dst,
        )  # fmt: skip


def _ingress(hw: Hardware, dst: str, egress_id: str, sources: Sequence[str]) -> Link | None:
    """The receiving port of ``dst`` from its peer group: a link other than the egress that
    ends at ``dst`` alone (None when the hardware models no separate ingress)."""
    for lk in hw.links:
        if lk.id != egress_id and lk.dst_device_ids == (dst,) and sources[0] in lk.src_device_ids:
            return lk
    return None


# ---------------------------------------------------------------------------- search and bound


def policy_shapes(
    problem: DepProblem, policy: Policy, max_m: int = MAX_MICRO_BATCHES
) -> list[Shape]:
    """The shapes a baseline policy may take (moesched's are searched, not listed)."""
    if policy == "serial":
        return [Shape(1, 1, 1, "after", shared_before_a2e=True)]
    if policy == "pppipe-paper":
        return [Shape(m, 1, 1, "after", shared_before_a2e=True) for m in (3, 4)]
    if policy == "pppipe-tuned":
        return [Shape(m, 1, 1, "after") for m in range(1, max_m + 1)]
    raise ValueError(f"policy: '{policy}' is searched, not listed")


@dataclass
class SearchLog:
    """Every shape the search evaluated, with its forward-pass makespan in cycles."""

    cycles: dict[Shape, int] = field(default_factory=dict)

    def best(self, count: int = 1) -> list[Shape]:
        return sorted(self.cycles, key=lambda s: (self.cycles[s], s.m, s.k, s.p, s.template))[
            :count
        ]


def _neighbours(s: Shape, max_m: int, max_k: int, max_p: int) -> Iterable[Shape]:
    for m in (s.m - 1, s.m + 1):
        if 1 <= m <= max_m:
            yield Shape(m, s.k, s.p, s.template)
    divisors = [d for d in range(1, max_k + 1) if max_k % d == 0]
    up = next((d for d in divisors if d > s.k), s.k)
    down = next((d for d in reversed(divisors) if d < s.k), s.k)
    for k in sorted({s.k - 1, s.k + 1, s.k * 2, s.k // 2, up, down}):
        if 1 <= k <= max_k and k != s.k:
            yield Shape(s.m, k, s.p, s.template)
    for q in (s.p - 1, s.p + 1):
        if 1 <= q <= max_p:
            yield Shape(s.m, s.k, q, s.template)
    if max_p > 1 or s.template == "deferred":
        yield Shape(s.m, s.k, s.p, "deferred" if s.template == "after" else "after")


def search_shapes(
    builder: _Builder, max_m: int = MAX_MICRO_BATCHES, seeds: Sequence[Shape] = ()
) -> SearchLog:
    """Local search over (m, k, p, template) on the forward pass: from each seed, move to the
    best neighbour (m +- 1; k +- 1, x2, /2 and the next divisors of E/G up and down, where
    chunks are equal; p +- 1; the other template) while it improves. FinDEP's linear
    alpha + beta * x costs make the surface near-unimodal in m and k (uneven chunks make dents
    in k, hence the divisor moves), so a few seeds reach the optimum of the grid at a fraction
    of its size (the tests compare); then every k at the best (m, p, template), and a last
    descent from there if that found a better point."""
    p = builder.p
    max_k = p.experts_per_gpu
    max_p = MAX_SHARED_PIECES if p.model.num_shared_experts else 1
    log = SearchLog()

    def score(s: Shape) -> int:
        got = log.cycles.get(s)
        if got is None:
            got = builder.makespan(s)
            log.cycles[s] = got
        return got

    starts = list(seeds) or [
        Shape(2, 1),
        Shape(2, max(1, max_k // 2)),
        Shape(min(4, max_m), min(4, max_k)),
    ]

    def descend(here: Shape) -> Shape:
        while True:
            best = min(_neighbours(here, max_m, max_k, max_p), key=lambda s: (score(s), s.m, s.k))
            if score(best) >= score(here):
                return here
            here = best

    for seed in starts:
        descend(seed)
    # Every k at the best (m, p, template): uneven chunks dent the k axis deeper than the
    # moves reach (Qwen3-235B on H20 at 4k context: k = 4 a local optimum, k = 6 better).
    top = log.best(1)[0]
    for k in range(1, max_k + 1):
        score(Shape(top.m, k, top.p, top.template))
    if log.best(1)[0] != top:
        descend(log.best(1)[0])
    return log


def _one_machine_bounds(builder: _Builder, shape: Shape) -> dict[str, int]:
    """Per resource R of the shape's task graph: min head + total work + min tail, where head
    and tail are the longest dependency paths into R's tasks and out of them (resources
    ignored), with shared-expert tasks counted as zero so that the bound holds for any number
    of shared pieces. Layers repeat, so heads and tails come from a two-layer graph (the
    first layer's heads and the last layer's tails are the same in the full run; earlier
    layers only lengthen tails) and the work is layer 0's plus (L - 1) times layer 1's."""
    layers = builder.p.num_layers
    periodic = len(builder.loads) == 1 and layers > 2
    g = builder.build(shape, num_layers=2 if periodic else None)
    n = len(g.nodes)
    dur = [0 if x.kind == "shared" else d for x, d in zip(g.nodes, g.duration, strict=True)]
    head = [0] * n
    succs: list[list[int]] = [[] for _ in range(n)]
    for i, x in enumerate(g.nodes):
        for q in x.preds:
            head[i] = max(head[i], head[q] + dur[q])
            succs[q].append(i)
    after = [0] * n  # longest path from the task's end to the end of the graph
    for i in range(n - 1, -1, -1):
        after[i] = max((dur[s] + after[s] for s in succs[i]), default=0)
    work: dict[str, int] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, x in enumerate(g.nodes):
        weight = 1 if not periodic or x.layer == 0 else layers - 1
        work[x.resource] = work.get(x.resource, 0) + weight * g.duration[i]
        first[x.resource] = min(first.get(x.resource, head[i]), head[i])
        last[x.resource] = min(last.get(x.resource, after[i]), after[i])
    out = {r: first[r] + work[r] + last[r] for r in work}
    out[CRITICAL_PATH] = _critical_path(g, head, dur, layers if periodic else None)
    out[CHAIN] = _chain_bound(g, dur, layers if periodic else None)
    return out


CRITICAL_PATH = "critical path"
CHAIN = "micro-batch chain"


def _critical_path(g: DepGraph, head: list[int], dur: list[int], layers: int | None) -> int:
    """The longest dependency chain (resources ignored, shared experts as zero). Micro-batch
    i's layers form one chain: attention of layer l + 1 waits on layer l's combine, so with
    D_i = the head of layer 1's attention of i (layer 0's is 0) and T_i the longest path
    within layer 0, a run of L layers is (L - 1) * D_i + T_i. ``layers`` None: ``g`` is the
    whole run, read directly."""
    if layers is None:
        return max((h + d for h, d in zip(head, dur, strict=True)), default=0)
    best = 0
    for i in {x.mb for x in g.nodes}:
        attn1 = next(j for j, x in enumerate(g.nodes) if x.kind == "attn" and x.layer == 1
                     and x.mb == i)  # fmt: skip
        t0 = max(head[j] + dur[j] for j, x in enumerate(g.nodes) if x.layer == 0 and x.mb == i)
        best = max(best, (layers - 1) * head[attn1] + t0)
    return best


FLOW_SHOP_STATES = 20_000
"""Most job-count vectors the exact flow-shop DP visits; beyond it the chain falls back to
the one-machine bounds within the layer (valid, weaker)."""


def _flow_shop_cycles(jobs: Sequence[tuple[int, int, int]]) -> int | None:
    """Least makespan (cycles) of a three-machine flow shop: job j runs ``jobs[j][0]`` on
    machine 1, then ``[1]`` on machine 2, then ``[2]`` on machine 3, each machine one job at a
    time. For three machines a permutation schedule is optimal (Johnson 1954; Conway, Maxwell
    and Miller, Theory of Scheduling, 1967, 6-3), so a DP over how many jobs of each distinct
    type are sequenced, keeping the Pareto set of (machine 2, machine 3) completion times
    (machine 1's is fixed by the set), is exact. None when the state space exceeds
    ``FLOW_SHOP_STATES`` (many distinct job types)."""
    types = sorted(set(jobs))
    counts = [sum(1 for j in jobs if j == t) for t in types]
    if math.prod(c + 1 for c in counts) > FLOW_SHOP_STATES:
        return None
    fronts: dict[tuple[int, ...], list[tuple[int, int]]] = {tuple([0] * len(types)): [(0, 0)]}
    for _ in range(len(jobs)):
        nxt: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for state, front in fronts.items():
            c1 = sum(n * t[0] for n, t in zip(state, types, strict=True))
            for q, t in enumerate(types):
                if state[q] == counts[q]:
                    continue
                s2 = (*state[:q], state[q] + 1, *state[q + 1 :])
                e1 = c1 + t[0]
                nxt.setdefault(s2, []).extend(
                    (e2, max(c3, e2) + t[2]) for c2, c3 in front for e2 in (max(c2, e1) + t[1],)
                )
        fronts = {s: _pareto(f) for s, f in nxt.items()}
    return min(c3 for front in fronts.values() for _, c3 in front) if jobs else 0


def _pareto(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The points no other point is <= in both coordinates (smaller is better)."""
    out: list[tuple[int, int]] = []
    for a, b in sorted(set(points)):
        if not out or b < out[-1][1]:
            out.append((a, b))
    return out


def _layer_chain(g: DepGraph, idx: list[int], dur: list[int]) -> int:
    """Least time (cycles) from the start of one micro-batch's attention in one layer to the
    end of that layer's work of the micro-batch (``idx``: its tasks; ``dur`` with shared
    experts as zero), resources counted but other micro-batches ignored: the attention, then
    the k chunks A2E_j -> GEMM_j -> E2A_j as an exact three-machine flow shop when the chunks
    use one port, the expert GPU and one port, all distinct; otherwise the best one-machine
    bound within the layer (head + work + tail on each resource)."""
    nodes = g.nodes
    inside = set(idx)
    attn = [i for i in idx if nodes[i].kind == "attn"]
    e2a = [i for i in idx if nodes[i].kind == "e2a"]
    jobs: list[tuple[int, int, int]] = []
    machines: set[tuple[str, str, str]] = set()
    for z in e2a:
        gm = nodes[z].preds[0]
        x = nodes[gm].preds[0]
        jobs.append((dur[x], dur[gm], dur[z]))
        machines.add((nodes[x].resource, nodes[gm].resource, nodes[z].resource))
    clean = len(attn) == 1 and len(machines) <= 1 and all(len(set(ms)) == 3 for ms in machines)
    if clean and all(nodes[q].kind in ("attn", "shared") for x in idx if nodes[x].kind == "a2e"
                     for q in nodes[x].preds):  # fmt: skip
        shop = _flow_shop_cycles(jobs)
        if shop is not None:
            return dur[attn[0]] + shop
    head = {i: 0 for i in idx}
    for i in idx:  # idx is in emission order, a data-flow order
        head[i] = max((head[q] + dur[q] for q in nodes[i].preds if q in inside), default=0)
    tail = {i: 0 for i in idx}
    for i in reversed(idx):
        for q in nodes[i].preds:
            if q in inside:
                tail[q] = max(tail[q], dur[i] + tail[i])
    by_res: dict[str, list[int]] = {}
    for i in idx:
        by_res.setdefault(nodes[i].resource, []).append(i)
    best = max(head[i] + dur[i] + tail[i] for i in idx)
    for ts in by_res.values():
        best = max(best, min(head[i] for i in ts) + sum(dur[i] for i in ts)
                   + min(tail[i] for i in ts))  # fmt: skip
    return best


def _chain_bound(g: DepGraph, dur: list[int], layers: int | None) -> int:
    """The longest micro-batch chain with each layer's resources counted: the attention of
    micro-batch i in layer l + 1 waits for all of i's combine in layer l, and each layer of i
    takes at least ``_layer_chain`` from the start of its attention, so the run takes at least
    the sum over layers for every i. ``layers`` given: ``g`` holds two layers of a run of that
    many identical layers (layer 0's chain stands for each); None: ``g`` is the whole run."""
    per: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(g.nodes):
        if layers is None or x.layer == 0:
            per.setdefault((x.mb, x.layer), []).append(i)
    total: dict[int, int] = {}
    for (mb, _), idx in per.items():
        total[mb] = total.get(mb, 0) + _layer_chain(g, idx, dur)
    return max(total.values(), default=0) * (layers or 1)


def _serial_layers_bound(builder: _Builder) -> int:
    """m = 1: layer l + 1's attention waits for all of layer l, so each layer takes its
    attention plus the busiest expert-side resource's work of that layer (at k = 1, the
    least work), and the attention GPU's total work (shared experts included) bounds too."""
    g = builder.build(Shape(1, 1, 1))
    per_layer: dict[tuple[int, str], int] = {}
    attn = total_attn_gpu = 0
    for n, d in zip(g.nodes, g.duration, strict=True):
        if n.resource == builder.attn:
            total_attn_gpu += d
        if n.kind == "attn":
            attn += d
        elif n.kind != "shared":
            per_layer[(n.layer, n.resource)] = per_layer.get((n.layer, n.resource), 0) + d
    side = [
        max((w for (ly, _), w in per_layer.items() if ly == layer), default=0)
        for layer in range(builder.p.num_layers)
    ]
    return max(attn + sum(side), total_attn_gpu)


def lower_bound(builder: _Builder, max_m: int = MAX_MICRO_BATCHES) -> tuple[int, str]:
    """A bound on the makespan of every plan moesched can express (m <= max_m equal
    micro-batches, k <= E/G chunks, any shared pieces, template and order), and what sets it.

    For each (m, k): the largest of the one-machine bounds (``_one_machine_bounds``: each
    resource's work plus the fill it cannot avoid at that granularity: more chunks shorten
    the fill and add launches and latencies), the critical path and the micro-batch chain
    (``_chain_bound``: a micro-batch's layers in sequence, each one's chunks an exact flow
    shop); at m = 1 also ``_serial_layers_bound``. The bound is the least over all (m, k): no
    plan beats it.
    """
    p = builder.p
    serial = _serial_layers_bound(builder)
    best: tuple[int, str] | None = None
    for m in range(1, min(max_m, p.sequences_per_attention_gpu) + 1):
        for k in range(1, p.experts_per_gpu + 1):
            bounds = _one_machine_bounds(builder, Shape(m, k, 1))
            if m == 1:
                bounds["serial layers (m=1)"] = serial
            res = max(bounds, key=lambda r: (bounds[r], r))
            if best is None or bounds[res] < best[0]:
                best = (bounds[res], res)
    assert best is not None
    return best


# ---------------------------------------------------------------------------- solving


@dataclass
class PolicyResult:
    """A policy's best plan on this problem: its shape, tasks in run order and makespan."""

    policy: Policy
    shape: Shape
    tasks: list[AnyTask]
    makespan_cycles: int
    how: str  # "template" (the forward pass of the emission order), "list", "cpsat"


@dataclass
class DepSolution:
    """The chosen plan and what every policy reached, on the same executor model."""

    plan: Plan
    shape: Shape
    makespan_cycles: int
    serial_cycles: int
    pppipe_cycles: int  # pppipe-tuned
    pppipe_micro_batches: int
    pppipe_paper_cycles: int
    pppipe_paper_micro_batches: int
    lower_bound_cycles: int
    bound_resource: str
    bounding_resource: str  # the busiest resource of the chosen plan
    by_r: dict[int, int]  # moesched's best makespan per micro-batch count evaluated
    evaluations: int  # shapes the local search evaluated
    why: str
    baselines: dict[str, PolicyResult] = field(default_factory=dict)

    @property
    def micro_batches(self) -> int:
        return self.shape.m

    @property
    def chunks(self) -> int:
        return self.shape.k


def baseline(
    problem: DepProblem,
    policy: Policy,
    builder: _Builder | None = None,
    with_tasks: bool = True,
) -> PolicyResult:
    """A baseline at its best shape, in its own emission order (no solver); without
    ``with_tasks`` only the shape and makespan are filled in."""
    builder = builder or _Builder(problem)
    scored = [(builder.makespan(s), s.m, s) for s in policy_shapes(problem, policy)]
    cycles, _, shape = min(scored, key=lambda x: (x[0], x[1]))
    tasks = builder.build(shape).tasks() if with_tasks else []
    return PolicyResult(policy, shape, tasks, cycles, "template")


def resource_role(problem: DepProblem, resource: str) -> str:
    """What a resource id is, in words: attention GPU, expert GPU or which NIC port."""
    if resource in problem.attention_gpus:
        return "attention GPU"
    if resource in problem.expert_gpus:
        return "expert GPU"
    if resource.startswith("a2e_in"):
        return "A2E NIC (expert ingress)"
    if resource.startswith("a2e"):
        return "A2E NIC (attention egress)"
    if resource.startswith("e2a_in"):
        return "E2A NIC (attention ingress)"
    if resource.startswith("e2a"):
        return "E2A NIC (expert egress)"
    return resource


def _list_order(problem: DepProblem, tasks: list[AnyTask]) -> list[AnyTask]:
    graph = TaskGraph.of(problem.hardware, problem.model, tasks, problem.context_tokens)
    return graph.emit(list_schedule(graph))


def _predict(problem: DepProblem, tasks: Sequence[AnyTask]) -> int:
    from solvers import timing

    return timing.makespan(problem.hardware, problem.model, tasks, problem.context_tokens)


def solve_dep(
    problem: DepProblem,
    backend: Backend = "auto",
    deadline_s: float = 5.0,
    max_r: int = MAX_MICRO_BATCHES,
    workers: int = 2,
    finalists: int = 2,
    budget: Budget | None = None,
) -> DepSolution:
    """moesched's plan through the portfolio (``solvers.portfolio``) under ``budget``
    (default: ``deadline_s`` seconds of wall clock).

    Greedy: (m, k, p, template) by local search on the forward pass, the best ``finalists``
    in their emission order and reordered by list scheduling, and the baselines' own plans as
    candidates too, so the answer is never worse than either; the best of them. Exact: the
    exact ordering backend on that candidate's graph, hinted with its order. Bound:
    ``lower_bound`` over every shape."""
    budget = budget_of(deadline_s, workers, budget)
    started = time.perf_counter()
    builder = _Builder(problem)
    base: dict[str, PolicyResult] = {
        pol: baseline(problem, pol, builder) for pol in POLICIES if pol != "moesched"
    }
    seeds = [
        Shape(2, 1), Shape(2, max(1, problem.experts_per_gpu // 2)),
        Shape(min(4, max_r), min(4, problem.experts_per_gpu)),
        Shape(min(base["pppipe-tuned"].shape.m, max_r), 1),
    ]  # fmt: skip
    log = search_shapes(builder, max_r, seeds)
    # The baselines' plans are candidates too, and their micro-batch counts may exceed max_r:
    # the bound must hold for them as well (over m <= max_r alone it can exceed their makespan).
    bound_m = max(max_r, *(base[p].shape.m for p in ("pppipe-tuned", "pppipe-paper")))
    bound, bound_res = lower_bound(builder, bound_m)

    def greedy() -> PolicyResult:
        cands: list[PolicyResult] = []
        for shape in log.best(finalists):
            tasks = builder.build(shape).tasks()
            cands.append(PolicyResult("moesched", shape, tasks, log.cycles[shape], "template"))
            ordered = _list_order(problem, tasks)
            cands.append(
                PolicyResult("moesched", shape, ordered, _predict(problem, ordered), "list")
            )
        cands.extend(base[p] for p in ("pppipe-tuned", "pppipe-paper"))
        return min(cands, key=lambda c: (c.makespan_cycles, c.shape.m, c.shape.k))

    res = portfolio.run(
        portfolio.Portfolio(
            name="dep",
            greedy=greedy,
            objective=lambda c: c.makespan_cycles,
            check=lambda c: _ordering(problem, c.tasks).check(c.tasks),
            bound=bound,
            exact={"cpsat": _exact_order(problem, "cpsat"), "milp": _exact_order(problem, "milp")},
        ),
        backend,
        budget,
    )
    best = res.solution
    account = make_account(
        "ordering", backend, res.status, best.makespan_cycles, int(res.bound),
        time.perf_counter() - started, res.fallback_reason,
    )  # fmt: skip
    by_r: dict[int, int] = {}
    for s, c in log.cycles.items():
        by_r[s.m] = min(by_r.get(s.m, c), c)
    work = builder.build(best.shape).work_by_resource()
    busiest = max(work, key=lambda r: (work[r], r))
    return DepSolution(
        plan=Plan(tasks=tuple(best.tasks), account=account),
        shape=best.shape,
        makespan_cycles=best.makespan_cycles,
        serial_cycles=base["serial"].makespan_cycles,
        pppipe_cycles=base["pppipe-tuned"].makespan_cycles,
        pppipe_micro_batches=base["pppipe-tuned"].shape.m,
        pppipe_paper_cycles=base["pppipe-paper"].makespan_cycles,
        pppipe_paper_micro_batches=base["pppipe-paper"].shape.m,
        lower_bound_cycles=bound,
        bound_resource=resource_role(problem, bound_res) if bound_res in work else bound_res,
        bounding_resource=resource_role(problem, busiest),
        by_r=by_r,
        evaluations=len(log.cycles),
        why=_why(best, log, work, problem),
        baselines=base,
    )


def _why(best: PolicyResult, log: SearchLog, work: dict[str, int], problem: DepProblem) -> str:
    s = best.shape
    more_k = log.cycles.get(Shape(s.m, s.k * 2, s.p, s.template))
    more_m = log.cycles.get(Shape(s.m + 1, s.k, s.p, s.template))
    busiest = max(work, key=lambda r: (work[r], r))
    parts = [
        f"{best.policy} {s.label()} ({best.how}): {best.makespan_cycles} cycles; busiest "
        f"{resource_role(problem, busiest)} ({work[busiest]} cycles of work)"
    ]
    if more_k is not None:
        parts.append(f"k={s.k * 2} gives {more_k} (per-chunk latency and launch)")
    if more_m is not None:
        parts.append(f"m={s.m + 1} gives {more_m} (every micro-batch re-reads the weights)")
    return "; ".join(parts)


def _ordering(problem: DepProblem, tasks: list[AnyTask]) -> portfolio.Portfolio[list[AnyTask]]:
    graph = TaskGraph.of(problem.hardware, problem.model, tasks, problem.context_tokens)
    return ordering_portfolio(problem.hardware, problem.model, graph, problem.context_tokens)


def _exact_order(problem: DepProblem, name: str) -> portfolio.Exact[PolicyResult]:
    """The exact ordering backend on the hint's graph, hinted with its order (for the
    portfolio); its bound concerns that shape only, so it is not passed on as the DEP bound."""

    def solve(hint: PolicyResult, budget: Budget) -> portfolio.Outcome[PolicyResult]:
        if name == "milp" and len(hint.tasks) > 200:
            note = f"milp: {len(hint.tasks)} tasks exceed the disjunctive model's size (200)"
            return portfolio.Outcome(None, "too_large", note=note)
        out = _ordering(problem, hint.tasks).exact[name](hint.tasks, budget)
        if out.solution is None:
            return portfolio.Outcome(None, out.status, note=out.note)
        cycles = _predict(problem, out.solution)
        found = PolicyResult(hint.policy, hint.shape, out.solution, cycles, name)
        return portfolio.Outcome(found, "feasible", note=out.note)

    return solve


def run_time_s(problem: DepProblem, cycles: int) -> float:
    return cycles / problem.hardware.clock_hz


def throughput_tokens_per_s(problem: DepProblem, cycles: int) -> float:
    """Decode tokens per second of the whole cluster, the run's layers taken as the step."""
    return problem.batch_tokens / run_time_s(problem, cycles)


def step_time_s(problem: DepProblem, cycles: int) -> float:
    """Time per output token over the model's full depth, extrapolated from the run of
    ``num_layers`` layers (its fill and drain counted once per run: a slight over-estimate)."""
    return run_time_s(problem, cycles) * problem.model.num_moe_layers / problem.num_layers


def tokens_per_s_per_gpu(problem: DepProblem, cycles: int) -> float:
    """Decode tokens per second per GPU of the cluster at the full-depth step time."""
    gpus = len(problem.attention_gpus) + len(problem.expert_gpus)
    return problem.batch_tokens / step_time_s(problem, cycles) / gpus
