"""Every command of the README's runtime section runs as written and writes the file the
runtime loads, in its names and shapes."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from service.cli import app

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "sglang": {"physical_to_logical_map"},
    "vllm": {"physical_to_logical_map", "logical_to_physical_map", "logical_replica_count"},
    "deepseek": {"phy2log", "log2phy", "logcnt"},
}


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Runtimes: SGLang, vLLM, DeepSeek EPLB", 1)[1].split("\n## ", 1)[0]
    return [
        line.strip()
        for line in section.splitlines()
        if line.strip().startswith(".venv/bin/moesched eplb")
    ]


def test_the_section_has_a_command_per_runtime() -> None:
    joined = " ".join(readme_commands())
    for runtime in ("sglang", "vllm", "deepseek", "routing-log"):
        assert f"--from {runtime}" in joined


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command(command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    args = [a.replace("/tmp/", f"{tmp_path}/") for a in shlex.split(command)[1:]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    fmt = args[args.index("--format") + 1]
    out = json.loads(Path(args[args.index("--out") + 1]).read_text())
    assert set(out) == KEYS[fmt]
    p2l = np.asarray(out["phy2log" if fmt == "deepseek" else "physical_to_logical_map"])
    num_gpus = int(args[args.index("--num-gpus") + 1])
    assert p2l.shape[1] % num_gpus == 0
    num_logical = int(p2l.max()) + 1
    assert all(set(row.tolist()) == set(range(num_logical)) for row in p2l)
