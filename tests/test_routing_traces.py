"""Loaders on the real files in ../shared/traces, against the figures their README states."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hwmodel.routing_traces import (
    COUNTS_FILE,
    ESFT_FILES,
    FLAME_FILE,
    load_esft,
    load_expert_counts,
    load_flame,
    load_trace,
)
from hwmodel.workload import RoutingTrace


@pytest.mark.parametrize(
    ("task", "num_tokens", "num_seqs"), [("intent", 8222, 127), ("law", 8327, 33)]
)
def test_esft_shape_and_counts(traces: Path, task: str, num_tokens: int, num_seqs: int) -> None:
    t = load_esft(traces / ESFT_FILES[task])
    assert t.expert_ids.shape == (num_tokens, 26, 6)
    assert t.gate_weights is not None and t.gate_weights.shape == (num_tokens, 26, 6)
    assert len(np.unique(t.seq_ids)) == num_seqs
    assert t.expert_ids.min() >= 0 and t.expert_ids.max() < 64
    # A token's six experts are distinct in every layer.
    srt = np.sort(t.expert_ids, axis=2)
    assert (np.diff(srt, axis=2) > 0).all()
    hist = t.histogram()
    assert (hist.sum(axis=1) == num_tokens * 6).all()
    # Gate weights are unnormalised softmax probabilities: per token sum in (0, 1].
    sums = t.gate_weights.sum(axis=2)
    assert sums.min() > 0.1 and sums.max() <= 1.0 + 1e-3


@pytest.mark.parametrize(("task", "lo", "hi"), [("intent", 2.93, 4.68), ("law", 1.95, 6.87)])
def test_esft_load_skew_matches_readme(traces: Path, task: str, lo: float, hi: float) -> None:
    hist = load_esft(traces / ESFT_FILES[task]).histogram()
    skew = hist.max(axis=1) / hist.mean(axis=1)
    assert skew.min() == pytest.approx(lo, abs=0.01)
    assert skew.max() == pytest.approx(hi, abs=0.01)


def test_esft_gate_mass_and_transitions(traces: Path) -> None:
    t = load_esft(traces / ESFT_FILES["law"])
    batch = slice(0, 64)
    mass = t.gate_mass(batch)
    assert mass.shape == (26, 64)
    assert mass.sum() == pytest.approx(float(t.gate_weights[batch].sum()), rel=1e-5)  # type: ignore[index]
    tr = t.transitions(batch)
    assert tr.shape == (25, 64, 64)
    assert (tr.sum(axis=(1, 2)) == 64 * 36).all()  # all 6 x 6 pairs of each token
    # Row sums of the layer-l -> l+1 matrix are 6 x the layer-l histogram.
    assert (tr[3].sum(axis=1) == 6 * t.histogram(batch)[3]).all()


def test_flame(traces: Path) -> None:
    t = load_flame(traces / FLAME_FILE)
    assert t.expert_ids.shape == (2048, 8, 6)
    assert list(np.bincount(t.seq_ids)) == [512] * 4
    hist = t.histogram()
    skew = hist.max(axis=1) / hist.mean(axis=1)
    assert skew.min() >= 1.35 and skew.max() <= 1.9
    # Scores are sorted descending per token, as the README says.
    assert (np.diff(t.gate_weights, axis=2) <= 1e-7).all()  # type: ignore[arg-type]
    assert load_trace(traces / FLAME_FILE).num_tokens == 2048


def test_expert_counts(traces: Path) -> None:
    c = load_expert_counts(traces / COUNTS_FILE)
    assert set(c.models()) == {"olmoe", "olmoe-sft", "olmoe-dpo", "mixtral"}
    n = c.num_tokens("olmoe", "arxiv")
    h = c.histogram("olmoe", "arxiv", "0")
    assert h.shape == (64,) and h.sum() == n * 8
    assert h.max() / h.mean() == pytest.approx(7.8, abs=0.05)
    mix = c.histogram("mixtral", "github", "15")
    assert mix.shape == (8,) and 1.0 <= mix.max() / mix.mean() <= 1.35
    tr = c.transition("olmoe", "arxiv", "0-7")
    assert tr.shape == (64, 64) and tr.sum() == n * 8


def test_sampled_trace_follows_the_histogram_and_says_so(traces: Path) -> None:
    c = load_expert_counts(traces / COUNTS_FILE)
    t = c.sample_trace("mixtral", "arxiv", 4000, num_layers=32, seed=1)
    assert t.expert_ids.shape == (4000, 32, 2)
    assert "sampled" in t.notes[0]
    p = c.histogram("mixtral", "arxiv", "0") / c.histogram("mixtral", "arxiv", "0").sum()
    q = t.histogram()[0] / t.histogram()[0].sum()
    assert np.abs(p - q).max() < 0.02
    assert (np.diff(np.sort(t.expert_ids, axis=2), axis=2) > 0).all()


def test_non_trace_file_is_refused(traces: Path) -> None:
    with pytest.raises(ValueError, match="not a per-token routing trace"):
        load_trace(traces / COUNTS_FILE)


def test_load_trace_recognises_a_serving_engines_routing_log(tmp_path: Path) -> None:
    """A vLLM-style route log (``.jsonl.gz`` and plain ``.jsonl``) loads through ``load_trace``
    as ``read_routing_log`` reads it (engine steps kept, warm-up pass dropped), so
    ``bench balance --trace`` takes it; the ESFT trace still loads as ESFT."""
    import gzip
    import shutil

    from hwmodel.runtime_formats import read_routing_log

    log = Path(__file__).parent / "fixtures" / "runtimes" / "vllm_routes.jsonl.gz"
    want = read_routing_log(log)
    plain = tmp_path / "routes.jsonl"
    with gzip.open(log, "rb") as src, plain.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    for path in (log, plain):
        got = load_trace(path)
        assert got.step_ids is not None and len(got.steps()) == len(want.steps()) > 1
        np.testing.assert_array_equal(got.expert_ids, want.expert_ids)
        np.testing.assert_array_equal(got.histogram(), want.histogram())
    bad = tmp_path / "other.jsonl"
    bad.write_text('{"hello": 1}\n')
    with pytest.raises(ValueError, match="not a per-token routing trace"):
        load_trace(bad)


# --------------------------------------------------------------------------------------------
# Files other than the shared ones: the loaders read what the shape says, not what it was
# --------------------------------------------------------------------------------------------

# sha256 of (dtype, shape, bytes) of layer_ids, expert_ids, gate_weights, seq_ids as the
# loaders returned them before they read anything but the shared files (commit 1cacfef).
SHARED_DIGESTS = {
    ESFT_FILES["intent"]: "6db3f613effd5b36d64a82e9475689be2114bdf28a579d5f0845fdfd388d334e",
    ESFT_FILES["law"]: "d7cc1902b1848b1cdeef53377cb9071ca9b466637c7562a8d7c803a593992242",
    FLAME_FILE: "9992eee5e3d0864b48808126707df430ec7f1c6a3d5e655446ff4b4c946e0b15",
}


def _digest(t: RoutingTrace) -> str:
    h = hashlib.sha256()
    for a in (t.layer_ids, t.expert_ids, t.gate_weights, t.seq_ids):
        assert a is not None
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _write_esft(
    path: Path,
    seq_lengths: list[int],
    num_layers: int = 26,
    top_k: int = 6,
    max_id: int = 63,
    meta: dict[str, Any] | None = None,
    gz: bool = True,
) -> None:
    """An ESFT-format file: a ``{"meta": ...}`` line, then one line per (layer 1.., seq): token
    0 routed to ``max_id, max_id - 1, ...``, token t > 0 to ``(t + layer + k) % (max_id + 1)``
    for k < top_k."""
    lines = [json.dumps({"meta": {"task": "t", "seq_lengths": seq_lengths, **(meta or {})}})]
    for layer in range(1, num_layers + 1):
        for seq, n in enumerate(seq_lengths):
            ids = [[(t + layer + k) % (max_id + 1) for k in range(top_k)] for t in range(n)]
            ids[0] = [max_id - k for k in range(top_k)]
            w = [[0.1] * top_k for _ in range(n)]
            lines.append(json.dumps({"layer": layer, "seq": seq, "ids": ids, "w": w}))
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_shared_files_load_exactly_as_before(traces: Path) -> None:
    for name, digest in SHARED_DIGESTS.items():
        t = load_trace(traces / name)
        assert _digest(t) == digest, name
        assert t.num_experts == 64
    assert load_esft(traces / ESFT_FILES["law"]).model == "deepseek-v2-lite"
    assert load_esft(traces / ESFT_FILES["law"]).source == (
        "esft_vanilla_lite_law_routing.jsonl.gz (law): 8327 tokens"
    )
    assert load_flame(traces / FLAME_FILE).model == "flame-moe-290m"


def test_esft_is_read_plain_or_gzip_by_its_bytes_not_its_name(traces: Path, tmp_path: Path) -> None:
    """A plain ``.jsonl`` (the shared file, decompressed) and gzip bytes under a ``.jsonl``
    name load as the ``.jsonl.gz`` does, through ``load_esft`` and ``load_trace``."""
    src = traces / ESFT_FILES["law"]
    plain = tmp_path / "law_routing.jsonl"
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    misnamed = tmp_path / "law_gzip_routing.jsonl"
    shutil.copyfile(src, misnamed)
    for path in (plain, misnamed):
        for t in (load_esft(path), load_trace(path)):
            assert _digest(t) == SHARED_DIGESTS[ESFT_FILES["law"]]
            assert t.num_experts == 64 and t.model == "deepseek-v2-lite"


def test_esft_expert_count_from_meta_else_the_largest_id(tmp_path: Path) -> None:
    """meta ``num_experts`` when it is an integer; else the largest id + 1 (a lower bound
    ``match_model`` widens). The name is DeepSeek-V2-Lite's only for its shape."""
    lite = tmp_path / "lite.jsonl.gz"
    _write_esft(lite, [3, 2], max_id=40)
    t = load_esft(lite)
    assert t.num_experts == 41 and t.model == "deepseek-v2-lite"
    assert t.expert_ids.shape == (5, 26, 6) and int(t.expert_ids.max()) == 40
    big = tmp_path / "big.jsonl.gz"
    _write_esft(big, [3], max_id=100, meta={"num_experts": 160})
    t = load_esft(big)
    assert t.num_experts == 160 and t.model == "unknown"
    wider = tmp_path / "wider.jsonl.gz"
    _write_esft(wider, [3], max_id=70)
    assert load_esft(wider).num_experts == 71 and load_esft(wider).model == "unknown"
    shallow = tmp_path / "shallow.jsonl"
    _write_esft(shallow, [4], num_layers=4, top_k=2, max_id=7, gz=False)
    t = load_esft(shallow)
    assert t.num_experts == 8 and t.model == "unknown" and t.expert_ids.shape == (4, 4, 2)
    small_meta = tmp_path / "small_meta.jsonl.gz"
    _write_esft(small_meta, [3], max_id=63, meta={"num_experts": 32})
    with pytest.raises(ValueError, match=r"small_meta\.jsonl\.gz.*num_experts 32"):
        load_esft(small_meta)


@pytest.mark.parametrize("bad_id", [-3, -1, 32768, 70000])
def test_esft_ids_outside_int16_are_refused_naming_file_layer_and_sequence(
    tmp_path: Path, bad_id: int
) -> None:
    path = tmp_path / f"bad{bad_id}.jsonl"
    _write_esft(path, [2, 3], num_layers=3, top_k=2, max_id=7, gz=False)
    lines = path.read_text().splitlines()
    rec = json.loads(lines[5])  # layer 3, seq 0 (lines: meta, then (layer, seq) in order)
    rec["ids"][1][0] = bad_id
    lines[5] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"bad{bad_id}\.jsonl: layer 3 seq 0 .*{bad_id}"):
        load_esft(path)


def _write_flame(
    path: Path, num_tokens: int, meta: dict[str, Any], scores: bool = True, gz: bool = False
) -> None:
    """A FLAME-format JSON of 3 MoE layers x top-2 over 8 experts."""
    indices = [[[(t + li) % 8, (t + li + 1) % 8] for t in range(num_tokens)] for li in range(3)]
    d: dict[str, Any] = {"meta": {"num_experts": 8, "top_k": 2, **meta}, "layers": [1, 2, 3]}
    d["indices"] = indices
    if scores:
        d["scores"] = [[[0.6, 0.3] for _ in range(num_tokens)] for _ in range(3)]
    data = json.dumps(d).encode()
    path.write_bytes(gzip.compress(data) if gz else data)


def test_flame_sequence_length_from_meta_last_sequence_partial(tmp_path: Path) -> None:
    for key in ("seq_len", "sequence_length"):
        path = tmp_path / f"{key}.json"
        _write_flame(path, 10, {key: 4})
        t = load_flame(path)
        assert t.expert_ids.shape == (10, 3, 2)
        assert list(np.bincount(t.seq_ids)) == [4, 4, 2]
    default = tmp_path / "default.json"
    _write_flame(default, 1100, {})
    assert list(np.bincount(load_flame(default).seq_ids)) == [512, 512, 76]
    bad = tmp_path / "bad_len.json"
    _write_flame(bad, 10, {"seq_len": 0})
    with pytest.raises(ValueError, match=r"bad_len\.json: meta seq_len"):
        load_flame(bad)


def test_flame_gzip_and_without_scores(traces: Path, tmp_path: Path) -> None:
    """``.json.gz`` (gzip by its bytes) loads through ``load_flame`` and ``load_trace``; no
    ``scores`` means no gate weights, not a failure."""
    gz = tmp_path / "flame.json.gz"
    gz.write_bytes(gzip.compress((traces / FLAME_FILE).read_bytes()))
    for t in (load_flame(gz), load_trace(gz)):
        assert _digest(t) == SHARED_DIGESTS[FLAME_FILE]
    bare = tmp_path / "bare.json.gz"
    _write_flame(bare, 6, {"seq_len": 3}, scores=False, gz=True)
    for t in (load_flame(bare), load_trace(bare)):
        assert t.gate_weights is None and t.expert_ids.shape == (6, 3, 2)
        assert t.num_experts == 8 and list(np.bincount(t.seq_ids)) == [3, 3]
        assert t.histogram().sum() == 6 * 3 * 2
