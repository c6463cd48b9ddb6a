"""Exact small cases that kill surviving mutants of ``solvers/ordering`` (``make mutants``).

Each figure is derived by hand in its docstring (or is the docstring's hand case of
tests/test_quality_golden.py) and pinned exactly.
"""

from __future__ import annotations

from hwmodel.plan import ComputeTask
from hwmodel.presets import hardware_preset, model_preset
from solvers.common import Budget
from solvers.ordering.cpsat import solve_order_cpsat
from solvers.ordering.dep import DepProblem, resource_role, solve_dep
from solvers.ordering.dep_deploy import choose_deployment, problem_for
from solvers.ordering.graph import TaskGraph, list_schedule, makespan_of
from tests.test_quality_golden import DEP_MODEL, dep_hardware


def same_resource_graph(lanes: int, count: int = 3, cycles: int = 10) -> TaskGraph:
    """``count`` independent tasks of ``cycles`` each on one resource ``r`` of ``lanes`` lanes."""
    tasks = [
        ComputeTask(id=f"t{i}", device_id="d", op="attention", layer=0, num_tokens=1)
        for i in range(count)
    ]
    return TaskGraph(
        list(tasks), [cycles] * count, ["r"] * count, [[] for _ in tasks], {"r": lanes},
        [[] for _ in tasks],
    )  # fmt: skip


def test_one_lane_runs_one_task_at_a_time() -> None:
    """Three 10-cycle tasks on one lane: list scheduling starts them at 0, 10, 20 (30); the
    bound is the resource's work, 30, not one task's 10."""
    g = same_resource_graph(lanes=1)
    starts = list_schedule(g)
    assert sorted(starts) == [0, 10, 20] and makespan_of(g, starts) == 30
    assert g.lower_bound() == 30


def test_two_lanes_run_two_tasks_at_once() -> None:
    """Four 10-cycle tasks on two lanes: 20 cycles by list scheduling, by CP-SAT (the
    cumulative constraint, proven) and as the bound (40 of work / 2 lanes)."""
    g = same_resource_graph(lanes=2, count=4)
    assert makespan_of(g, list_schedule(g)) == 20
    assert g.lower_bound() == 20
    out = solve_order_cpsat(g, None, 40, Budget.work(2.0, workers=1))
    assert out.starts is not None and makespan_of(g, out.starts) == 20
    assert out.bound == 20


def test_resource_roles_in_words() -> None:
    p = DepProblem(dep_hardware(1e7), DEP_MODEL, 2, 1, 0)
    assert [resource_role(p, r) for r in ("att", "exp", "a2e_in0", "a2e", "e2a_in3", "e2a")] == [
        "attention GPU", "expert GPU", "A2E NIC (expert ingress)", "A2E NIC (attention egress)",
        "E2A NIC (attention ingress)", "E2A NIC (expert egress)",
    ]  # fmt: skip
    assert resource_role(p, "nvlink0") == "nvlink0"


def test_dep_bound_says_what_sets_it() -> None:
    """tests/test_quality_golden.py's slow-link case (10 MB/s): the bound is 34,600, set by
    the combine link (its 2 x 11,000 cycles after the first micro-batch's 12,600), which is
    the expert GPU's egress port; on the shared-expert case (100 MB/s) it is 14,000, set by
    the serial-layers bound of m = 1 (not a resource: reported as is)."""
    slow = solve_dep(DepProblem(dep_hardware(1e7), DEP_MODEL, 2, 1, 0), "greedy")
    assert (slow.lower_bound_cycles, slow.bound_resource) == (34_600, "E2A NIC (expert egress)")
    fast = solve_dep(DepProblem(dep_hardware(1e8), DEP_MODEL, 2, 1, 0), "greedy")
    assert (fast.lower_bound_cycles, fast.bound_resource) == (14_000, "serial layers (m=1)")


def test_dep_bound_covers_the_baselines_beyond_max_r() -> None:
    """With the search held to one micro-batch, the tuned PPPipe baseline's two micro-batches
    (34,600 cycles) are still a candidate: the bound over m <= 1 alone (44,200) would exceed
    it; the bound covers m up to the baselines' and stays 34,600."""
    sol = solve_dep(DepProblem(dep_hardware(1e7), DEP_MODEL, 2, 1, 0), "greedy", max_r=1)
    assert (sol.makespan_cycles, sol.micro_batches, sol.lower_bound_cycles) == (34_600, 2, 34_600)


def test_problem_for_uses_the_split_it_is_given() -> None:
    """2 attention and 2 expert GPUs of dep-h800's 16: the rest stay unused."""
    model = model_preset("qwen3-30b-a3b")
    template = DepProblem(hardware_preset("dep-h800"), model, 1, 2, 2048)
    p = problem_for("dep-h800", model, 2, 2, 8, template)
    assert (p.attention_gpus, p.expert_gpus) == (("attn0", "attn1"), ("exp0", "exp1"))
    assert (p.batch_tokens, p.num_layers, p.context_tokens) == (8, 2, 2048)


def test_deployment_falls_back_when_no_batch_meets_the_slo() -> None:
    """A 1 ns time-per-token SLO nobody meets: the best split regardless, marked as missing
    it (not None)."""
    model = model_preset("qwen3-30b-a3b")
    template = DepProblem(hardware_preset("dep-h800"), model, 1, 1, 2048)
    d = choose_deployment("dep-h800", model, "pppipe-tuned", template, tpot_slo_s=1e-9,
                          batch_steps=1)  # fmt: skip
    assert d is not None and not d.slo_met and d.step_time_s > 1e-9
    assert d.tried > 1
    met = choose_deployment("dep-h800", model, "pppipe-tuned", template, batch_steps=1)
    assert met is not None and met.slo_met


def test_dep_problem_names_each_option_it_cannot_model() -> None:
    """Per-layer loads with per-node deduplication (modelled for balanced routing only); and
    experts of 3 MB (gated: 3 x 100 x 10,000 one-byte weights) on a 1 MB expert GPU, which
    with its 10% runtime reserve needs 3.1 MB (printed in GB, to one decimal)."""
    model = model_preset("deepseek-v2")
    loads = ((1.0,) * model.num_routed_experts,)
    dedup = DepProblem(hardware_preset("dep-h20"), model, 1024, 1, 0,
                       expert_load_by_layer=loads, dedup_per_node=True)  # fmt: skip
    assert dedup.check() == ["dedup_per_node: modelled for balanced routing only"]
    big = DEP_MODEL.model_copy(update={"expert_ffn_size": 10_000})
    too_big = DepProblem(dep_hardware(1e7), big, 2, 1, 0)
    assert too_big.expert_memory_bytes() == 3e6
    assert too_big.check() == [
        "hardware.groups: 1 experts x 1 layers per expert GPU need 0.0 GB > 0.0 GB"
    ]


def test_chain_bound_is_the_flow_shop_of_unequal_chunks() -> None:
    """tests/solvers/test_dep.py's toy without launches or latencies, 3 experts and 1,200
    sequences (400 rows each), k = 2: chunks of 2 and 1 experts. A2E and E2A move 1,000 B a
    row at 250 GB/s, the GEMM reads 1 MB of weights and 2,000 B a row at 1 TB/s: jobs
    (3.2, 3.6, 3.2) and (1.6, 1.8, 1.6) us. The flow shop takes 11.6 us in either order
    (big first: the E2A port runs 6.8..10.0 then 10.0..11.6); the one-machine bounds within
    the layer say only 10.0 (the big chunk's path), 8.6 (GEMM: 1.6 + 5.4 + 1.6) and 8.2."""
    from solvers.ordering.dep import CHAIN, Shape, _Builder, _one_machine_bounds
    from tests.solvers.test_dep import _toy

    toy = _toy(0.0, 0.0)
    model = toy.model.model_copy(update={"num_routed_experts": 3})
    bounds = _one_machine_bounds(_Builder(DepProblem(toy.hardware, model, 1200, 1, 0)), Shape(1, 2))
    assert bounds[CHAIN] == 11_600
    assert (bounds["e"], bounds["a2e"], bounds["e2a"]) == (8_600, 8_200, 8_200)


def test_deferring_the_shared_expert_lets_the_next_dispatch_leave_sooner() -> None:
    """The golden DEP model with a shared expert of FFN width 1 (1,000 + 600 cycles a token),
    100 MB/s links (dispatch and combine 2,000 for one token), routed expert 600; two
    micro-batches of one token. After (shared right after its attention): attention GPU
    att0 0-1,000, shared0 -2,600, att1 -3,600, shared1 -5,200; A2E0 1,000-3,000, A2E1
    3,600-5,600; experts 3,000-3,600 and 5,600-6,200; E2A 3,600-5,600 and 6,200-8,200:
    8,200. Deferred (shared0 after att1): att1 1,000-2,000, so A2E1 follows A2E0 at
    3,000-5,000, expert 5,000-5,600, E2A1 5,600-7,600; shared1 ends at 5,200: 7,600."""
    from solvers.ordering.dep import Shape, _Builder

    model = DEP_MODEL.model_copy(update={"shared_expert_ffn_size": 1})
    builder = _Builder(DepProblem(dep_hardware(1e8), model, 2, 1, 0))
    assert builder.build(Shape(2, 1, 1, "after")).makespan() == 8_200
    assert builder.build(Shape(2, 1, 1, "deferred")).makespan() == 7_600


def test_attention_port_rows_count_every_routed_copy() -> None:
    """tests/solvers/test_dep.py's toy with top-2 of its 2 experts: each of 1,000 sequences
    sends a row to both, so the attention port carries 2,000 rows for the whole expert side
    and 1,000 for one expert's chunk (its half of the load)."""
    from solvers.ordering.dep import _Builder
    from tests.solvers.test_dep import _toy

    toy = _toy(0.0, 0.0)
    model = toy.model.model_copy(update={"top_k": 2})
    b = _Builder(DepProblem(toy.hardware, model, 1000, 1, 0))
    rows = b.expert_rows(1000)
    assert b.port_rows(1000, (0, 2), rows) == (2000, 2000)
    assert b.port_rows(1000, (0, 1), rows) == (1000, 1000)
