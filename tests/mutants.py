"""Mutation testing (``make mutants``): mutmut over the executor, the cost model and the solvers,
each module group in its own scratch copy of the repository, with a fast test subset.

    .venv/bin/python -m tests.mutants [--groups executor costs ...] [--json docs/mutants.json]

Per group it writes the scratch copy's ``setup.cfg`` ``[mutmut]`` section (the module to mutate
and the tests that may kill its mutants), runs ``mutmut run`` there, and reads every mutant's
exit code from mutmut's ``mutants/**/*.meta`` files. Surviving mutants that are equivalent
(no input can tell them apart) are listed in ``EQUIVALENT`` with the reason; the others are
survivors to kill with a new test. The JSON keeps the counts per group and says which groups
ran. Slow (minutes to hours of CPU per group): not run by CI.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from hwmodel.routing_traces import traces_dir

ROOT = Path(__file__).resolve().parent.parent

# The fast subsets: exact hand-computed cases; the hypothesis properties and the real-trace
# solves are too slow to rerun for every mutant on 2 shared cores.
EXECUTOR_TESTS = [
    "tests/test_executor_violations.py",
    "tests/test_executor_timeline.py",
    "tests/test_costs_golden.py",
]
GOLDEN = ["tests/test_quality_golden.py", "tests/test_quality_pinned.py"]
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    # name: (paths to mutate, tests); mutmut runs, for each mutant, only the tests among these
    # that called the mutated function in its clean run.
    "executor": (
        ["hwmodel/executor.py"],
        [
            *EXECUTOR_TESTS,
            "tests/test_executor_records.py",
            "tests/test_mutant_kills_executor.py",
            "tests/test_quality_golden.py::test_residency_over_capacity_at_cycle_0_is_a_violation",
        ],
    ),
    "costs": (["hwmodel/costs.py"], [*EXECUTOR_TESTS, "tests/test_mutant_kills_costs.py"]),
    "placement": (
        ["solvers/placement/"],
        [
            *GOLDEN,
            "tests/solvers/test_placement.py",
            "tests/solvers/test_greedy_golden.py",
            "tests/test_mutant_kills_placement.py",
            "tests/test_honest_bounds.py",
        ],
    ),
    "eplb": (
        ["solvers/eplb/"],
        [
            *GOLDEN,
            "tests/solvers/test_eplb.py",
            "tests/solvers/test_routing.py",
            "tests/solvers/test_eplb_runtime.py",
            "tests/test_mutant_kills_eplb.py",
            "tests/test_honest_bounds.py",
        ],
    ),
    "ordering": (
        ["solvers/ordering/"],
        [
            *GOLDEN,
            "tests/solvers/test_ordering.py",
            "tests/solvers/test_dep.py",
            "tests/solvers/test_kills_ordering.py",
            "tests/test_honest_bounds.py",
        ],
    ),
    "prefetch": (
        ["solvers/prefetch/"],
        [
            *GOLDEN,
            "tests/solvers/test_prefetch_select.py",
            "tests/solvers/test_cache.py",
            "tests/solvers/test_predict.py",
            "tests/solvers/test_kills_prefetch.py",
            "tests/test_honest_bounds.py",
        ],
    ),
}
# Tests too slow to rerun per mutant (real-trace CP-SAT proofs); the rest of each file runs.
DESELECT = "not esft and not real_histograms and not real_trace"

# Mutant name -> why it is equivalent (no input can tell it from the original).
EQUIVALENT: dict[str, str] = {
    "hwmodel.costs.x_tile_pipeline_s__mutmut_12": (
        "int(a // b) -> int(a / b) for positive a, b: the float quotient rounds up to a whole "
        "number only when a is within half an ulp of a multiple of b, and then a is that multiple"
        " (a representable k*b); no input differs"
    ),
    "hwmodel.costs.x_tile_pipeline_s__mutmut_28": (
        "last_bytes <= 1e-9 -> < 1e-9: differs only when the bytes past the last full tile are "
        "exactly 1e-9; weight bytes are whole multiples of bytes_per_weight (>= 1/8 byte). (At "
        "weight_bytes in (0, 1e-9] the original enters the full-tile branch with zero full tiles "
        "and returns a wrong time: noted, not reachable)"
    ),
    "solvers.eplb.batch_placement.x__time_folds__mutmut_35": (
        "len(idx) > per_fold -> >= per_fold: at len(idx) == per_fold the subsample "
        "np.linspace(0, n - 1, n).round() is exactly 0, 1, ..., n - 1 (step 1.0, exact), the "
        "same indices as not subsampling"
    ),
    "solvers.placement.milp.x__link_queues__mutmut_24": (
        "finish_d lowBound 0 -> None: the constraint finish_d >= end(to_d) + compute_d, both "
        "sides nonnegative (end variables have lowBound 0, compute is cycles times binaries), "
        "already implies finish_d >= 0: the same feasible set and optimum"
    ),
    "solvers.eplb.deepseek.x_log2phy_from__mutmut_7": (
        "np.full(shape, -1, dtype=np.int64) -> dtype=None: numpy infers the dtype from the "
        "Python int fill value -1, int64 on the 64-bit Linux this runs on; the same array"
    ),
    "solvers.eplb.deepseek.x_rebalance_hierarchical__mutmut_51": (
        "reshape(-1, n) -> reshape(-2, n): numpy takes any negative size as the one inferred "
        "dimension (checked on the installed numpy), the same shape"
    ),
    "solvers.placement.greedy.xǁ_Stateǁ__init____mutmut_22": (
        "the initial cached loads value (.., 0, 0) -> (.., 0, 1): it is returned only when the "
        "loaded tuple equals the cache key, which starts as None (never equal to a tuple) and "
        "is set together with the value; the initial value is never read"
    ),
    "solvers.placement.greedy.xǁ_Staticǁfixed_adds__mutmut_7": (
        "blocks.memo.get(key) -> None: the shared memo is a cache; without it the same options "
        "are recomputed by adds_of from the same instance tables, home and token count (the "
        "key), the same list"
    ),
    "solvers.placement.milp.x__links_in_order__mutmut_18": (
        "constraint name f'seq_{label}' -> None: the name is a row label only (nothing looks a "
        "constraint up by name); pulp names the row itself, same row, same model"
    ),
    "solvers.placement.problem.xǁPlacementInstanceǁlower_bound__mutmut_70": (
        "int(work // n) -> int(work / n): work is a whole number of cycles (a float sum of "
        "integer minima) far below 2**52 and n a small count, so the float quotient cannot "
        "round up across an integer"
    ),
    "solvers.ordering.dep.x__chain_bound__mutmut_28": (
        "max(..., default=0) -> default=None: the default is used only for a graph without "
        "layer-0 tasks, and every built DEP graph has layer 0's attention"
    ),
    "solvers.ordering.dep.x__one_machine_bounds__mutmut_2": (
        "periodic -> None (always build the whole run): the two-layer shortcut is a speed-up "
        "of the same figures (first-layer heads, last-layer tails, identical layers); checked "
        "equal on 24 (problem, shape) pairs of 3-4 layers (Qwen3-30B on dep-h800 and the "
        "golden DEP model at 10 and 100 MB/s, m 1-3, k 1-2, both templates)"
    ),
    "solvers.ordering.dep.x__serial_layers_bound__mutmut_8": (
        "Shape(1, 1, 1) -> Shape(1, 1): Shape.p defaults to 1, the same shape"
    ),
}

# mutmut's exit codes (mutmut.stats.status_by_exit_code): a failing test (1, 3), a timeout
# (24, 36, 152, 255, -24) or a crash (-9, -11) kills a mutant; 0 is a survivor, and so is a
# mutant no test reaches (5, 33). None: not run.
_KILLED = {1, 3, 24, 36, 152, 255, -24, -9, -11}
_SURVIVED = {0, 5, 33}


def _copy_tree(dst: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


def _config(paths: list[str], tests: list[str]) -> str:
    """setup.cfg's [mutmut] section: copy the packages, mutate only ``paths``, run ``tests``."""
    globs = [p + "*" if p.endswith("/") else p for p in paths]
    lines = ["[mutmut]", "source_paths="]
    lines += [f"    {d}" for d in ("hwmodel", "solvers", "service", "bench")]
    lines += ["only_mutate="] + [f"    {g}" for g in globs]
    lines += ["also_copy="] + [f"    {d}" for d in ("openapi", "docs")]
    lines += ["pytest_add_cli_args_test_selection="] + [f"    {t}" for t in tests]
    lines += ["pytest_add_cli_args="]
    lines += [f"    {a}" for a in ("-p", "no:cacheprovider", "-k", DESELECT)]
    lines += ["timeout_multiplier=8.0"]
    return "\n".join(lines) + "\n"


def _results(scratch: Path) -> dict[str, int | None]:
    """Mutant name -> exit code (None: not run) from mutmut's meta files."""
    out: dict[str, int | None] = {}
    for meta in (scratch / "mutants").rglob("*.meta"):
        data = json.loads(meta.read_text())
        out.update(data.get("exit_code_by_key", {}))
    return out


def _commit() -> str:
    """The commit the scratch copies are taken from, with ``+dirty`` when the tree differs."""
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return head + ("+dirty" if dirty else "")


def _group_record(
    name: str,
    scratch: Path,
    sample: str | None,
    mutmut: Path,
    env: dict[str, str],
    final: bool,
    only: set[str] | None = None,
) -> dict[str, object]:
    """The group's counts from the meta files mutmut has written so far (diffs when final);
    ``sample`` (a glob) or ``only`` (names) restrict them to the mutants that were asked for."""
    paths, tests = GROUPS[name]
    codes = _results(scratch)
    if sample:
        codes = {k: c for k, c in codes.items() if fnmatch.fnmatch(k, sample)}
    if only is not None:
        codes = {k: codes.get(k) for k in only}
    killed = sorted(k for k, c in codes.items() if c in _KILLED)
    survived = sorted(k for k, c in codes.items() if c in _SURVIVED)
    no_tests = sorted(k for k, c in codes.items() if c in (5, 33))
    not_run = sorted(k for k, c in codes.items() if c not in _KILLED | _SURVIVED)
    diffs: dict[str, str] = {}
    if final:
        # A recheck compares every named mutant's diff with the recorded one (same name, same
        # mutant only while its function is unchanged).
        for key in survived if only is None else sorted(only):
            diffs[key] = subprocess.run(
                [str(mutmut), "show", key], cwd=scratch, env=env,
                capture_output=True, text=True, check=False,
            ).stdout  # fmt: skip
    return {
        "group": name,
        "paths": paths,
        "tests": tests,
        "sample": sample or "all mutants",
        "mutants": len(codes),
        "killed": len(killed),
        "survived_all": survived,
        "no_tests": no_tests,
        "not_run": len(not_run),
        "diffs": diffs,
        "status": "done" if final else "running",
    }


def in_sample(name: str, fraction: float) -> bool:
    """Whether the mutant ``name``'s SHA-1 falls in the first ``fraction`` of the hash range."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) < int(fraction * 16**8)


def sampled_names(scratch: Path, paths: list[str], fraction: float) -> list[str]:
    """A deterministic sample of about ``fraction`` of the group's mutants: those whose name's
    SHA-1 falls in the first ``fraction`` of the hash range (uniform over functions and mutation
    kinds, unlike a glob on the mutant number, which favours long functions)."""
    from mutmut.configuration import reset_config
    from mutmut.mutation.file_mutation import mutate_file_contents

    files = (
        [f for p in paths for f in sorted((scratch / p).rglob("*.py"))]
        if any(p.endswith("/") for p in paths)
        else [scratch / p for p in paths]
    )
    out = []
    # mutmut reads its configuration (setup.cfg) from the working directory: the scratch copy's.
    reset_config()
    with contextlib.chdir(scratch):
        for f in files:
            module = f.relative_to(scratch).with_suffix("").as_posix().replace("/", ".")
            mutated = mutate_file_contents(str(f.relative_to(scratch)), f.read_text())
            for short in mutated.mutant_names:
                full = f"{module.removesuffix('.__init__')}.{short}"
                if in_sample(full, fraction):
                    out.append(full)
    reset_config()
    return sorted(out)


def run_group(
    name: str,
    jobs: int,
    sample: str | None = None,
    names: list[str] | None = None,
    on_progress: Callable[[dict[str, object]], None] | None = None,
    fraction: float | None = None,
) -> dict[str, object]:
    """Mutate one group and run its tests; ``sample``: a glob on mutant names (mutmut's own
    selection, e.g. ``*_mutmut_?0`` for every tenth), None for all; ``names``: rerun exactly
    these mutants (a recheck of survivors after new tests). ``on_progress`` gets the partial
    record about once a minute while mutmut runs."""
    paths, tests = GROUPS[name]
    with tempfile.TemporaryDirectory(prefix=f"moesched-mutants-{name}-") as tmp:
        scratch = Path(tmp)
        _copy_tree(scratch)
        (scratch / "setup.cfg").write_text(_config(paths, tests))
        mutmut = Path(sys.executable).parent / "mutmut"
        # The real traces sit beside the repository (../shared/traces), not beside the copy.
        env = os.environ | {
            "PYTHONDONTWRITEBYTECODE": "1",
            "MOESCHED_TRACES_DIR": str(traces_dir()),
        }
        total = None
        if fraction is not None and not names:
            every = sampled_names(scratch, paths, 1.0)
            names, total = [n for n in every if in_sample(n, fraction)], len(every)
            sample = None
        only = set(names) if names else None
        selection = names or ([sample] if sample else [])
        log = (scratch / "mutmut.log").open("w")
        proc = subprocess.Popen(
            [str(mutmut), "run", "--max-children", str(jobs), *selection],
            cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        while True:
            try:
                proc.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:
                if on_progress is not None and (scratch / "mutants").exists():
                    on_progress(
                        _group_record(name, scratch, sample, mutmut, env, False, only)
                        | _sample_note(fraction, only, total)
                    )
        log.close()
        record = _group_record(name, scratch, sample, mutmut, env, True, only)
        record |= _sample_note(fraction, only, total)
        if not record["mutants"]:
            tail = (scratch / "mutmut.log").read_text()[-3000:]
            return {"group": name, "paths": paths, "error": tail, "status": "error"}
        return record


def _sample_note(fraction: float | None, only: set[str] | None, total: int | None) -> dict:
    if fraction is not None and only is not None:
        return {"sample": f"{len(only)} of {total} mutants: SHA-1(name) in the first "
                f"{fraction:g} of the range"}  # fmt: skip
    if only is not None:
        return {"sample": f"recheck of {len(only)} named mutants"}
    return {}


def _same_mutant(recorded: str, now: str) -> bool:
    """Whether two ``mutmut show`` outputs are the same mutation (the status line aside)."""

    def body(diff: str) -> list[str]:
        return [ln for ln in diff.splitlines() if not ln.startswith("# ")]

    return bool(recorded) and body(recorded) == body(now)


def _public(g: dict[str, object]) -> dict[str, object]:
    """A group's record as docs/mutants.json keeps it."""
    survived = list(g.get("survived_all", []))  # type: ignore[call-overload]
    diffs: dict[str, str] = g.get("diffs", {})  # type: ignore[assignment]
    out = {k: v for k, v in g.items() if k not in ("diffs", "survived_all")}
    out["survived"] = len(survived)
    out["survivors"] = [
        {"mutant": k, "diff": diffs.get(k, "")}
        | ({"why_equivalent": EQUIVALENT[k]} if k in EQUIVALENT else {})
        for k in survived
    ]
    return out


def summarize(groups: dict[str, dict[str, object]]) -> dict[str, object]:
    """Totals over the groups' public records (each as ``_public`` writes it)."""
    killed = survived = equivalent = 0
    survivors, equivalents, by_group = [], [], {}
    for name, g in groups.items():
        entries: list[dict[str, str]] = g.get("survivors", [])  # type: ignore[assignment]
        equiv = [e for e in entries if "why_equivalent" in e]
        live = [e for e in entries if "why_equivalent" not in e]
        k = int(g.get("killed", 0))  # type: ignore[call-overload]
        killed, survived, equivalent = killed + k, survived + len(live), equivalent + len(equiv)
        by_group[name] = round(k / (k + len(live)), 4) if k + len(live) else None
        survivors += [e | {"group": name} for e in live]
        equivalents += [e | {"group": name} for e in equiv]
    non_equivalent = killed + survived
    return {
        "killed": killed,
        "survived": survived,
        "equivalent": equivalent,
        "kill_rate": round(killed / non_equivalent, 4) if non_equivalent else None,
        "kill_rate_by_group": by_group,
        "not_covered": sorted(
            p for name, (paths, _) in GROUPS.items() for p in paths if name not in groups
        ),
        "survivors": survivors,
        "equivalent_mutants": equivalents,
    }


def _write(path: Path, groups: dict[str, dict[str, object]]) -> None:
    doc = {
        "tool": "mutmut 3.8.1 (pytest) via tests/mutants.py (make mutants); kill rate = killed / "
        "(killed + survived), equivalent mutants (EQUIVALENT, with the reason) left out",
        "groups": groups,
    } | summarize(groups)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="*", default=list(GROUPS))
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "mutants.json")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--sample", default=None, help="glob on mutant names, e.g. '*_mutmut_?0' (every tenth)"
    )
    parser.add_argument(
        "--fraction", type=float, default=None,
        help="run a deterministic sample of this fraction of each group's mutants",
    )  # fmt: skip
    parser.add_argument(
        "--recheck", action="store_true",
        help="rerun each group's recorded survivors only (after new tests) and update them",
    )  # fmt: skip
    args = parser.parse_args()
    old = json.loads(args.json.read_text()) if args.json.exists() else {}
    groups: dict[str, dict[str, object]] = dict(old.get("groups", {}))
    commit = _commit()
    for name in args.groups:
        print(f"mutants: {name} ...", flush=True)
        if args.recheck:
            prev = groups[name]
            names = [e["mutant"] for e in prev["survivors"]]  # type: ignore[attr-defined]
            if not names:
                continue
            got = run_group(name, args.jobs, names=names)
            still = set(got.get("survived_all", []))  # type: ignore[call-overload]
            diffs = {e["mutant"]: e["diff"] for e in prev["survivors"]}  # type: ignore[attr-defined]
            now: dict[str, str] = got.get("diffs", {})  # type: ignore[assignment]
            # A name means the same mutant only while its function is unchanged (mutmut numbers
            # mutants per function): a survivor whose diff moved stays a survivor, to rerun.
            moved = sorted(n for n in names if not _same_mutant(diffs[n], now.get(n, "")))
            still |= set(moved)
            rechecked = prev | {
                "tests": GROUPS[name][1],
                "killed": int(prev["killed"]) + len(names) - len(still),  # type: ignore[call-overload]
                "survived_all": [n for n in names if n in still],
                "no_tests": [n for n in prev.get("no_tests", []) if n in still],  # type: ignore[attr-defined]
                "diffs": diffs,
                "rechecked_at": commit,
                "moved_since_run": moved,
            }
            rechecked = {k: v for k, v in rechecked.items() if k != "survivors"}
            groups[name] = _public(rechecked)
        else:

            def progress(partial: dict[str, object], name: str = name) -> None:
                groups[name] = _public(partial | {"commit": commit})
                _write(args.json, groups)

            groups[name] = _public(
                run_group(
                    name, args.jobs, args.sample, on_progress=progress, fraction=args.fraction
                )
                | {"commit": commit}
            )
        _write(args.json, groups)
        print(json.dumps({k: v for k, v in groups[name].items() if k != "survivors"})[:2000],
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
