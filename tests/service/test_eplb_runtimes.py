"""POST /v1/eplb and `moesched eplb` on runtimes' files: real torch.save dumps, windows, the
formats runtimes load, and clear errors for bad files."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.cli import app as cli_app
from service.main import create_app

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "runtimes"


def _dump(runtime: str, path: Path) -> dict[str, str]:
    return {
        "runtime": runtime,
        "filename": path.name,
        "content_base64": base64.b64encode(path.read_bytes()).decode(),
    }


def test_sglang_stat_dump_to_init_expert_location() -> None:
    c = TestClient(create_app())
    body = {
        "dump": _dump("sglang", FIXTURES / "sglang_stat.pt"),
        "num_replicas": 72,
        "num_gpus": 8,
        "format": "sglang",
    }
    r = c.post("/v1/eplb", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    p2l = out["runtime_file"]["physical_to_logical_map"]
    assert np.asarray(p2l).shape == (4, 72)
    assert all(set(row) == set(range(64)) for row in p2l)  # every logical expert present
    assert out["num_samples"] == 12 and out["backend"] == "window"
    assert all(
        a >= b - 1e-12
        for a, b in zip(out["window_balancedness"], out["window_balancedness_eplb"], strict=True)
    )


def test_sglang_detail_dump_aligns_with_the_recorded_map() -> None:
    c = TestClient(create_app())
    body = {"dump": _dump("sglang", FIXTURES / "sglang_detail.pt"), "num_gpus": 8}
    out = c.post("/v1/eplb", json=body | {"format": "deepseek"}).json()
    assert set(out["runtime_file"]) == {"phy2log", "log2phy", "logcnt"}
    assert out["moved_replicas"] < out["moved_replicas_unaligned"]
    capped = c.post("/v1/eplb", json=body | {"max_moved_replicas": 30}).json()
    assert capped["moved_replicas"] <= 30


def test_vllm_window_and_physical_window_agree() -> None:
    c = TestClient(create_app())
    a = c.post(
        "/v1/eplb",
        json={"dump": _dump("vllm", FIXTURES / "vllm_window.pt"), "num_gpus": 8, "format": "vllm"},
    )
    assert a.status_code == 200, a.text
    assert set(a.json()["runtime_file"]) == {
        "physical_to_logical_map",
        "logical_to_physical_map",
        "logical_replica_count",
    }
    from hwmodel.runtime_formats import load_torch_file

    raw = load_torch_file(FIXTURES / "vllm_window.pt")
    b = c.post(
        "/v1/eplb",
        json={
            "physical_window": raw["expert_load_window"].tolist(),
            "current_physical_to_logical": raw["physical_to_logical_map"].tolist(),
            "num_gpus": 8,
        },
    )
    assert b.status_code == 200, b.text
    assert a.json()["physical_to_logical"] == b.json()["physical_to_logical"]


def test_bad_inputs_get_one_clear_4xx(tmp_path: Path) -> None:
    c = TestClient(create_app())
    three_d = {"weights": [[[1, 2], [3, 4]]], "num_replicas": 2, "num_gpus": 1}
    r = c.post("/v1/eplb", json=three_d)
    assert r.status_code == 422 and len(r.json()["detail"]) == 1
    assert "window" in r.json()["error"]
    victim = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(victim), "w"))

    hostile = tmp_path / "expert_distribution_recorder_1.pt"
    with zipfile.ZipFile(hostile, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"logical_count": Evil()}, protocol=2))
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes((FIXTURES / "sglang_stat.pt").read_bytes()[:5000])
    for path in (hostile, truncated):
        r = c.post("/v1/eplb", json={"dump": _dump("sglang", path), "num_gpus": 8})
        assert r.status_code == 422, r.text
        assert path.name in r.json()["error"] and r.json()["detail"][0]["field"] == "body.dump"
    assert not victim.exists()
    r = c.post(
        "/v1/eplb",
        json={"dump": _dump("sglang", FIXTURES / "sglang_stat.pt"), "num_gpus": 8},
    )
    assert r.status_code == 422 and "num_replicas" in r.json()["error"]


def test_cli_from_sglang_writes_the_file_sglang_loads(tmp_path: Path) -> None:
    out = tmp_path / "expert_location.json"
    result = CliRunner().invoke(
        cli_app,
        [
            "eplb",
            "--from",
            "sglang",
            str(FIXTURES / "sglang_stat.pt"),
            "--num-gpus",
            "8",
            "--num-replicas",
            "72",
            "--format",
            "sglang",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert list(data) == ["physical_to_logical_map"]
    assert np.asarray(data["physical_to_logical_map"]).shape == (4, 72)
    bad = CliRunner().invoke(cli_app, ["eplb", "--from", "sglang", str(out), "--num-gpus", "8"])
    assert bad.exit_code == 2 and "expert_location.json" in bad.output
