"""Runtime files: SGLang dumps (own writer and real torch.save), vLLM windows, EPLB weight,
routing logs; the restricted unpickler refuses everything but tensors."""

from __future__ import annotations

import gzip
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hwmodel.runtime_formats import (
    RuntimeFormatError,
    deepseek_maps,
    fold_physical,
    load_torch_file,
    read_deepseek_weight,
    read_routing_log,
    read_sglang_dump,
    read_vllm_window,
    read_window,
    sglang_expert_location,
    window_from_trace,
    write_torch_file,
)

FIXTURES = Path(__file__).parent / "fixtures" / "runtimes"


def test_own_writer_round_trips_tensors_of_every_layout(tmp_path: Path) -> None:
    a = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    obj = {
        "rank": 0,
        "logical_count": a,
        "f": np.array([[1.5, -2.0]], dtype=np.float32),
        "l": [np.int64(3).item(), None, 2.5, "x", True],
        "big": 2**40,
        "empty": np.zeros((0, 3), dtype=np.int64),
    }
    write_torch_file(tmp_path / "x.pt", obj)
    got = load_torch_file(tmp_path / "x.pt")
    assert got["rank"] == 0 and got["big"] == 2**40
    assert got["logical_count"].dtype == np.int32
    np.testing.assert_array_equal(got["logical_count"], a)
    np.testing.assert_array_equal(got["f"], obj["f"])
    assert got["l"] == [3, None, 2.5, "x", True]
    assert got["empty"].shape == (0, 3)


def test_sglang_stat_own_writer_drops_unfilled_rows(tmp_path: Path) -> None:
    counts = np.zeros((5, 2, 4), dtype=np.int32)
    counts[0] = [[3, 0, 1, 0], [0, 2, 2, 0]]
    counts[1] = [[1, 1, 1, 1], [4, 0, 0, 0]]
    path = tmp_path / "expert_distribution_recorder_1.pt"
    write_torch_file(
        path, {"rank": 0, "logical_count": counts, "average_utilization_rate_over_window": None}
    )
    w = read_sglang_dump(path)
    assert w.kind == "sglang-stat" and w.logical_loads.shape == (2, 2, 4)
    np.testing.assert_array_equal(w.logical_loads, counts[:2])
    assert any("3 empty steps" in n for n in w.notes)


def test_sglang_stat_as_json_matches_pt(tmp_path: Path) -> None:
    counts = [[[1, 2], [3, 4]], [[0, 5], [5, 0]]]
    (tmp_path / "d.json").write_text(json.dumps({"rank": 0, "logical_count": counts}))
    write_torch_file(
        tmp_path / "d.pt", {"rank": 0, "logical_count": np.array(counts, dtype=np.int32)}
    )
    np.testing.assert_array_equal(
        read_sglang_dump(tmp_path / "d.json").logical_loads,
        read_sglang_dump(tmp_path / "d.pt").logical_loads,
    )


def test_sglang_detail_maps_physical_ids_to_logical(tmp_path: Path) -> None:
    # 3 logical experts, 4 physical slots: slot 3 is a second replica of expert 0.
    p2l = np.array([[0, 1, 2, 0], [2, 1, 0, 0]], dtype=np.int64)
    ids = np.full((2, 3, 8), -1, dtype=np.int32)
    ids[:, :, :2] = [[[0, 3], [1, 2], [3, 1]], [[0, 1], [2, 3], [1, 0]]]
    rec = {"forward_pass_id": 0, "rank": 0, "topk_ids_of_layer": ids, "input_ids": [1, 2, 3]}
    path = tmp_path / "detail.pt"
    write_torch_file(path, {"records": [rec], "last_physical_to_logical_map": p2l})
    w = read_sglang_dump(path)
    assert w.kind == "sglang-detail"
    # layer 0 logical: [0,0],[1,2],[0,1] -> e0: 3, e1: 2, e2: 1
    np.testing.assert_array_equal(w.logical_loads[0, 0], [3, 2, 1])
    # layer 1 logical: [2,1],[0,0],[1,2] -> e0: 2, e1: 2, e2: 2
    np.testing.assert_array_equal(w.logical_loads[0, 1], [2, 2, 2])
    assert w.trace is not None and w.trace.top_k == 2 and w.trace.num_tokens == 3
    np.testing.assert_array_equal(w.trace.expert_ids[0], [[0, 0], [2, 1]])


def test_real_torch_save_fixtures_are_read_without_torch() -> None:
    # The fixtures are torch.save's own output (make_torch_fixtures.py, torch 2.13.0+cpu):
    # they carry the members torch writes and write_torch_file does not.
    for name in ("sglang_stat", "sglang_detail", "vllm_window"):
        members = zipfile.ZipFile(FIXTURES / f"{name}.pt").namelist()
        assert {f"{name}/.data/serialization_id", f"{name}/.format_version"} <= set(members)
    stat = read_sglang_dump(FIXTURES / "sglang_stat.pt")
    assert stat.logical_loads.shape == (12, 4, 64)
    # every step holds 8 real ESFT tokens x top-6 in each layer
    assert (stat.logical_loads.sum(-1) == 48).all()
    detail = read_sglang_dump(FIXTURES / "sglang_detail.pt")
    assert detail.logical_loads.shape == (4, 4, 64)
    assert detail.logical_loads[:, 0].sum(-1).tolist() == [240, 6, 6, 108]
    assert detail.trace is not None and detail.trace.num_tokens == 60 and detail.trace.top_k == 6
    assert detail.trace.step_ids is not None and len(detail.trace.steps()) == 4
    # the same first 48 tokens, counted both ways
    np.testing.assert_array_equal(
        stat.logical_loads[:5].sum(0), detail.trace.histogram(slice(0, 40))
    )
    vllm = read_vllm_window(FIXTURES / "vllm_window.pt")
    np.testing.assert_array_equal(vllm.logical_loads, stat.logical_loads)


def test_hostile_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    victim = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(victim), "w"))

    for name, payload in [
        ("evil", {"logical_count": Evil()}),
        ("evil_os", Evil()),
    ]:
        path = tmp_path / f"{name}.pt"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
            zf.writestr("archive/version", "3\n")
        with pytest.raises(RuntimeFormatError) as err:
            read_sglang_dump(path)
        assert str(path) in str(err.value) and "io.open" in str(err.value)
        assert not victim.exists()
    # The payload is really hostile: an ordinary unpickler creates the file.
    pickle.loads(pickle.dumps(Evil(), protocol=2)).close()
    assert victim.exists()


def test_malformed_and_truncated_files_name_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    write_torch_file(good, {"logical_count": np.ones((2, 2, 3), dtype=np.int32)})
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(good.read_bytes()[:-40])
    bare = tmp_path / "bare.pt"
    bare.write_bytes(pickle.dumps({"logical_count": [[[1]]]}))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a dump")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"logical_count": [1, 2, 3]}))
    for path in (truncated, bare, junk, wrong, tmp_path / "missing.pt"):
        with pytest.raises(RuntimeFormatError) as err:
            read_sglang_dump(path)
        assert str(path) in str(err.value)
    with pytest.raises(RuntimeFormatError, match=r"\[steps, layers, logical\]"):
        read_sglang_dump(wrong)


def test_vllm_fold_sums_replicas_of_one_expert() -> None:
    physical = np.array([[[5, 1, 2, 3]]], dtype=np.float64)  # one pass, one layer, 4 slots
    p2l = np.array([[0, 1, 2, 0]])
    np.testing.assert_array_equal(fold_physical(physical, p2l, 3), [[[8, 1, 2]]])


def test_vllm_window_json_with_mismatched_map_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text(
        json.dumps({"expert_load_window": [[[1, 2, 3]]], "physical_to_logical_map": [[0, 1]]})
    )
    with pytest.raises(RuntimeFormatError, match="3 physical slots"):
        read_vllm_window(path)


def test_deepseek_weight_bare_or_named(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[[1, 2], [3, 4]]")
    (tmp_path / "b.json").write_text('{"weight": [[1, 2], [3, 4]]}')
    a, b = read_deepseek_weight(tmp_path / "a.json"), read_deepseek_weight(tmp_path / "b.json")
    assert a.logical_loads.shape == (1, 2, 2)
    np.testing.assert_array_equal(a.logical_loads, b.logical_loads)


def _route(req: str, idx: int, layer: int, ids: list[int]) -> str:
    w = [0.1] * len(ids)
    return json.dumps(
        {
            "type": "route",
            "req_id": req,
            "token_idx": idx,
            "layer": layer,
            "topk_ids": ids,
            "topk_weights": w,
        }
    )


def test_routing_log_splits_passes_drops_warmup_and_mixes_requests(tmp_path: Path) -> None:
    lines = [json.dumps({"type": "meta", "model_id": "m", "top_k": 2, "layers_logged": [0, 1]})]
    # warm-up: 3 tokens, identical routing in both layers
    for layer in (0, 1):
        lines += [_route("dummy", t, layer, [4, 5]) for t in range(3)]
    # prefill of request a: 3 tokens
    for layer, rows in ((0, [[0, 1], [2, 3], [0, 2]]), (1, [[1, 2], [3, 0], [1, 3]])):
        lines += [_route("a", t, layer, r) for t, r in enumerate(rows)]
    # a decode step mixing request a (its 4th token) and the prefill of b (2 tokens)
    for layer, rows in ((0, [[5, 6], [1, 1 + 6], [3, 4]]), (1, [[0, 1], [6, 7], [2, 4]])):
        reqs = ["a", "b", "b"]
        lines += [_route(reqs[t], t, layer, r) for t, r in enumerate(rows)]
    for gz in (False, True):
        path = tmp_path / ("log.jsonl.gz" if gz else "log.jsonl")
        data = "\n".join(lines) + "\n"
        if gz:
            with gzip.open(path, "wt") as f:
                f.write(data)
        else:
            path.write_text(data)
        tr = read_routing_log(path)
        assert tr.num_tokens == 6 and tr.num_layers == 2 and tr.top_k == 2
        assert tr.step_ids is not None and tr.step_ids.tolist() == [0, 0, 0, 1, 1, 1]
        assert tr.seq_ids.tolist() == [0, 0, 0, 0, 1, 1]
        assert any("1 warm-up" in n for n in tr.notes)
        w = window_from_trace(tr, str(path))
        assert w.logical_loads.shape == (2, 2, 8)
        assert w.logical_loads[0, 0].tolist() == [2, 1, 2, 1, 0, 0, 0, 0]


def test_routing_log_one_layer_splits_at_token_restart(tmp_path: Path) -> None:
    lines = [_route("r", t, 3, [t % 4, 4 + t % 3]) for t in range(4)]
    lines += [_route("r", 0, 3, [1, 2]), _route("s", 1, 3, [2, 3])]
    lines += [_route("r", 0, 3, [0, 5])]
    path = tmp_path / "one.jsonl"
    path.write_text("\n".join(lines))
    tr = read_routing_log(path)
    assert tr.layer_ids.tolist() == [3]
    assert [len(s) for s in tr.steps()] == [4, 2, 1]


def test_routing_log_inconsistent_pass_is_refused(tmp_path: Path) -> None:
    lines = [_route("r", t, 0, [0, 1 + t]) for t in range(3)] + [_route("r", 0, 1, [0, 1])]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines))
    with pytest.raises(RuntimeFormatError, match=r"bad\.jsonl.*same tokens"):
        read_routing_log(path)


def test_batched_decode_layout(tmp_path: Path) -> None:
    ids = np.arange(3 * 2 * 4 * 2).reshape(3, 2, 4, 2) % 16  # positions, layers, seqs, k
    path = tmp_path / "decode.json"
    path.write_text(json.dumps({"topk_ids": ids.tolist()}))
    tr = read_routing_log(path, num_experts=16)
    assert tr.num_tokens == 12 and [len(s) for s in tr.steps()] == [4, 4, 4]
    np.testing.assert_array_equal(tr.expert_ids[5], ids[1, :, 1])  # position 1, sequence 1
    bad = tmp_path / "flat.json"
    bad.write_text(json.dumps({"topk_ids": ids[0].tolist()}))
    with pytest.raises(
        RuntimeFormatError, match=r"flat.json.*\[positions, layers, sequences, top_k\]"
    ):
        read_routing_log(bad)


def test_writers_use_the_runtimes_names() -> None:
    p2l = np.array([[0, 1, 2, 0]])
    out = sglang_expert_location(p2l, np.array([[3, 1, 1]]))
    assert out == {"physical_to_logical_map": [[0, 1, 2, 0]], "logical_count": [[3, 1, 1]]}
    ds = deepseek_maps(p2l, np.array([[[0, 3], [1, -1], [2, -1]]]), np.array([[2, 1, 1]]))
    assert set(ds) == {"phy2log", "log2phy", "logcnt"}


def test_read_window_dispatches(tmp_path: Path) -> None:
    (tmp_path / "w.json").write_text("[[1, 2]]")
    assert read_window(tmp_path / "w.json", "deepseek").kind == "deepseek"


def _pass(reqs: list[str | None], layers: list[int], rows: list[list[int]]) -> list[str]:
    """One forward pass as a hook logs it: per layer, one block with token_idx 0.. over the
    batch, token t of request ``reqs[t]`` (no req_id field when None) routed to ``rows[t]``
    in every layer."""
    lines = []
    for layer in layers:
        for t, (req, ids) in enumerate(zip(reqs, rows, strict=True)):
            rec = json.loads(_route(req or "", t, layer, ids))
            if req is None:
                del rec["req_id"]
            lines.append(json.dumps(rec))
    return lines


def test_routing_log_drops_only_leading_one_request_warmups(tmp_path: Path) -> None:
    """Switch-like top-1 routing (expert 0 takes nearly every token): after the first real
    pass, constant passes are real work (a prefill all routed to expert 0, decode steps of
    several requests) and are kept; only the start-up dummy passes before it are dropped."""
    meta = json.dumps({"type": "meta", "model_id": "switch-like", "top_k": 1})
    lines = [meta]
    lines += _pass([None] * 4, [0, 1], [[0]] * 4)  # profile run: no req_id
    lines += _pass(["warmup"] * 3, [0, 1], [[2]] * 3)  # CUDA-graph capture: one dummy request
    lines += _pass(["a"] * 4, [0, 1], [[0], [0], [3], [0]])  # prefill of a: first real pass
    lines += _pass(["c"] * 3, [0, 1], [[0]] * 3)  # prefill of c, every token to expert 0
    for _ in range(5):  # decode steps of a and c, every token to expert 0
        lines += _pass(["a", "c"], [0, 1], [[0], [0]])
    lines += _pass(["c"] * 2, [0, 1], [[0]] * 2)  # a later one-request constant pass
    path = tmp_path / "switch.jsonl"
    path.write_text("\n".join(lines) + "\n")
    tr = read_routing_log(path)
    assert [len(s) for s in tr.steps()] == [4, 3, 2, 2, 2, 2, 2, 2]
    assert tr.num_tokens == 19 and tr.top_k == 1
    assert tr.seq_ids.tolist()[:9] == [0, 0, 0, 0, 1, 1, 1, 0, 1]
    assert tr.histogram()[0].tolist() == [18, 0, 0, 1]
    assert "dropped 2 warm-up passes" in " ".join(tr.notes)


def test_routing_log_of_constant_passes_of_several_requests_is_kept(tmp_path: Path) -> None:
    """A pass of several requests is served work, however skewed its routing."""
    lines = []
    for _ in range(3):
        lines += _pass(["a", "b"], [0, 1], [[0, 1], [0, 1]])
    path = tmp_path / "const.jsonl"
    path.write_text("\n".join(lines) + "\n")
    tr = read_routing_log(path)
    assert tr.num_tokens == 6 and len(tr.steps()) == 3
    assert not any("warm-up" in n for n in tr.notes)
    # one request's constant passes alone are all warm-up: refused as before
    only = tmp_path / "only_warmup.jsonl"
    only.write_text("\n".join(_pass(["w"] * 2, [0], [[1, 2]] * 2) * 2) + "\n")
    with pytest.raises(RuntimeFormatError, match=r"only_warmup\.jsonl: every forward pass"):
        read_routing_log(only)


def test_routing_log_misaligned_passes_hint_at_token_idx(tmp_path: Path) -> None:
    """token_idx written as the position in the request (a at 10, b at 3) cuts a decode
    step's layer into blocks that do not line up; the error says what token_idx must be."""
    lines = []
    for layer in (0, 1):
        lines += [_route("a", 10, layer, [0, 1]), _route("b", 3, layer, [2, 3])]
    path = tmp_path / "positions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RuntimeFormatError) as err:
        read_routing_log(path)
    msg = str(err.value)
    assert "positions.jsonl: forward pass 0" in msg and "same tokens" in msg
    assert "index within one hook call's batch" in msg and "not its position" in msg


def test_routing_log_gzip_is_read_by_its_bytes_not_its_name(tmp_path: Path) -> None:
    """gzip bytes named ``.jsonl`` and plain text named ``.jsonl.gz`` read as the fixture."""
    want = read_routing_log(FIXTURES / "vllm_routes.jsonl.gz")
    raw = gzip.decompress((FIXTURES / "vllm_routes.jsonl.gz").read_bytes())
    zipped = tmp_path / "zipped.jsonl"
    zipped.write_bytes(gzip.compress(raw))
    plain = tmp_path / "plain.jsonl.gz"
    plain.write_bytes(raw)
    for path in (zipped, plain):
        got = read_routing_log(path)
        np.testing.assert_array_equal(got.expert_ids, want.expert_ids)
        assert got.step_ids is not None and want.step_ids is not None
        np.testing.assert_array_equal(got.step_ids, want.step_ids)
    with pytest.raises(RuntimeFormatError, match=r"missing\.jsonl: cannot read"):
        read_routing_log(tmp_path / "missing.jsonl")
