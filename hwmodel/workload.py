"""Workloads: what the batch at hand asks of each expert.

Glossary:
    histogram: ``tokens_per_expert[l][e]``, the number of tokens of the batch routed to
        logical expert ``e`` in the l-th MoE layer of the workload (shape
        ``[num_layers, num_routed_experts]``).
    gate mass: ``gate_weight_sum[l][e]``, the sum of gate weights of those tokens; the
        importance signal of substitution.
    routing trace: per token, per layer, the top-k expert ids (and gate weights), for replay;
        kept as numpy arrays (``RoutingTrace``), not pydantic, because it is large.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field, model_validator

from hwmodel.spec import MAX_COUNT, Frozen, ModelSpec


class Workload(Frozen):
    """Per-MoE-layer expert activation histogram of one batch, with optional side information."""

    layer_ids: tuple[int, ...] = Field(
        min_length=1,
        description="MoE layer index (0-based, < model.num_moe_layers) of each histogram row.",
    )
    tokens_per_expert: tuple[tuple[int, ...], ...] = Field(
        description="Tokens routed to each expert, shape [len(layer_ids), num_routed_experts]."
    )
    num_tokens: int = Field(
        ge=0, le=65536, description="Tokens in the batch (each routed to top_k experts per layer)."
    )
    context_tokens: int = Field(
        default=0,
        ge=0,
        le=10_000_000,
        description="Tokens already in the KV cache (attention cost).",
    )
    gate_weight_sum: tuple[tuple[float, ...], ...] | None = Field(
        default=None,
        description="Sum of gate weights per expert, shape [len(layer_ids), num_routed_experts].",
    )
    expert_similarity: tuple[tuple[float, ...], ...] | None = Field(
        default=None,
        description="Similarity between experts in [0, 1], shape [E, E] (substitution input).",
    )
    transitions: tuple[tuple[tuple[float, ...], ...], ...] | None = Field(
        default=None,
        description=(
            "Cross-layer transition counts, shape [len(layer_ids) - 1, E, E]: entry [l][a][b] "
            "counts tokens with expert a in row l and expert b in row l + 1."
        ),
    )

    @model_validator(mode="after")
    def _shapes(self) -> Workload:
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise ValueError("layer_ids: must be unique")
        if any(i < 0 for i in self.layer_ids):
            raise ValueError("layer_ids: must be >= 0")
        if len(self.tokens_per_expert) != len(self.layer_ids):
            raise ValueError(
                f"tokens_per_expert: {len(self.tokens_per_expert)} rows for "
                f"{len(self.layer_ids)} layer_ids"
            )
        widths = {len(row) for row in self.tokens_per_expert}
        if len(widths) != 1 or 0 in widths:
            raise ValueError("tokens_per_expert: rows must be non-empty and of equal length")
        for li, row in enumerate(self.tokens_per_expert):
            if any(v < 0 for v in row):
                raise ValueError(f"tokens_per_expert[{li}]: counts must be >= 0")
            if any(v > self.num_tokens for v in row):
                raise ValueError(f"tokens_per_expert[{li}]: a count exceeds num_tokens")
        num_experts = widths.pop()
        if self.gate_weight_sum is not None:
            _check_matrix("gate_weight_sum", self.gate_weight_sum, len(self.layer_ids), num_experts)
        if self.expert_similarity is not None:
            _check_matrix("expert_similarity", self.expert_similarity, num_experts, num_experts)
            if any(not 0.0 <= v <= 1.0 for row in self.expert_similarity for v in row):
                raise ValueError("expert_similarity: values must lie in [0, 1]")
        if self.transitions is not None:
            if len(self.transitions) != len(self.layer_ids) - 1:
                raise ValueError("transitions: need len(layer_ids) - 1 matrices")
            for i, mat in enumerate(self.transitions):
                _check_matrix(f"transitions[{i}]", mat, num_experts, num_experts)
        return self

    @property
    def num_experts(self) -> int:
        """Experts per layer in the histogram."""
        return len(self.tokens_per_expert[0])

    def check_against(self, model: ModelSpec) -> list[str]:
        """Messages (field: reason) for every way this workload does not fit the model."""
        problems: list[str] = []
        if self.num_experts != model.num_routed_experts:
            problems.append(
                f"tokens_per_expert: {self.num_experts} experts per row, model "
                f"{model.name} has {model.num_routed_experts}"
            )
        bad = [i for i in self.layer_ids if i >= model.num_moe_layers]
        if bad:
            problems.append(f"layer_ids: {bad} not below num_moe_layers {model.num_moe_layers}")
        for li, row in enumerate(self.tokens_per_expert):
            if sum(row) > self.num_tokens * model.top_k:
                problems.append(
                    f"tokens_per_expert[{li}]: {sum(row)} routings exceed num_tokens * top_k"
                )
                break
        return problems

    def histogram(self) -> np.ndarray:
        """Token counts as an int64 array ``[num_layers, num_experts]``."""
        return np.asarray(self.tokens_per_expert, dtype=np.int64)


def _check_matrix(name: str, mat: tuple[tuple[float, ...], ...], rows: int, cols: int) -> None:
    if len(mat) != rows or any(len(r) != cols for r in mat):
        raise ValueError(f"{name}: expected shape [{rows}, {cols}]")
    if any(not 0 <= v <= MAX_COUNT for r in mat for v in r):  # NaN fails too
        raise ValueError(f"{name}: values must lie in [0, 2**40]")


@dataclass(slots=True)
class RoutingTrace:
    """Per-token top-k routing of a model, for replay and for histograms of any token batch.

    Attributes:
        model: name of the model the trace was recorded from.
        layer_ids: MoE layer number of each layer axis entry, shape ``[num_layers]``.
        expert_ids: routed experts, int16 ``[num_tokens, num_layers, top_k]``.
        gate_weights: gate weight of each routed expert, float32 same shape, or None.
        seq_ids: sequence of each token, int32 ``[num_tokens]``; tokens of a sequence are
            consecutive and in order, unless ``step_ids`` is set (then a sequence's tokens are
            in order but may interleave with other sequences' tokens).
        num_experts: routed experts per layer.
        source: file the trace came from.
        step_ids: engine step (forward pass) of each token, int32 ``[num_tokens]``,
            non-decreasing, or None when the trace is one token per step. A step may mix
            tokens of several requests of different lengths (continuous batching).
    """

    model: str
    layer_ids: np.ndarray
    expert_ids: np.ndarray
    gate_weights: np.ndarray | None
    seq_ids: np.ndarray
    num_experts: int
    source: str = ""
    notes: list[str] = field(default_factory=list)
    step_ids: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens in the trace."""
        return int(self.expert_ids.shape[0])

    @property
    def num_layers(self) -> int:
        """MoE layers in the trace."""
        return int(self.expert_ids.shape[1])

    @property
    def top_k(self) -> int:
        """Experts per token per layer."""
        return int(self.expert_ids.shape[2])

    def sequences(self) -> list[tuple[int, int]]:
        """[start, end) token range of every sequence, in trace order."""
        cuts = [0, *(int(i) + 1 for i in np.flatnonzero(np.diff(self.seq_ids))), self.num_tokens]
        return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]

    def per_sequence(self) -> RoutingTrace:
        """The trace with each sequence's tokens contiguous, in their order, sequences in the
        order they first appear: what ``sequences()`` and ``decode_runs`` need. A serving log
        interleaves requests step by step (continuous batching); left as it is, every change of
        request would cut a one-token "sequence". Engine steps no longer hold once tokens
        move, so ``step_ids`` is dropped then; a trace already contiguous comes back as is."""
        first: dict[int, int] = {}
        for s in self.seq_ids.tolist():
            first.setdefault(s, len(first))
        if len(first) == len(self.sequences()):
            return self
        rank = np.asarray([first[s] for s in self.seq_ids.tolist()], dtype=np.int64)
        order = np.argsort(rank, kind="stable")
        gates = None if self.gate_weights is None else self.gate_weights[order]
        return RoutingTrace(
            model=self.model, layer_ids=self.layer_ids, expert_ids=self.expert_ids[order],
            gate_weights=gates, seq_ids=self.seq_ids[order], num_experts=self.num_experts,
            source=self.source,
            notes=[*self.notes, f"tokens regrouped into {len(first)} sequences (requests)"],
        )  # fmt: skip

    def steps(self) -> list[np.ndarray]:
        """Token indices of every engine step, in order (one token per step without
        ``step_ids``)."""
        if self.step_ids is None:
            return [np.asarray([t]) for t in range(self.num_tokens)]
        cuts = np.flatnonzero(np.diff(self.step_ids)) + 1
        return np.split(np.arange(self.num_tokens), cuts)

    def decode_runs(
        self, prefill_fraction: float, max_steps: int, sequences: int | None = None
    ) -> list[tuple[int, int, int]]:
        """(prompt start, decode start, decode end) for the first ``sequences`` sequences: the
        first ``prefill_fraction`` of each (at least one token) is its prompt, then at most
        ``max_steps`` tokens are decoded; sequences with nothing left to decode are skipped."""
        runs = []
        for start, end in self.sequences()[:sequences]:
            mid = start + max(1, int((end - start) * prefill_fraction))
            if mid < end:
                runs.append((start, mid, min(end, mid + max_steps)))
        return runs

    def histogram(self, token_slice: slice | np.ndarray | None = None) -> np.ndarray:
        """Tokens per expert for a batch of tokens, int64 ``[num_layers, num_experts]``."""
        ids = self.expert_ids if token_slice is None else self.expert_ids[token_slice]
        hist = np.zeros((self.num_layers, self.num_experts), dtype=np.int64)
        for layer in range(self.num_layers):
            hist[layer] = np.bincount(
                ids[:, layer, :].ravel().astype(np.int64), minlength=self.num_experts
            )
        return hist

    def gate_mass(self, token_slice: slice | np.ndarray | None = None) -> np.ndarray:
        """Sum of gate weights per expert, float64 ``[num_layers, num_experts]``."""
        if self.gate_weights is None:
            raise ValueError("this trace has no gate weights")
        ids = self.expert_ids if token_slice is None else self.expert_ids[token_slice]
        w = self.gate_weights if token_slice is None else self.gate_weights[token_slice]
        mass = np.zeros((self.num_layers, self.num_experts), dtype=np.float64)
        for layer in range(self.num_layers):
            np.add.at(mass[layer], ids[:, layer, :].ravel(), w[:, layer, :].ravel())
        return mass

    def transitions(self, token_slice: slice | np.ndarray | None = None) -> np.ndarray:
        """Cross-layer co-routing counts, int64 ``[num_layers - 1, num_experts, num_experts]``.

        Entry ``[l, a, b]`` counts (token, a, b) with a among the token's experts in layer l and
        b among them in layer l + 1 (all k x k pairs).
        """
        ids = self.expert_ids if token_slice is None else self.expert_ids[token_slice]
        num_experts = self.num_experts
        out = np.zeros((max(self.num_layers - 1, 0), num_experts, num_experts), dtype=np.int64)
        k = self.top_k
        for layer in range(self.num_layers - 1):
            a = np.repeat(ids[:, layer, :], k, axis=1).ravel().astype(np.int64)
            b = np.tile(ids[:, layer + 1, :], (1, k)).ravel().astype(np.int64)
            np.add.at(out[layer], (a, b), 1)
        return out

    def to_workload(
        self, token_slice: slice | np.ndarray | None = None, context_tokens: int = 0
    ) -> Workload:
        """The histogram (and gate mass) of a batch of tokens as a ``Workload``."""
        hist = self.histogram(token_slice)
        num_tokens = (
            self.num_tokens if token_slice is None else len(np.arange(self.num_tokens)[token_slice])
        )
        gate = None
        if self.gate_weights is not None:
            gate = tuple(tuple(float(v) for v in row) for row in self.gate_mass(token_slice))
        return Workload(
            layer_ids=tuple(range(self.num_layers)),
            tokens_per_expert=tuple(tuple(int(v) for v in row) for row in hist),
            num_tokens=num_tokens,
            context_tokens=context_tokens,
            gate_weight_sum=gate,
        )
