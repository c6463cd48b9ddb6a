"""What serving runtimes record, read without torch; what they load, written as plain JSON.

Glossary (the runtimes' terms): a *logical* expert is one expert of the model; a *physical*
expert (replica, slot) is one copy of it on one GPU; slot ``p`` lives on GPU
``p // (num_physical // num_gpus)``. ``physical_to_logical_map [num_layers, num_physical]``
names the logical expert of every slot.

Readers (each returns a ``LoadWindow``; a file that does not fit raises ``RuntimeFormatError``
naming the file and the shape it expected):

* ``read_sglang_dump``: SGLang's expert-distribution recorder (``/dump_expert_distribution_record``
  writes it).
  Stat mode: a dict with ``rank``, ``logical_count [steps, layers, logical]`` (or
  ``[layers, logical]``) and ``average_utilization_rate_over_window``. Per-token detail mode:
  ``records`` (one per forward pass, each with ``topk_ids_of_layer [layers, tokens, top_k]`` of
  *physical* ids, -1 where unused) and ``last_physical_to_logical_map [layers, physical]``.
* ``read_vllm_window``: vLLM's EPLB state, ``expert_load_window [window, layers, physical]``
  per physical slot plus ``physical_to_logical_map [layers, physical]``, folded to logical loads.
* ``read_deepseek_weight``: DeepSeek EPLB's ``weight [layers, logical]`` (one sample).
* ``read_routing_log``: per-token routing logs as serving engines write them (vLLM-style
  ``{"type": "route", "req_id", "token_idx", "layer", "topk_ids", "topk_weights"}`` JSON lines,
  ``.jsonl`` or ``.jsonl.gz``) and batched decode layouts ``[positions, layers, sequences, top_k]``;
  returns a ``RoutingTrace`` whose ``step_ids`` keep the engine steps.

``.pt`` files are read by ``load_torch_file``: a restricted unpickler that resolves only
torch's tensor-rebuild calls and storage types (mapped to numpy) and refuses every other
callable before anything runs. Every reader also accepts the same content as JSON.

Writers: ``sglang_expert_location`` (``--init-expert-location`` JSON), ``deepseek_maps``
(``phy2log``, ``log2phy``, ``logcnt``) and ``vllm_maps`` (EplbState's names).
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hwmodel.workload import RoutingTrace

Runtime = Literal["sglang", "vllm", "deepseek", "routing-log"]
RUNTIMES: tuple[str, ...] = ("sglang", "vllm", "deepseek", "routing-log")


class RuntimeFormatError(ValueError):
    """A runtime file that cannot be read: the message names the file and what was expected."""


@dataclass(frozen=True)
class LoadWindow:
    """Per-sample logical expert loads recorded by a runtime.

    Attributes:
        logical_loads: tokens per logical expert, float64 ``[num_samples, num_layers,
            num_logical]``; one sample per forward pass (or per recorded step).
        physical_to_logical: the placement the runtime ran while recording, int64
            ``[num_layers, num_physical]``, or None when the file does not say.
        kind: which reader produced it (``sglang-stat``, ``sglang-detail``, ``vllm``,
            ``deepseek``, ``routing-log``).
        source: the file it came from.
        notes: what the reader dropped or assumed (empty samples, warm-up passes, ...).
        trace: the per-token routing, when the file had it (detail dumps and routing logs).
    """

    logical_loads: np.ndarray
    physical_to_logical: np.ndarray | None
    kind: str
    source: str
    notes: list[str] = field(default_factory=list)
    trace: RoutingTrace | None = None

    @property
    def num_samples(self) -> int:
        return int(self.logical_loads.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.logical_loads.shape[1])

    @property
    def num_logical(self) -> int:
        return int(self.logical_loads.shape[2])


# --------------------------------------------------------------------------------------------
# torch's on-disk format, read without torch
# --------------------------------------------------------------------------------------------

# torch's legacy storage classes (their names are what a pickle records) -> numpy dtypes.
_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "UntypedStorage": "u1",
}


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.<Name>Storage`` inside a pickle: it only names a dtype."""

    name: str


def _rebuild_tensor(
    storage: np.ndarray,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_ignored: Any,
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` on numpy: a strided view of the storage, copied."""
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ValueError("negative tensor size or stride")
    numel = int(np.prod(size)) if size else 1
    if numel == 0:
        return np.zeros(size, dtype=storage.dtype)
    last = int(storage_offset) + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if storage_offset < 0 or last >= len(storage):
        raise ValueError(f"tensor of size {list(size)} runs past its storage ({len(storage)})")
    base = storage[int(storage_offset) :]
    view = np.lib.stride_tricks.as_strided(
        base, shape=size, strides=tuple(s * storage.itemsize for s in stride), writeable=False
    )
    return np.array(view)


def _ordered_dict(*args: Any) -> dict[Any, Any]:
    return dict(collections.OrderedDict(*args))


# The only callables a .pt may name: (module, name) -> our numpy stand-in.
_ALLOWED_CALLS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("collections", "OrderedDict"): _ordered_dict,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves torch's tensor rebuilds and storage types only; every other name is refused
    in ``find_class``, before the pickle can call it."""

    def __init__(self, data: bytes, records: dict[str, bytes], where: str) -> None:
        super().__init__(io.BytesIO(data))
        self._records = records
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_CALLS:
            return _ALLOWED_CALLS[module, name]
        raise RuntimeFormatError(
            f"{self._where}: refused: the pickle names {module}.{name}; only torch tensors, "
            "lists, dicts and numbers are read (nothing in it was run)"
        )

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise RuntimeFormatError(f"{self._where}: unknown persistent id {pid!r:.80}")
        stype, key = pid[1], str(pid[2])
        if not isinstance(stype, _StorageType):
            raise RuntimeFormatError(f"{self._where}: storage of unknown type {stype!r:.80}")
        raw = self._records.get(key)
        if raw is None:
            raise RuntimeFormatError(f"{self._where}: storage record data/{key} is missing")
        dtype = _STORAGE_DTYPES[stype.name]
        if dtype == "bfloat16":
            half = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            return half.view(np.float32)
        if len(raw) % np.dtype(dtype).itemsize:
            raise RuntimeFormatError(f"{self._where}: storage data/{key} is truncated")
        return np.frombuffer(raw, dtype=dtype).copy()


def load_torch_file(path: str | Path) -> Any:
    """Read a ``torch.save`` zip file into lists, dicts, numbers and numpy arrays.

    Raises:
        RuntimeFormatError: not a zip, truncated, or the pickle names any callable other than
            torch's tensor rebuild (nothing it names is ever called).
    """
    path = Path(path)
    where = str(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
            if len(pkl) != 1:
                raise RuntimeFormatError(
                    f"{where}: not a torch.save archive (want one <archive>/data.pkl)"
                )
            prefix = pkl[0][: -len("data.pkl")]
            data = zf.read(pkl[0])
            order = zf.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else ""
            if order.strip() not in ("", "little"):
                raise RuntimeFormatError(f"{where}: big-endian tensors are not supported")
            records = {
                n[len(prefix) + len("data/") :]: zf.read(n)
                for n in names
                if n.startswith(prefix + "data/")
            }
    except zipfile.BadZipFile as exc:
        raise RuntimeFormatError(
            f"{where}: not a torch.save zip archive (truncated, or saved with "
            f"_use_new_zipfile_serialization=False): {exc}"
        ) from exc
    except (OSError, EOFError) as exc:
        raise RuntimeFormatError(f"{where}: cannot read: {exc}") from exc
    try:
        return _RestrictedUnpickler(data, records, where).load()
    except RuntimeFormatError:
        raise
    except Exception as exc:  # a damaged pickle: say so, never a traceback from deep inside
        raise RuntimeFormatError(f"{where}: damaged pickle: {type(exc).__name__}: {exc}") from exc


def load_any(path: str | Path) -> Any:
    """A runtime file's content: ``.pt`` (restricted), ``.npz``/``.npy``, or JSON (``.gz`` ok)."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeFormatError(f"{path}: no such file")
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        return load_torch_file(path)
    if head.startswith(b"\x93NUM"):
        return np.load(path, allow_pickle=False)
    if head.startswith(b"\x80"):
        raise RuntimeFormatError(
            f"{path}: a bare pickle; only torch.save zip archives and JSON are read"
        )
    opener = gzip.open if head.startswith(b"\x1f\x8b") else open
    try:
        with opener(path, "rt") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise RuntimeFormatError(f"{path}: neither a torch.save archive nor JSON: {exc}") from exc


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------


def _array(value: Any, where: str, name: str, ndims: tuple[int, ...], expected: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise RuntimeFormatError(f"{where}: {name}: ragged, want {expected}") from exc
    if arr.ndim not in ndims or arr.dtype == object or arr.size == 0:
        raise RuntimeFormatError(f"{where}: {name} has shape {list(arr.shape)}, want {expected}")
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise RuntimeFormatError(f"{where}: {name} is not numeric, want {expected}")
    return arr


MAX_EXPERT_ID = 32767  # traces keep expert ids as int16


def _check_map(p2l: np.ndarray, where: str, num_layers: int | None) -> np.ndarray:
    p2l = p2l.astype(np.int64)
    if p2l.size and p2l.max() > MAX_EXPERT_ID:
        raise RuntimeFormatError(
            f"{where}: physical_to_logical_map names experts > {MAX_EXPERT_ID}"
        )
    if num_layers is not None and p2l.shape[0] != num_layers:
        raise RuntimeFormatError(
            f"{where}: physical_to_logical_map has {p2l.shape[0]} layers, the loads {num_layers}"
        )
    if (p2l < 0).any():
        raise RuntimeFormatError(f"{where}: physical_to_logical_map has negative expert ids")
    return p2l


def fold_physical(physical: np.ndarray, p2l: np.ndarray, num_logical: int) -> np.ndarray:
    """Logical loads ``[S, L, E]`` from per-slot loads ``[S, L, R]`` and ``p2l [L, R]``."""
    num_samples, num_layers, _ = physical.shape
    out = np.zeros((num_samples, num_layers, num_logical), dtype=np.float64)
    for layer in range(num_layers):
        onehot = np.zeros((p2l.shape[1], num_logical))
        onehot[np.arange(p2l.shape[1]), p2l[layer]] = 1.0
        out[:, layer, :] = physical[:, layer, :] @ onehot
    return out


def _dict(content: Any, where: str, want: str) -> dict[str, Any]:
    if not isinstance(content, dict):
        raise RuntimeFormatError(f"{where}: want a dict with {want}, got {type(content).__name__}")
    return content


def read_sglang_dump(path: str | Path, num_logical: int | None = None) -> LoadWindow:
    """An SGLang expert-distribution dump (stat or per-token detail mode), ``.pt`` or JSON."""
    where = str(path)
    content = _dict(load_any(path), where, "'logical_count' (stat) or 'records' (detail)")
    if "logical_count" in content:
        counts = _array(
            content["logical_count"], where, "logical_count", (2, 3), "[steps, layers, logical]"
        ).astype(np.float64)
        if counts.ndim == 2:
            counts = counts[None]
        if (counts < 0).any() or not np.isfinite(counts).all():
            raise RuntimeFormatError(f"{where}: logical_count must be finite and >= 0")
        live = counts.reshape(len(counts), -1).sum(1) > 0
        notes = []
        if not live.all():
            # SGLang's circular buffer keeps zero rows for steps it has not filled yet.
            notes.append(f"dropped {int((~live).sum())} empty steps (unfilled buffer rows)")
            counts = counts[live] if live.any() else counts[:1]
        rate = content.get("average_utilization_rate_over_window")
        if rate is not None:
            notes.append(f"SGLang's average_utilization_rate_over_window: {float(rate):.4f}")
        return LoadWindow(counts, None, "sglang-stat", where, notes)
    if "records" in content:
        return _read_sglang_detail(content, where, num_logical)
    raise RuntimeFormatError(
        f"{where}: not an SGLang expert-distribution dump: want 'logical_count' "
        f"[steps, layers, logical] (stat mode) or 'records' (detail mode); keys {sorted(content)}"
    )


def _read_sglang_detail(content: dict[str, Any], where: str, num_logical: int | None) -> LoadWindow:
    if "last_physical_to_logical_map" not in content:
        raise RuntimeFormatError(
            f"{where}: detail dump without last_physical_to_logical_map [layers, physical]"
        )
    p2l = _check_map(
        _array(
            content["last_physical_to_logical_map"],
            where,
            "last_physical_to_logical_map",
            (2,),
            "[layers, physical]",
        ),
        where,
        None,
    )
    num_layers, num_phy = p2l.shape
    num_log = int(num_logical or p2l.max() + 1)
    records = content["records"]
    if not isinstance(records, list) or not records:
        raise RuntimeFormatError(f"{where}: records: want a non-empty list of forward passes")
    passes = []
    for i, rec in enumerate(records):
        rec = _dict(rec, f"{where}: records[{i}]", "topk_ids_of_layer")
        if "topk_ids_of_layer" not in rec:
            raise RuntimeFormatError(f"{where}: records[{i}] has no topk_ids_of_layer")
        ids = _array(
            rec["topk_ids_of_layer"],
            where,
            f"records[{i}].topk_ids_of_layer",
            (3,),
            "[layers, tokens, top_k]",
        ).astype(np.int64)
        if ids.shape[0] != num_layers:
            raise RuntimeFormatError(
                f"{where}: records[{i}].topk_ids_of_layer has {ids.shape[0]} layers, the map "
                f"{num_layers}"
            )
        if (ids >= num_phy).any() or (ids < -1).any():
            raise RuntimeFormatError(
                f"{where}: records[{i}].topk_ids_of_layer has ids outside [-1, {num_phy})"
            )
        passes.append(ids)
    top_k = max(p.shape[2] for p in passes)
    loads = np.zeros((len(passes), num_layers, num_log), dtype=np.float64)
    logical_ids = []
    for s, ids in enumerate(passes):
        rows = np.arange(num_layers)[:, None, None]
        logical = np.where(ids >= 0, p2l[rows, np.maximum(ids, 0)], -1)
        for layer in range(num_layers):
            valid = logical[layer][logical[layer] >= 0]
            loads[s, layer] = np.bincount(valid, minlength=num_log)[:num_log]
        pad = np.full((num_layers, ids.shape[1], top_k), -1, dtype=np.int64)
        pad[:, :, : ids.shape[2]] = logical
        logical_ids.append(pad)
    notes = [f"{len(passes)} forward passes; physical ids mapped by last_physical_to_logical_map"]
    trace = _trace_from_steps(logical_ids, num_log, where, notes)
    return LoadWindow(loads, p2l, "sglang-detail", where, notes, trace)


def _trace_from_steps(
    steps: list[np.ndarray], num_experts: int, where: str, notes: list[str]
) -> RoutingTrace | None:
    """A trace of engine steps from per-step logical ids ``[layers, tokens, top_k]`` (-1 unused).

    Layers that never route (dense layers) and top-k columns that are never used are dropped.
    """
    ids = np.concatenate(steps, axis=1)  # [layers, tokens, k]
    if ids.shape[1] == 0:
        return None
    used_layers = np.flatnonzero((ids >= 0).any(axis=(1, 2)))
    used_k = np.flatnonzero((ids >= 0).any(axis=(0, 1)))
    ids = ids[used_layers][:, :, used_k]
    if (ids < 0).any():
        notes.append("no per-token trace: some tokens route to fewer experts than others")
        return None
    if len(used_layers) < len(steps[0]):
        notes.append(f"trace keeps the {len(used_layers)} layers that route (others are dense)")
    step_ids = np.concatenate([np.full(s.shape[1], i, dtype=np.int32) for i, s in enumerate(steps)])
    return RoutingTrace(
        model="unknown",
        layer_ids=used_layers.astype(np.int32),
        expert_ids=np.ascontiguousarray(ids.transpose(1, 0, 2)).astype(np.int16),
        gate_weights=None,
        seq_ids=np.arange(len(step_ids), dtype=np.int32),
        num_experts=num_experts,
        source=where,
        step_ids=step_ids,
    )


def read_vllm_window(path: str | Path, num_logical: int | None = None) -> LoadWindow:
    """vLLM's EPLB load window per physical slot, folded to logical loads by its map.

    The file is a dict (``.pt``, ``.npz`` or JSON) with ``expert_load_window [window, layers,
    physical]`` (or ``[layers, physical]`` for one pass) and ``physical_to_logical_map
    [layers, physical]``, EplbState's names.
    """
    where = str(path)
    content = _dict(load_any(path), where, "'expert_load_window' and 'physical_to_logical_map'")
    missing = [k for k in ("expert_load_window", "physical_to_logical_map") if k not in content]
    if missing:
        raise RuntimeFormatError(
            f"{where}: missing {missing}: want expert_load_window [window, layers, physical] "
            "and physical_to_logical_map [layers, physical]"
        )
    window = _array(
        content["expert_load_window"],
        where,
        "expert_load_window",
        (2, 3),
        "[window, layers, physical]",
    ).astype(np.float64)
    if window.ndim == 2:
        window = window[None]
    p2l = _check_map(
        _array(
            content["physical_to_logical_map"],
            where,
            "physical_to_logical_map",
            (2,),
            "[layers, physical]",
        ),
        where,
        window.shape[1],
    )
    if p2l.shape[1] != window.shape[2]:
        raise RuntimeFormatError(
            f"{where}: expert_load_window has {window.shape[2]} physical slots, "
            f"physical_to_logical_map {p2l.shape[1]}"
        )
    if (window < 0).any() or not np.isfinite(window).all():
        raise RuntimeFormatError(f"{where}: expert_load_window must be finite and >= 0")
    num_log = int(num_logical or p2l.max() + 1)
    loads = fold_physical(window, p2l, num_log)
    live = loads.reshape(len(loads), -1).sum(1) > 0
    notes = [f"{len(window)} passes folded from {p2l.shape[1]} physical slots"]
    if not live.all() and live.any():
        notes.append(f"dropped {int((~live).sum())} empty passes")
        loads = loads[live]
    return LoadWindow(loads, p2l, "vllm", where, notes)


def read_deepseek_weight(path: str | Path) -> LoadWindow:
    """DeepSeek EPLB's ``weight [layers, logical]``: a bare 2-D list or tensor, or
    ``{"weight": ...}``."""
    where = str(path)
    content = load_any(path)
    if isinstance(content, dict):
        if "weight" not in content:
            raise RuntimeFormatError(
                f"{where}: want 'weight' [layers, logical]; keys {sorted(content)}"
            )
        content = content["weight"]
    weight = _array(content, where, "weight", (2,), "[layers, logical]").astype(np.float64)
    if (weight < 0).any() or not np.isfinite(weight).all():
        raise RuntimeFormatError(f"{where}: weight must be finite and >= 0")
    return LoadWindow(weight[None], None, "deepseek", where, ["one sample (EPLB's weight)"])


def read_routing_log(path: str | Path, num_experts: int | None = None) -> RoutingTrace:
    """Per-token routing as an engine logged it, as a trace of engine steps.

    Accepts vLLM-style JSON lines (``.jsonl`` or ``.jsonl.gz``): an optional
    ``{"type": "meta", ...}`` header, then ``{"type": "route", "req_id", "token_idx", "layer",
    "topk_ids", "topk_weights"}`` per token and layer. One hook call writes one block of
    consecutive ``token_idx`` for one layer; a block whose ``token_idx`` restarts (does not
    continue the previous one) begins a new block, and a block of a layer the current pass has
    already seen begins a new forward pass, so logs of one layer only work too: ``token_idx``
    is a token's index within one hook call's batch (0, 1, ... at each call), not its
    position in the request. Leading passes (before the first pass kept) of two or more
    tokens of one request (or none named) that all route to the same experts in every layer
    are warm-ups (profile runs, CUDA-graph capture: one dummy request at start-up) and are
    dropped; from the first pass kept on, every pass is kept, however skewed its routing.

    Also accepts a batched decode layout (JSON, ``.npy``, ``.pt``; a bare array or a dict
    with ``topk_ids``, ``indices`` or ``experts``) of shape ``[positions, layers, sequences,
    top_k]``: position p of every sequence is engine step p.
    """
    path = Path(path)
    where = str(path)
    name = path.name
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        return _read_route_lines(path, where, num_experts)
    content = load_any(path)
    if isinstance(content, dict):
        key = next((k for k in ("topk_ids", "indices", "experts") if k in content), None)
        if key is None:
            raise RuntimeFormatError(
                f"{where}: want 'topk_ids' [positions, layers, sequences, top_k]; keys "
                f"{sorted(content)}"
            )
        content = content[key]
    ids = _array(content, where, "topk_ids", (4,), "[positions, layers, sequences, top_k]")
    ids = ids.astype(np.int64)
    if (ids < 0).any() or ids.max() > MAX_EXPERT_ID:
        raise RuntimeFormatError(f"{where}: topk_ids must be in [0, {MAX_EXPERT_ID}]")
    positions, layers, seqs, k = ids.shape
    num_e = int(num_experts or ids.max() + 1)
    # token order: step-major (position p of sequence 0, 1, ...), the engine's order.
    expert_ids = ids.transpose(0, 2, 1, 3).reshape(positions * seqs, layers, k)
    return RoutingTrace(
        model="unknown",
        layer_ids=np.arange(layers, dtype=np.int32),
        expert_ids=expert_ids.astype(np.int16),
        gate_weights=None,
        seq_ids=np.tile(np.arange(seqs, dtype=np.int32), positions),
        num_experts=num_e,
        source=f"{name}: {positions} decode positions x {seqs} sequences",
        step_ids=np.repeat(np.arange(positions, dtype=np.int32), seqs),
    )


# One logged token: (req_id, topk_ids, topk_weights or None); a pass maps layer -> its tokens.
_RouteToken = tuple[str, list[int], list[float] | None]
_RoutePass = dict[int, list[_RouteToken]]


def _check_passes(passes: list[_RoutePass], layers: list[int], top_k: int, where: str) -> None:
    """Every pass logs every layer with the same number of tokens, ``top_k`` ids each.

    Raises:
        RuntimeFormatError: naming the first pass that does not line up; the usual cause is a
            ``token_idx`` that counts the request's positions instead of the batch's tokens.
    """
    for i, p in enumerate(passes):
        sizes = {len(toks) for toks in p.values()}
        if set(p) != set(layers) or len(sizes) != 1:
            raise RuntimeFormatError(
                f"{where}: forward pass {i} logs layers {sorted(p)} with token counts "
                f"{sorted(sizes)}; want every logged layer {layers} with the same tokens "
                "(token_idx must be the token's index within one hook call's batch, restarting "
                "at 0 at each call, not its position in the request)"
            )
        if any(len(t[1]) != top_k for toks in p.values() for t in toks):
            raise RuntimeFormatError(f"{where}: forward pass {i}: want {top_k} topk_ids per token")


def _is_warmup_pass(p: _RoutePass, layers: list[int]) -> bool:
    """A start-up dummy pass: two or more tokens, all routed to the same experts in every
    layer, all of one request (or none named)."""
    tokens = p[layers[0]]
    if len(tokens) < 2 or len({t[0] for toks in p.values() for t in toks}) > 1:
        return False
    return all(len({tuple(sorted(t[1])) for t in p[layer]}) == 1 for layer in layers)


def _drop_leading_warmups(
    passes: list[_RoutePass], layers: list[int]
) -> tuple[list[_RoutePass], int]:
    """The passes from the first that is not a warm-up on, and how many were dropped before
    it. Warm-ups (profile runs, CUDA-graph capture) run at start-up, before any request is
    served; later constant passes are real work on skewed routing and are kept."""
    warm = 0
    while warm < len(passes) and _is_warmup_pass(passes[warm], layers):
        warm += 1
    return passes[warm:], warm


def _read_route_lines(path: Path, where: str, num_experts: int | None) -> RoutingTrace:
    try:
        with path.open("rb") as f:
            is_gzip = f.read(2) == b"\x1f\x8b"  # by the bytes, not the name
    except OSError as exc:
        raise RuntimeFormatError(f"{where}: cannot read: {exc}") from exc
    opener = gzip.open if is_gzip else open
    meta: dict[str, Any] = {}
    # blocks: (layer, [(req_id, topk_ids, topk_weights)]) in file order
    blocks: list[tuple[int, list[_RouteToken]]] = []
    last_layer, last_idx = None, None
    try:
        with opener(path, "rt") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise RuntimeFormatError(f"{where}:{lineno}: not JSON: {exc}") from exc
                if not isinstance(rec, dict):
                    raise RuntimeFormatError(f"{where}:{lineno}: want a JSON object per line")
                kind = rec.get("type", "route")
                if kind == "meta":
                    meta = rec
                    continue
                if kind != "route":
                    continue
                try:
                    layer, idx = int(rec["layer"]), int(rec["token_idx"])
                    ids = [int(e) for e in rec["topk_ids"]]
                except (KeyError, TypeError, ValueError) as exc:
                    raise RuntimeFormatError(
                        f"{where}:{lineno}: a route record needs layer, token_idx and topk_ids "
                        f"(a list of expert ids): {exc}"
                    ) from exc
                w = rec.get("topk_weights")
                weights = [float(x) for x in w] if isinstance(w, list) else None
                if layer != last_layer or last_idx is None or idx != last_idx + 1:
                    blocks.append((layer, []))
                blocks[-1][1].append((str(rec.get("req_id", "")), ids, weights))
                last_layer, last_idx = layer, idx
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise RuntimeFormatError(f"{where}: cannot read: {exc}") from exc
    if not blocks:
        raise RuntimeFormatError(f"{where}: no route records ({{'type': 'route', ...}} lines)")
    # Blocks -> passes: a pass holds at most one block per layer.
    passes: list[_RoutePass] = [{}]
    for layer, toks in blocks:
        if layer in passes[-1]:
            passes.append({})
        passes[-1][layer] = toks
    layers = sorted({layer for p in passes for layer in p})
    seen_k = max(len(t[1]) for _, toks in blocks for t in toks)
    meta_k = meta.get("top_k")
    top_k = meta_k if isinstance(meta_k, int) and meta_k > 0 else seen_k
    _check_passes(passes, layers, top_k, where)
    kept, warm = _drop_leading_warmups(passes, layers)
    if not kept:
        raise RuntimeFormatError(f"{where}: every forward pass is a warm-up (constant routing)")
    num_tokens = sum(len(next(iter(p.values()))) for p in kept)
    ids_arr = np.zeros((num_tokens, len(layers), top_k), dtype=np.int64)
    w_arr = np.zeros((num_tokens, len(layers), top_k), dtype=np.float32)
    has_w = True
    req_of: dict[str, int] = {}
    seq_ids = np.zeros(num_tokens, dtype=np.int32)
    step_ids = np.zeros(num_tokens, dtype=np.int32)
    at = 0
    for s, p in enumerate(kept):
        n = len(p[layers[0]])
        for li, layer in enumerate(layers):
            for t, (req, e, w) in enumerate(p[layer]):
                ids_arr[at + t, li] = e
                if w is None:
                    has_w = False
                else:
                    w_arr[at + t, li] = w
                if li == 0:
                    seq_ids[at + t] = req_of.setdefault(req, len(req_of))
        step_ids[at : at + n] = s
        at += n
    meta_e = meta.get("num_experts")
    num_e = int(num_experts or (meta_e if isinstance(meta_e, int) else 0) or ids_arr.max() + 1)
    if (ids_arr < 0).any() or (ids_arr >= num_e).any() or num_e > MAX_EXPERT_ID + 1:
        raise RuntimeFormatError(f"{where}: topk_ids outside [0, {num_e})")
    notes = [f"{len(kept)} forward passes"]
    if warm:
        notes.append(
            f"dropped {warm} warm-up passes (leading, one request, every token routed identically)"
        )
    return RoutingTrace(
        model=str(meta.get("model_id", "unknown")),
        layer_ids=np.asarray(layers, dtype=np.int32),
        expert_ids=ids_arr.astype(np.int16),
        gate_weights=w_arr if has_w else None,
        seq_ids=seq_ids,
        num_experts=num_e,
        source=f"{path.name}: {num_tokens} tokens in {len(kept)} passes",
        notes=notes,
        step_ids=step_ids,
    )


def window_from_trace(trace: RoutingTrace, where: str) -> LoadWindow:
    """One sample per engine step (or per token when the trace has no steps)."""
    steps = trace.steps()
    loads = np.stack([trace.histogram(idx) for idx in steps]).astype(np.float64)
    return LoadWindow(loads, None, "routing-log", where, list(trace.notes), trace)


def read_window(path: str | Path, runtime: Runtime, num_logical: int | None = None) -> LoadWindow:
    """Read any runtime's recording as a window of logical loads."""
    if runtime == "sglang":
        return read_sglang_dump(path, num_logical)
    if runtime == "vllm":
        return read_vllm_window(path, num_logical)
    if runtime == "deepseek":
        return read_deepseek_weight(path)
    if runtime == "routing-log":
        return window_from_trace(read_routing_log(path, num_logical), str(path))
    raise RuntimeFormatError(f"{path}: unknown runtime {runtime!r}; want one of {RUNTIMES}")


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------

OutputFormat = Literal["moesched", "sglang", "vllm", "deepseek"]


def sglang_expert_location(
    phy2log: np.ndarray, logical_count: np.ndarray | None = None
) -> dict[str, Any]:
    """SGLang's ``--init-expert-location`` JSON: ``physical_to_logical_map [layers][physical]``,
    plus ``logical_count [layers][logical]`` when given (SGLang uses the map when both are)."""
    out: dict[str, Any] = {"physical_to_logical_map": np.asarray(phy2log).astype(int).tolist()}
    if logical_count is not None:
        out["logical_count"] = np.asarray(logical_count).tolist()
    return out


def deepseek_maps(phy2log: np.ndarray, log2phy: np.ndarray, logcnt: np.ndarray) -> dict[str, Any]:
    """DeepSeek EPLB's return values by name: ``phy2log [L, R]``, ``log2phy [L, E, max_count]``
    (-1 padded), ``logcnt [L, E]``."""
    return {
        "phy2log": np.asarray(phy2log).astype(int).tolist(),
        "log2phy": np.asarray(log2phy).astype(int).tolist(),
        "logcnt": np.asarray(logcnt).astype(int).tolist(),
    }


def vllm_maps(phy2log: np.ndarray, log2phy: np.ndarray, logcnt: np.ndarray) -> dict[str, Any]:
    """vLLM EplbState's names: ``physical_to_logical_map``, ``logical_to_physical_map``,
    ``logical_replica_count``."""
    return {
        "physical_to_logical_map": np.asarray(phy2log).astype(int).tolist(),
        "logical_to_physical_map": np.asarray(log2phy).astype(int).tolist(),
        "logical_replica_count": np.asarray(logcnt).astype(int).tolist(),
    }


# --------------------------------------------------------------------------------------------
# torch's on-disk format, written without torch (fixtures, and files for runtimes to load)
# --------------------------------------------------------------------------------------------

_DTYPE_STORAGE = {
    np.dtype("<f8"): "DoubleStorage",
    np.dtype("<f4"): "FloatStorage",
    np.dtype("<f2"): "HalfStorage",
    np.dtype("<i8"): "LongStorage",
    np.dtype("<i4"): "IntStorage",
    np.dtype("<i2"): "ShortStorage",
    np.dtype("i1"): "CharStorage",
    np.dtype("u1"): "ByteStorage",
    np.dtype("?"): "BoolStorage",
}


class _PickleWriter:
    """Emits protocol-2 pickle opcodes for dicts, lists, scalars and tensors the way torch.save
    lays them out: ``torch._utils._rebuild_tensor_v2(persistent storage, offset, size, stride,
    False, OrderedDict())``."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.storages: list[bytes] = []

    def _op(self, b: bytes) -> None:
        self.out.write(b)

    def _str(self, s: str) -> None:
        raw = s.encode()
        self._op(b"X" + len(raw).to_bytes(4, "little") + raw)

    def _int(self, v: int) -> None:
        if -(2**31) <= v < 2**31:
            self._op(b"J" + int(v).to_bytes(4, "little", signed=True))
        else:
            raw = int(v).to_bytes(9, "little", signed=True)
            self._op(b"\x8a" + bytes([len(raw)]) + raw)

    def _global(self, module: str, name: str) -> None:
        self._op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def _tuple_of_ints(self, vals: tuple[int, ...]) -> None:
        self._op(b"(")
        for v in vals:
            self._int(v)
        self._op(b"t")

    def save(self, obj: Any) -> None:
        if obj is None:
            self._op(b"N")
        elif isinstance(obj, bool):
            self._op(b"\x88" if obj else b"\x89")
        elif isinstance(obj, int):
            self._int(obj)
        elif isinstance(obj, float):
            import struct

            self._op(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, str):
            self._str(obj)
        elif isinstance(obj, np.ndarray):
            self._tensor(obj)
        elif isinstance(obj, (list, tuple)):
            self._op(b"]" if isinstance(obj, list) else b"(")
            if isinstance(obj, list):
                self._op(b"(")
            for item in obj:
                self.save(item)
            self._op(b"e" if isinstance(obj, list) else b"t")
        elif isinstance(obj, dict):
            self._op(b"}(")
            for k, v in obj.items():
                self.save(k)
                self.save(v)
            self._op(b"u")
        else:
            raise TypeError(f"cannot write {type(obj).__name__} in a torch file")

    def _tensor(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        storage = _DTYPE_STORAGE.get(np.dtype(dtype))
        if storage is None:
            raise TypeError(f"no torch storage for dtype {arr.dtype}")
        key = str(len(self.storages))
        self.storages.append(arr.astype(dtype).tobytes())
        strides = tuple(s // arr.itemsize for s in arr.strides) if arr.ndim else ()
        self._global("torch._utils", "_rebuild_tensor_v2")
        self._op(b"(")
        # persistent id ('storage', torch.<T>Storage, key, 'cpu', numel)
        self._op(b"(")
        self._str("storage")
        self._global("torch", storage)
        self._str(key)
        self._str("cpu")
        self._int(int(arr.size))
        self._op(b"tQ")  # BINPERSID
        self._int(0)
        self._tuple_of_ints(tuple(arr.shape))
        self._tuple_of_ints(strides)
        self._op(b"\x89")  # requires_grad False
        self._global("collections", "OrderedDict")
        self._op(b")R")
        self._op(b"tR")

    def pickle(self, obj: Any) -> bytes:
        self._op(b"\x80\x02")
        self.save(obj)
        self._op(b".")
        return self.out.getvalue()


def write_torch_file(path: str | Path, obj: Any, archive: str = "archive") -> None:
    """Write ``obj`` (dicts, lists, scalars, numpy arrays as tensors) in torch.save's zip
    layout: ``<archive>/data.pkl``, ``<archive>/data/<key>`` raw little-endian storages,
    ``<archive>/byteorder``, ``<archive>/version``. ``torch.load(weights_only=True)`` reads it."""
    w = _PickleWriter()
    data = w.pickle(obj)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{archive}/data.pkl", data)
        zf.writestr(f"{archive}/byteorder", "little")
        for key, raw in enumerate(w.storages):
            zf.writestr(f"{archive}/data/{key}", raw)
        zf.writestr(f"{archive}/version", "3\n")
