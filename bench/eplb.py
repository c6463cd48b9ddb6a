"""EPLB mode on the real histograms: DeepSeek's EPLB against moesched's exact packer.

Every layer of the DeepSeek-V2-Lite-class ESFT traces (26 layers, intent and law), and the
recorded OLMoE and Mixtral layers (0, 7, 15) of every domain; 8 GPUs with 8 and 32
redundant replicas; one expert group, one node (EPLB's global policy). Balancedness is mean /
max GPU load, the vLLM/SGLang definition.
"""

from __future__ import annotations

import numpy as np

from bench.common import BenchResult
from hwmodel.routing_traces import (
    COUNTS_FILE,
    ESFT_FILES,
    load_esft,
    load_expert_counts,
    traces_dir,
)
from solvers.common import Budget
from solvers.eplb.model import EplbProblem
from solvers.eplb.solve import solve_eplb


def _histograms(quick: bool) -> list[tuple[str, str, np.ndarray]]:
    out = []
    for task, name in ESFT_FILES.items():
        out.append((f"esft-{task}", name, load_esft(traces_dir() / name).histogram()))
    counts = load_expert_counts(traces_dir() / COUNTS_FILE)
    for model in ("olmoe", "mixtral"):
        domains = counts.domains(model)[:1] if quick else counts.domains(model)
        for dom in domains:
            rows = np.stack([counts.histogram(model, dom, layer) for layer in counts.layers()])
            out.append((f"{model}-{dom}", COUNTS_FILE, rows))
    return out


def run(quick: bool = False) -> BenchResult:
    """Per histogram set and redundancy: balancedness of EPLB and of moesched (auto)."""
    result = BenchResult("eplb")
    per_layer_s = 0.2 if quick else 1.0
    for name, source, hist in _histograms(quick):
        num_log = hist.shape[1]
        for redundant in (8, 32):
            problem = EplbProblem(hist, num_log + redundant, 1, 1, 8)
            base = solve_eplb(problem, "greedy")
            ours = solve_eplb(problem, "auto", budget=Budget.work(per_layer_s * hist.shape[0]))
            result.rows.append(
                {
                    "histograms": name,
                    "trace": source,
                    "num_layers": int(hist.shape[0]),
                    "num_experts": int(num_log),
                    "num_gpus": 8,
                    "redundant": redundant,
                    "eplb_balancedness_mean": float(base.balancedness.mean()),
                    "moesched_balancedness_mean": float(ours.balancedness.mean()),
                    "eplb_balancedness_min": float(base.balancedness.min()),
                    "moesched_balancedness_min": float(ours.balancedness.min()),
                    "layers_better": int((ours.balancedness > base.balancedness + 1e-12).sum()),
                    "layers_worse": int((ours.balancedness < base.balancedness - 1e-12).sum()),
                    "moesched_status": ours.status,
                    "moesched_wall_s": ours.wall_time_s,
                }
            )
    rows = result.rows
    result.summary = {
        "eplb_balancedness_mean": float(np.mean([r["eplb_balancedness_mean"] for r in rows])),
        "moesched_balancedness_mean": float(
            np.mean([r["moesched_balancedness_mean"] for r in rows])
        ),
        "layers_better": sum(int(r["layers_better"]) for r in rows),
        "layers_worse": sum(int(r["layers_worse"]) for r in rows),
        "layers_total": sum(int(r["num_layers"]) for r in rows),
    }
    return result
