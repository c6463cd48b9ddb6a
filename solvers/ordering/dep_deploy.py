"""DEP deployment choice: for a cluster's GPU budget, the attention:expert split and the batch,
searched the same way for every policy so that no gain is mis-attributed.

For each split whose expert GPUs hold their experts (E divisible by G, weights within memory),
the batch is the largest that fits the attention GPUs' KV cache (``DepProblem.
max_sequences_per_attention_gpu``) and meets the time-per-output-token SLO over the model's
full depth; smaller batches are tried in steps of 1/8 of the KV limit until one meets it. The
deployment with the most decode tokens/s per GPU wins (MegaScale-Infer's planner searches the
same quantities under a TBT SLO and a KV limit; peers.md 3.1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hwmodel.presets import DEP_CLUSTERS, dep_hardware
from hwmodel.spec import ModelSpec
from solvers.ordering.dep import (
    DepProblem,
    Policy,
    Shape,
    _Builder,
    baseline,
    search_shapes,
    step_time_s,
    tokens_per_s_per_gpu,
)

TPOT_SLO_S = 0.150
"""Default time-per-output-token SLO: MegaScale-Infer's TBT <= 150 ms (peers.md 3.1)."""


@dataclass(frozen=True)
class Deployment:
    """A split, a batch and what a policy reaches with them."""

    num_attention_gpus: int
    num_expert_gpus: int
    batch_tokens: int
    shape: Shape
    makespan_cycles: int
    step_time_s: float
    tokens_per_s_per_gpu: float
    tried: int  # (split, batch) points evaluated
    slo_met: bool = True  # False: no batch of any split met the SLO; the best one regardless

    @property
    def split(self) -> str:
        return f"{self.num_attention_gpus}:{self.num_expert_gpus}"


def splits(cluster: str, model: ModelSpec) -> list[tuple[int, int]]:
    """(attention, expert) GPU counts of the budget with E divisible by the expert GPUs."""
    total = DEP_CLUSTERS[cluster].num_gpus
    return [(total - g, g) for g in range(1, total) if model.num_routed_experts % g == 0]


def problem_for(
    cluster: str, model: ModelSpec, a: int, g: int, batch: int, template: DepProblem
) -> DepProblem:
    """``template``'s options on ``cluster`` split a:g with ``batch`` sequences."""
    return replace(template, hardware=dep_hardware(cluster, a, g), model=model, batch_tokens=batch)


def evaluate(problem: DepProblem, policy: Policy) -> tuple[Shape, int]:
    """A policy's best shape and forward-pass makespan (moesched: its local search only; the
    ordering solvers run once, on the chosen deployment)."""
    if policy == "moesched":
        builder = _Builder(problem)
        log = search_shapes(builder)
        best = log.best(1)[0]
        return best, log.cycles[best]
    out = baseline(problem, policy, with_tasks=False)
    return out.shape, out.makespan_cycles


def choose_deployment(
    cluster: str,
    model: ModelSpec,
    policy: Policy,
    template: DepProblem,
    tpot_slo_s: float = TPOT_SLO_S,
    batch_steps: int = 8,
) -> Deployment | None:
    """The split and batch with the most tokens/s per GPU for ``policy`` among those meeting
    the SLO (when none does: the best regardless, ``slo_met`` False; None: nothing fits).

    ``template`` carries the run's options (layers, context, FP8, dedup); its hardware, model
    and batch are replaced.
    """
    best: Deployment | None = None
    fallback: Deployment | None = None  # the best ignoring the SLO, when nothing meets it
    tried = 0
    for a, g in splits(cluster, model):
        probe = problem_for(cluster, model, a, g, a, template)
        if any(not msg.startswith("batch_tokens") for msg in probe.check()):
            continue
        n_max = probe.max_sequences_per_attention_gpu()
        for n in batch_ladder(n_max, batch_steps):
            problem = problem_for(cluster, model, a, g, n * a, template)
            if problem.check():
                continue
            tried += 1
            shape, cycles = evaluate(problem, policy)
            cand = Deployment(
                a, g, n * a, shape, cycles, step_time_s(problem, cycles),
                tokens_per_s_per_gpu(problem, cycles), 0, True,
            )  # fmt: skip
            if cand.step_time_s > tpot_slo_s:
                if fallback is None or cand.tokens_per_s_per_gpu > fallback.tokens_per_s_per_gpu:
                    fallback = replace(cand, slo_met=False)
                continue
            if best is None or cand.tokens_per_s_per_gpu > best.tokens_per_s_per_gpu:
                best = cand
            break  # the largest batch meeting the SLO for this split
    chosen = best if best is not None else fallback
    return None if chosen is None else replace(chosen, tried=tried)


def batch_ladder(n_max: int, steps: int) -> list[int]:
    """Sequences per attention GPU to try, largest first: n_max * s / steps for s = steps..1,
    then halvings down to 1."""
    out = [n_max * s // steps for s in range(steps, 0, -1)]
    n = out[-1] // 2 if out else 0
    while n >= 1:
        out.append(n)
        n //= 2
    return sorted({x for x in out if x >= 1}, reverse=True)
