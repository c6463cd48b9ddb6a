"""Loaders for the real routing data in ../shared/traces (see its README for the formats).

* ``load_esft(path)``: DeepSeek ESFT-vanilla-lite (DeepSeek-V2-Lite class), JSONL (gzip or
  plain), per token top-6 ids and gate weights for all 26 MoE layers -> ``RoutingTrace``;
  other files of that format keep their own layers, top-k and expert count.
* ``load_flame(path)``: FLAME-MoE-290M, one JSON (gzip or plain), 2048 tokens x 8 MoE layers
  x top-6 with router probabilities -> ``RoutingTrace`` (4 sequences of 512 tokens, or
  meta ``seq_len``).
* ``load_expert_counts(path)``: OLMoE / Mixtral per-domain load histograms for layers 0, 7, 15
  and cross-layer matrices -> ``ExpertCounts``; ``ExpertCounts.sample_trace`` draws tokens
  from those histograms when a per-token trace is needed (the result says it was sampled).

Only the standard library and numpy are used; nothing is fetched at run time.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np

from hwmodel.runtime_formats import MAX_EXPERT_ID, read_routing_log
from hwmodel.spec import ModelSpec
from hwmodel.workload import RoutingTrace

ESFT_FILES = {
    "intent": "esft_vanilla_lite_intent_routing.jsonl.gz",
    "law": "esft_vanilla_lite_law_routing.jsonl.gz",
}
FLAME_FILE = "flame_moe_290m_prefill_2048tok.json"
COUNTS_FILE = "olmoe_mixtral_expert_counts_by_domain.json"


def traces_dir() -> Path:
    """Where the real traces live: $MOESCHED_TRACES_DIR, else ../shared/traces of the repo."""
    env = os.environ.get("MOESCHED_TRACES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "traces"


GZIP_MAGIC = b"\x1f\x8b"
FLAME_SEQ_LEN_TOKENS = 512  # the shared FLAME file's sequences, when a file does not say


def _is_gzip(path: Path) -> bool:
    """Whether the file's first bytes are gzip's magic (whatever its name says)."""
    with path.open("rb") as f:
        return f.read(2) == GZIP_MAGIC


def _open_text(path: Path) -> IO[str]:
    """The file as text: gunzipped when its bytes are gzip, else read as it is."""
    if _is_gzip(path):
        return gzip.open(path, "rt")
    return path.open("rt")


def _esft_ids(path: Path, record: dict[str, Any]) -> np.ndarray:
    """One (layer, seq) record's ids as int16 ``[tokens, top_k]``.

    Raises:
        ValueError: an id < 0 or > ``MAX_EXPERT_ID``, naming the file, layer and sequence.
    """
    ids = np.asarray(record["ids"], dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_EXPERT_ID):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(
            f"{path}: layer {record['layer']} seq {record['seq']} routes expert {bad}; "
            f"want ids in [0, {MAX_EXPERT_ID}]"
        )
    return ids.astype(np.int16)


def _esft_num_experts(path: Path, meta: dict[str, Any], ids: np.ndarray) -> int:
    """Routed experts: meta's integer ``num_experts`` when present, else the largest id + 1
    (a lower bound: experts never routed leave no trace; ``match_model`` widens it).

    Raises:
        ValueError: meta's count does not cover the ids routed.
    """
    routed = int(ids.max()) + 1 if ids.size else 0
    stated = meta.get("num_experts")
    if not isinstance(stated, int) or isinstance(stated, bool):
        return routed
    if stated < routed:
        raise ValueError(f"{path}: meta num_experts {stated}, but expert {routed - 1} is routed")
    return stated


def _esft_model(num_layers: int, top_k: int, num_experts: int) -> str:
    """The model name for an ESFT file's shape: DeepSeek-V2-Lite's (26 MoE layers, top-6, at
    most 64 experts) gives "deepseek-v2-lite", any other "unknown"."""
    if num_layers == 26 and top_k == 6 and num_experts <= 64:
        return "deepseek-v2-lite"
    return "unknown"


@lru_cache(maxsize=8)
def load_esft(path: str | Path) -> RoutingTrace:
    """Parse an ESFT routing file (JSONL, gzip or plain by its bytes) into a trace of
    ``[num_tokens, num_layers, top_k]`` (the shared files: ``[n, 26, 6]``, 64 experts).

    Tokens are ordered sequence by sequence; MoE layers 1..L of the source become layer axis
    0..L-1 (``layer_ids`` keeps the 0-based MoE index). ``num_experts`` is meta's integer
    ``num_experts``, else the largest id + 1; ``model`` is "deepseek-v2-lite" only for that
    model's shape, else "unknown".

    Raises:
        ValueError: naming the file, on ids outside ``[0, MAX_EXPERT_ID]`` (with layer and
            sequence), token counts that disagree with ``seq_lengths``, missing records, or
            a meta ``num_experts`` below the ids routed.
    """
    path = Path(path)
    with _open_text(path) as f:
        meta = json.loads(f.readline())["meta"]
        seq_lengths = [int(n) for n in meta["seq_lengths"]]
        records = [json.loads(line) for line in f if line.strip()]
    layers = sorted({int(r["layer"]) for r in records})
    offsets = np.concatenate([[0], np.cumsum(seq_lengths)]).astype(np.int64)
    num_tokens = int(offsets[-1])
    top_k = len(records[0]["ids"][0])
    ids = np.full((num_tokens, len(layers), top_k), -1, dtype=np.int16)
    weights = np.zeros((num_tokens, len(layers), top_k), dtype=np.float32)
    layer_pos = {layer: i for i, layer in enumerate(layers)}
    for r in records:
        seq = int(r["seq"])
        lo, hi = offsets[seq], offsets[seq + 1]
        if len(r["ids"]) != hi - lo:
            raise ValueError(f"{path}: layer {r['layer']} seq {seq} has {len(r['ids'])} tokens")
        li = layer_pos[int(r["layer"])]
        ids[lo:hi, li, :] = _esft_ids(path, r)
        weights[lo:hi, li, :] = np.asarray(r["w"], dtype=np.float32)
    if (ids < 0).any():
        raise ValueError(f"{path}: some (layer, sequence) records are missing")
    num_experts = _esft_num_experts(path, meta, ids)
    seq_ids = np.repeat(np.arange(len(seq_lengths), dtype=np.int32), seq_lengths)
    return RoutingTrace(
        model=_esft_model(len(layers), top_k, num_experts),
        layer_ids=np.asarray([layer - 1 for layer in layers], dtype=np.int32),
        expert_ids=ids,
        gate_weights=weights,
        seq_ids=seq_ids,
        num_experts=num_experts,
        source=f"{path.name} ({meta.get('task', '?')}): {num_tokens} tokens",
    )


def _flame_seq_len_tokens(path: Path, meta: dict[str, Any]) -> int:
    """Tokens per sequence: meta ``seq_len`` (or ``sequence_length``), else 512.

    Raises:
        ValueError: the stated length is not a positive integer.
    """
    key = next((k for k in ("seq_len", "sequence_length") if k in meta), None)
    if key is None:
        return FLAME_SEQ_LEN_TOKENS
    value = meta[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{path}: meta {key} is {value!r}; want a positive token count")
    return value


@lru_cache(maxsize=4)
def load_flame(path: str | Path) -> RoutingTrace:
    """Parse a FLAME-MoE JSON (gzip or plain by its bytes) into a trace of ``[num_tokens,
    num_layers, top_k]`` (the shared file: ``[2048, 8, 6]``, 4 sequences of 512).

    Token t belongs to sequence ``t // seq_len`` (meta ``seq_len`` or ``sequence_length``,
    else 512); a final partial sequence stays as it is. Without ``scores`` the trace has no
    gate weights (``gate_weights=None``).
    """
    path = Path(path)
    with _open_text(path) as f:
        d = json.load(f)
    meta = d.get("meta", {})
    ids = np.asarray(d["indices"], dtype=np.int16).transpose(1, 0, 2)
    scores = None
    if "scores" in d:
        scores = np.asarray(d["scores"], dtype=np.float32).transpose(1, 0, 2)
        scores = np.ascontiguousarray(scores)
    num_tokens = ids.shape[0]
    seq_len_tokens = _flame_seq_len_tokens(path, meta)
    return RoutingTrace(
        model="flame-moe-290m",
        layer_ids=np.arange(ids.shape[1], dtype=np.int32),
        expert_ids=np.ascontiguousarray(ids),
        gate_weights=scores,
        seq_ids=(np.arange(num_tokens) // seq_len_tokens).astype(np.int32),
        num_experts=int(meta["num_experts"]),
        source=f"{path.name}: {num_tokens} tokens, MoE layers {d.get('layers', '?')}",
    )


@dataclass(frozen=True, slots=True)
class ExpertCounts:
    """Per-domain expert-load histograms (OLMoE / Mixtral), layers "0", "7", "15" only."""

    raw: dict[str, Any]
    source: str

    def models(self) -> list[str]:
        """Model keys: olmoe, olmoe-sft, olmoe-dpo, mixtral."""
        return list(self.raw["models"])

    def domains(self, model: str) -> list[str]:
        """Text domains recorded for a model."""
        return list(self.raw["models"][model]["domains"])

    def layers(self) -> list[str]:
        """Recorded layer keys ("0", "7", "15")."""
        return ["0", "7", "15"]

    def num_experts(self, model: str) -> int:
        """Routed experts of the model."""
        return int(self.raw["models"][model]["num_experts"])

    def top_k(self, model: str) -> int:
        """Experts per token of the model."""
        return int(self.raw["models"][model]["top_k"])

    def histogram(self, model: str, domain: str, layer: str) -> np.ndarray:
        """Top-k load counts, int64 ``[num_experts]`` (sums to tokens x top_k)."""
        counts = self.raw["models"][model]["domains"][domain]["topk_counts"][layer]
        return np.asarray(counts, dtype=np.int64)

    def transition(self, model: str, domain: str, pair: str) -> np.ndarray:
        """Rank-zipped cross-layer counts for "0-7" or "7-15", int64 ``[E, E]``."""
        mat = self.raw["models"][model]["domains"][domain]["crosslayer"][pair]
        return np.asarray(mat, dtype=np.int64)

    def num_tokens(self, model: str, domain: str) -> int:
        """Tokens counted in that domain."""
        return int(self.raw["models"][model]["domains"][domain]["tokens_counted_layer0"])

    def sample_trace(
        self, model: str, domain: str, num_tokens: int, num_layers: int, seed: int = 0
    ) -> RoutingTrace:
        """Draw a per-token trace whose per-layer loads follow the real histograms.

        Layer l of the result samples from the recorded layer nearest in depth (0, 7 or 15,
        scaled to ``num_layers``); each token takes ``top_k`` distinct experts with probability
        proportional to the recorded load. Tokens are independent: this is a sample of the
        histogram, not real per-token routing, and ``notes`` says so.
        """
        rng = np.random.default_rng(seed)
        num_experts, k = self.num_experts(model), self.top_k(model)
        recorded = [0, 7, 15]
        ids = np.zeros((num_tokens, num_layers, k), dtype=np.int16)
        for layer in range(num_layers):
            depth = layer * 15 / max(num_layers - 1, 1)
            src = min(recorded, key=lambda r: abs(r - depth))
            p = self.histogram(model, domain, str(src)).astype(np.float64)
            p /= p.sum()
            # Gumbel top-k = sampling k distinct experts without replacement, weight p.
            keys = np.log(p + 1e-30)[None, :] + rng.gumbel(size=(num_tokens, num_experts))
            ids[:, layer, :] = np.argsort(-keys, axis=1)[:, :k].astype(np.int16)
        return RoutingTrace(
            model=model,
            layer_ids=np.arange(num_layers, dtype=np.int32),
            expert_ids=ids,
            gate_weights=None,
            seq_ids=np.zeros(num_tokens, dtype=np.int32),
            num_experts=num_experts,
            source=f"{self.source}: {model}/{domain}",
            notes=[
                f"sampled from real per-layer histograms ({model}, {domain}, layers 0/7/15); "
                "tokens are independent draws, not real per-token routing"
            ],
        )


@lru_cache(maxsize=2)
def load_expert_counts(path: str | Path) -> ExpertCounts:
    """Parse the OLMoE / Mixtral expert-count file."""
    path = Path(path)
    return ExpertCounts(raw=json.loads(path.read_text()), source=path.name)


def match_model(trace: RoutingTrace, name: str | None = None) -> tuple[str, RoutingTrace]:
    """The model preset a trace is replayed on, and the trace with that model's expert count.

    A file's expert count is often a lower bound (the largest id routed, plus one: experts
    never routed leave no trace), so a preset fits when its MoE layers and top-k equal the
    trace's and every id routed lies below its routed experts. ``name`` given: that preset,
    refused (ValueError naming the mismatch) when it does not fit. None: the fitting preset
    whose expert count equals the trace's, else the fitting one with the fewest experts.

    Raises:
        ValueError: ``model: ...`` when no preset fits, or the named one does not.
    """
    from hwmodel.presets import MODEL_PRESETS, model_preset

    routed = int(trace.expert_ids.max()) + 1 if trace.expert_ids.size else 0
    shape = f"{trace.num_layers} MoE layers, top-{trace.top_k}, expert ids up to {routed - 1}"

    def misfit(spec: ModelSpec) -> str | None:
        if spec.num_moe_layers != trace.num_layers:
            return f"{spec.num_moe_layers} MoE layers"
        if spec.top_k != trace.top_k:
            return f"top-{spec.top_k}"
        if spec.num_routed_experts < routed:
            return f"{spec.num_routed_experts} routed experts"
        return None

    if name is not None:
        spec = model_preset(name)
        why = misfit(spec)
        if why is not None:
            raise ValueError(f"model: {name} has {why}; the trace has {shape}")
    else:
        fits = [(n, m) for n, make in MODEL_PRESETS.items() if misfit(m := make()) is None]
        if not fits:
            raise ValueError(f"model: no preset fits the trace ({shape}); name one with --model")
        exact = [f for f in fits if f[1].num_routed_experts == trace.num_experts]
        name, spec = (exact or sorted(fits, key=lambda f: f[1].num_routed_experts))[0]
    if spec.num_routed_experts != trace.num_experts:
        trace = replace(trace, num_experts=spec.num_routed_experts)
    return name, trace


def load_for_replay(path: str | Path, name: str | None = None) -> tuple[str, RoutingTrace]:
    """A trace file as replays and benchmarks serve it: ``load_trace``, each sequence's
    tokens contiguous (``per_sequence``), on the preset it fits (``match_model``; ``name``
    names one). Returns (preset name, trace with that model's expert count)."""
    return match_model(load_trace(path).per_sequence(), name)


def _first_line(path: Path) -> str:
    """The file's first line (at most 64 KiB of it), gunzipped when its bytes are gzip."""
    with _open_text(path) as f:
        return str(f.readline(1 << 16))


def _head(path: Path, num_chars: int = 4096) -> str:
    """The file's first ``num_chars`` characters, gunzipped when its bytes are gzip."""
    with _open_text(path) as f:
        return str(f.read(num_chars))


def load_trace(path: str | Path) -> RoutingTrace:
    """Load any per-token trace file by its format: ESFT ``.jsonl`` or ``.jsonl.gz`` (a
    ``{"meta": ...}`` first line), FLAME ``.json`` or ``.json.gz``, or a serving engine's
    routing log (``.jsonl`` or ``.jsonl.gz`` of ``{"type": "route", ...}`` lines:
    ``runtime_formats.read_routing_log``, engine steps kept), or a batched decode layout
    ``[positions, layers, sequences, top_k]`` (``.npy``, ``.pt``, or ``.json``: a bare array
    or ``{"topk_ids": ...}``; ``read_routing_log``). Whether a file is gzip is read from its
    bytes, not its name."""
    p = Path(path)
    if p.name.endswith(".jsonl.gz") or p.name.endswith(".jsonl"):
        head = _first_line(p)
        if head.startswith('{"meta"'):
            return load_esft(p)
        if '"type"' in head:
            return read_routing_log(p)
    if p.suffix in (".npy", ".pt"):
        return read_routing_log(p)
    if p.name.endswith(".json") or p.name.endswith(".json.gz"):
        head = _head(p)
        if p.name.endswith(".json") and (
            head.lstrip().startswith("[") or '"topk_ids"' in head or '"experts"' in head
        ):
            return read_routing_log(p)
        if '"indices"' in head or ('"layers"' in head and '"models"' not in head):
            return load_flame(p)
    raise ValueError(
        f"{p.name}: not a per-token routing trace (ESFT .jsonl[.gz], FLAME .json[.gz], a "
        'routing log of {"type": "route", ...} lines or a batched decode layout '
        "[positions, layers, sequences, top_k])"
    )
