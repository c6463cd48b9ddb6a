"""Loaders on the real files in ../shared/traces, against the figures their README states."""

from __future__ import annotations

from pathlib import Path

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
