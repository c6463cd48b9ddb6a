"""Replay planted bugs: plant each one alone in a scratch copy of the repository, run the tests
there, record whether a test failed (caught) or the suite stayed green (not caught).

    .venv/bin/python -m tests.planted_bugs [--json docs/planted_bugs.json] [--only ID ...]

Each plant replaces one exact piece of source text; when the text is no longer there (the code
moved on) the plant is reported ``stale`` and must be re-aimed, not dropped silently. The tests
run in stages, each with ``pytest -x`` (stop at the first failure), and the replay stops at the
first stage that fails: 1. the test files that cover the plant's kind (``TARGETED``); 2. the
rest of ``FAST_SUITE``; 3. the whole suite as ``make test`` runs it (beside Ray and PostgreSQL,
``tests/with_services.sh``). Every stage is a subset of ``make test``, so a plant caught at any
stage is caught there, and one that survives stage 3 is not caught by ``make test``. Not run by
CI (one to a few minutes of CPU per plant).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from hwmodel.routing_traces import traces_dir

ROOT = Path(__file__).resolve().parent.parent
FAST_SUITE = [
    "tests/test_quality_pinned.py",
    "tests/test_costs_golden.py",
    "tests/test_executor_records.py",
    "tests/test_quality_golden.py",
    "tests/test_honest_bounds.py",
    "tests/test_executor_violations.py",
    "tests/solvers/test_placement.py",
    "tests/solvers/test_eplb.py",
    "tests/solvers/test_prefetch_select.py",
    "tests/solvers/test_decode_loop.py",
]
# The slowest real-trace tests stay out of stages 1 and 2 (stage 3 runs them).
DESELECT = "not real_trace and not real_histograms"
# Plant kind -> the tests that pin it (stage 1): the fast pinned cases, the golden tests of
# that kind (node ids, so the slow real-trace proofs run only where they are the pin), files.
PINNED = "tests/test_quality_pinned.py"
GOLDEN = "tests/test_quality_golden.py::test_"
TARGETED: dict[str, list[str]] = {
    kind: [PINNED, *files]
    for kind, files in {
        "greedy balance": [GOLDEN + "greedy_placement_on_real_esft_layers",
                           "tests/solvers/test_placement.py"],
        "DEP search": [GOLDEN + "dep_overlapping_the_shared_expert_with_the_dispatch_wins",
                       GOLDEN + "dep_pipelining_two_micro_batches_wins_on_a_slow_link",
                       "tests/solvers/test_dep.py"],
        "DEP overlap": [GOLDEN + "dep_overlapping_the_shared_expert_with_the_dispatch_wins",
                        GOLDEN + "dep_pipelining_two_micro_batches_wins_on_a_slow_link",
                        "tests/solvers/test_dep.py"],
        "EPLB tie-break": [GOLDEN + "eplb_global_ties_follow_deepseek",
                           GOLDEN + "eplb_hierarchical_ties_follow_deepseek",
                           GOLDEN + "eplb_packing_ties_and_balancedness",
                           "tests/solvers/test_eplb.py"],
        "bound validity": ["tests/test_honest_bounds.py"],
        "prefetch": [GOLDEN + "prefetch_set_is_the_knapsack_answer",
                     "tests/solvers/test_prefetch_select.py", "tests/solvers/test_decode_loop.py"],
        "decay": [GOLDEN + "session_drift_after_decayed_observations",
                  GOLDEN + "predictor_counts_decay_per_token", "tests/solvers/test_predict.py"],
        "cycle-0 capacity": [GOLDEN + "residency_over_capacity_at_cycle_0_is_a_violation",
                             "tests/test_executor_violations.py"],
        "cost model": ["tests/test_costs_golden.py"],
    }.items()
}  # fmt: skip


@dataclass(frozen=True)
class Plant:
    """One bug: in ``path`` replace ``old`` (which must occur exactly once) by ``new``."""

    id: str
    kind: str
    path: str
    old: str
    new: str
    what: str


PLANTS = [
    Plant(
        "greedy-ignores-remote-queue",
        "greedy balance",
        "solvers/placement/greedy.py",
        "end = down_end + compute[i] + extra",
        "end = down_end + extra",
        "greedy's score forgets the shard work already queued on each remote device",
    ),
    Plant(
        "greedy-most-loaded-holder",
        "greedy balance",
        "solvers/placement/greedy.py",
        "if best is None or load < best_load:",
        "if best is None or load > best_load:",
        "a split block goes to the busiest holder instead of the least busy one",
    ),
    Plant(
        "greedy-lightest-first",
        "greedy balance",
        "solvers/placement/greedy.py",
        "order = sorted(inst.experts, key=lambda e: (-weight(e), e))",
        "order = sorted(inst.experts, key=lambda e: (weight(e), e))",
        "experts placed lightest first instead of heaviest first",
    ),
    Plant(
        "dep-worst-candidate",
        "DEP search",
        "solvers/ordering/dep.py",
        "return min(cands, key=lambda c: (c.makespan_cycles, c.shape.m, c.shape.k))",
        "return max(cands, key=lambda c: (c.makespan_cycles, c.shape.m, c.shape.k))",
        "the DEP search returns its worst candidate (micro-batch count, chunks, order)",
    ),
    Plant(
        "dep-search-stays-at-seeds",
        "DEP search",
        "solvers/ordering/dep.py",
        "best = min(_neighbours(here, max_m, max_k, max_p), key=lambda s: (score(s), s.m, s.k))",
        "best = max(_neighbours(here, max_m, max_k, max_p), key=lambda s: (score(s), s.m, s.k))",
        "the local search over (m, k, p) never leaves its seeds",
    ),
    Plant(
        "dep-shared-before-dispatch",
        "DEP overlap",
        "solvers/ordering/dep.py",
        "waits = shared_ids if shape.shared_before_a2e and shared_ids else [a]",
        "waits = shared_ids if shared_ids else [a]",
        "the dispatch always waits for the shared experts: their overlap is lost",
    ),
    Plant(
        "eplb-replica-last-max",
        "EPLB tie-break",
        "solvers/eplb/deepseek.py",
        "hot = np.argmax(weight / logcnt, axis=-1)",
        "hot = num_log - 1 - np.argmax((weight / logcnt)[:, ::-1], axis=-1)",
        "the next replica goes to the last of the tied heaviest experts, not the first",
    ),
    Plant(
        "eplb-pack-last-lightest",
        "EPLB tie-break",
        "solvers/eplb/deepseek.py",
        "key=load.__getitem__)",
        "key=lambda i: (load[i], -i))",
        "an item goes to the last of the tied lightest packs, not the first",
    ),
    Plant(
        "eplb-unstable-sort",
        "EPLB tie-break",
        "solvers/eplb/deepseek.py",
        'for item in np.argsort(-weight[r], kind="stable"):',
        'for item in n - 1 - np.argsort(-weight[r][::-1], kind="stable"):',
        "equal weights are packed in reverse index order",
    ),
    Plant(
        "placement-doubled-bound",
        "bound validity",
        "solvers/placement/problem.py",
        "return int(work // max(len(resources), 1)) + self.reduce[1]",
        "return 2 * (int(work // max(len(resources), 1)) + self.reduce[1])",
        "placement's analytic lower bound doubled (invalid)",
    ),
    Plant(
        "eplb-doubled-bound",
        "bound validity",
        "solvers/eplb/model.py",
        "return np.maximum(weight.sum(-1) / num_gpus, weight.max(-1) / min(kmax, num_gpus))",
        "return 2 * np.maximum(weight.sum(-1) / num_gpus, weight.max(-1) / min(kmax, num_gpus))",
        "EPLB's trivial lower bound doubled (invalid)",
    ),
    Plant(
        "prefetch-greedy-stages-nothing",
        "prefetch",
        "solvers/prefetch/select.py",
        "    order = order[probability[order] > 0]",
        "    order = order[probability[order] > 2]",
        "greedy prefetch selection stages nothing",
    ),
    Plant(
        "decode-loop-stages-nothing",
        "prefetch",
        "solvers/decode_loop.py",
        "for r, j in sorted(picked):",
        "for r, j in sorted(picked)[:0]:",
        "the decode loop chooses a prefetch set but stages none of it",
    ),
    Plant(
        "prefetch-lazy-ties-by-least-probable",
        "prefetch",
        "solvers/prefetch/select.py",
        "heap.append((-p * saved[order[0]] / scale, -p, starts[r] + order[0], r, 0))",
        "heap.append((-p * saved[order[0]] / scale, p, starts[r] + order[0], r, 0))",
        "the lazily ranked prefetch knapsack breaks ties by the least probable run first",
    ),
    Plant(
        "session-no-decay",
        "decay",
        "service/store.py",
        "    out = counts * decay\n",
        "    out = counts * 1.0\n",
        "a session's running counts never decay",
    ),
    Plant(
        "predictor-no-decay",
        "decay",
        "solvers/prefetch/predict.py",
        "self.counts *= self.decay",
        "self.counts *= 1.0",
        "the prefetch predictor's counts never decay",
    ),
    Plant(
        "cycle0-overflow-unchecked",
        "cycle-0 capacity",
        "hwmodel/executor.py",
        "    sim.check_initial_capacity()\n",
        "",
        "a residency above a memory's capacity at cycle 0 is not flagged",
    ),
    Plant(
        "cost-no-link-latency",
        "cost model",
        "hwmodel/costs.py",
        "return link.latency_s + num_bytes / link.bandwidth_bytes_per_s",
        "return num_bytes / link.bandwidth_bytes_per_s",
        "transfers lose their latency",
    ),
    Plant(
        "cost-tiles-no-overlap",
        "cost model",
        "hwmodel/costs.py",
        "total += max(load(last_bytes), compute(tile_bytes)) + compute(last_bytes)",
        "total += load(last_bytes) + compute(tile_bytes) + compute(last_bytes)",
        "the NDP tile pipeline stops overlapping the last tile's load with compute",
    ),
]

# No bug: the stages must pass on the unplanted copy, or a "caught" means nothing (a copy that
# cannot find the real traces fails every trace test, planted or not).
CONTROL = Plant("control", "none", "hwmodel/costs.py", "", "", "nothing planted")


def _copy_tree(dst: Path) -> None:
    """The repository's tracked and untracked (not ignored) files, without the venv."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in files:
        src = ROOT / rel
        if not src.is_file():
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)


def _first_failure(stdout: str) -> str | None:
    for prefix in ("FAILED ", "ERROR "):
        for line in stdout.splitlines():
            if line.startswith(prefix):
                return line.split(" ")[1]
    return None


def stages(plant: Plant, suite: list[str] | None) -> list[tuple[str, list[str]]]:
    """(stage name, command) in the order they run; ``suite`` replaces them all by one run."""
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    if suite is not None:
        return [("suite", [*pytest, "-k", DESELECT, *suite])]
    if plant is CONTROL:  # stages 1 and 2 of every plant, unplanted
        every = sorted({t for ts in TARGETED.values() for t in ts if "::" not in t}
                       | set(FAST_SUITE))  # fmt: skip
        return [("control", [*pytest, "-k", DESELECT, *every])]
    targeted = TARGETED[plant.kind]
    rest = [t for t in FAST_SUITE if t not in targeted]
    return [
        ("targeted", [*pytest, "-k", DESELECT, *targeted]),
        ("fast suite", [*pytest, "-k", DESELECT, *rest]),
        ("make test", ["bash", "tests/with_services.sh", *pytest]),
    ]


def replay(plant: Plant, suite: list[str] | None = None, max_stage: int = 3) -> dict[str, object]:
    """Plant, run the stages in the scratch copy until one fails, and say what happened."""
    with tempfile.TemporaryDirectory(prefix="moesched-plant-") as tmp:
        scratch = Path(tmp)
        _copy_tree(scratch)
        (scratch / ".venv").symlink_to(ROOT / ".venv")  # tests/with_services.sh finds it there
        target = scratch / plant.path
        text = target.read_text()
        if plant is not CONTROL:
            if text.count(plant.old) != 1:
                return asdict(plant) | {"result": "stale", "failed_test": None, "stage": None}
            target.write_text(text.replace(plant.old, plant.new))
        # The real traces sit beside the repository (../shared/traces), not beside the copy.
        env = os.environ | {
            "PYTHONDONTWRITEBYTECODE": "1",
            "MOESCHED_TRACES_DIR": str(traces_dir()),
        }
        # The venv's editable install points at ROOT; from the scratch root, its own modules
        # come first on sys.path (pytest's pythonpath = ["."]). Checked, not assumed:
        module = plant.path.removesuffix(".py").replace("/", ".")
        where = subprocess.run(
            [sys.executable, "-c", f"import {module} as m; print(m.__file__)"],
            cwd=scratch, capture_output=True, text=True, env=env, check=True,
        ).stdout.strip()  # fmt: skip
        assert where.startswith(str(scratch)), f"{module} imported from {where}"
        cpu0 = os.times()
        caught_at: str | None = None
        for stage, cmd in stages(plant, suite)[:max_stage]:
            run = subprocess.run(
                cmd, cwd=scratch, capture_output=True, text=True, env=env, check=False
            )
            # pytest: 1 a test failed, 2 collection stopped on an error (an import the plant
            # broke); 3-5 (internal error, usage, nothing collected) are the replay's own bug.
            if run.returncode not in (0, 1, 2):
                raise RuntimeError(
                    f"{plant.id} {stage}: pytest exit {run.returncode}\n"
                    + run.stdout[-2000:]
                    + run.stderr[-2000:]
                )
            if run.returncode != 0:
                caught_at = stage
                break
        cpu1 = os.times()
        cpu_s = (cpu1.children_user - cpu0.children_user) + (
            cpu1.children_system - cpu0.children_system
        )
        return asdict(plant) | {
            "result": "caught" if caught_at else "not caught",
            "stages_run": [name for name, _ in stages(plant, suite)[:max_stage]],
            "stage": caught_at,
            "failed_test": _first_failure(run.stdout),
            "cpu_s": round(cpu_s, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--suite", default=None, help="pytest arguments to run instead of stages")
    parser.add_argument(
        "--max-stage", type=int, default=3, help="stop after this stage (1: targeted, 2: fast)"
    )
    parser.add_argument("--no-control", action="store_true", help="skip the unplanted run")
    args = parser.parse_args()
    plants = [p for p in PLANTS if args.only is None or p.id in args.only]
    suite = shlex.split(args.suite) if args.suite else None
    control = replay(CONTROL, suite) if not args.no_control else {"result": "not caught"}
    if control["result"] != "not caught":
        raise SystemExit(f"the unplanted copy fails {control['failed_test']}: fix that first")
    rows = []
    for plant in plants:
        row = replay(plant, suite, args.max_stage)
        print(
            f"{plant.id:34s} {row['result']:11s} {row['stage'] or '':10s} "
            f"{row['failed_test'] or ''}",
            flush=True,
        )
        rows.append(row)
        live = [r for r in rows if r["result"] != "stale"]
        caught = sum(r["result"] == "caught" for r in live)
        summary = {
            "planted": len(PLANTS),
            "replayed": len(live),
            "caught": caught,
            "not_caught": len(live) - caught,
            "stale": len(rows) - len(live),
            "caught_fraction": round(caught / len(live), 3) if live else None,
            "stages": "targeted (TARGETED[kind]) -> rest of FAST_SUITE -> make test's pytest; "
            "each -x, stopping at the first that fails",
            "fast_suite": FAST_SUITE,
            "deselect_in_stages_1_2": DESELECT,
        }
        if args.json is not None:  # after every plant: a stopped run keeps what it measured
            args.json.write_text(json.dumps({"summary": summary, "plants": rows}, indent=1) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
