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
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The fast subsets: exact hand-computed cases; the hypothesis properties and the real-trace
# solves are too slow to rerun for every mutant on 2 shared cores.
EXECUTOR_TESTS = [
    "tests/test_executor_violations.py",
    "tests/test_executor_timeline.py",
    "tests/test_costs_golden.py",
]
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    # name: (paths to mutate, tests)
    "executor": (
        ["hwmodel/executor.py"],
        [
            *EXECUTOR_TESTS,
            "tests/test_quality_golden.py::test_residency_over_capacity_at_cycle_0_is_a_violation",
        ],
    ),
    "costs": (["hwmodel/costs.py"], EXECUTOR_TESTS),
    "placement": (
        ["solvers/placement/"],
        ["tests/solvers/test_placement.py", "tests/test_quality_golden.py"],
    ),
    "eplb": (["solvers/eplb/"], ["tests/solvers/test_eplb.py", "tests/solvers/test_routing.py"]),
    "ordering": (["solvers/ordering/"], ["tests/solvers/test_ordering.py"]),
    "prefetch": (
        ["solvers/prefetch/"],
        ["tests/solvers/test_prefetch_select.py", "tests/solvers/test_cache.py"],
    ),
}
# Tests too slow to rerun per mutant (real-trace CP-SAT proofs); the rest of each file runs.
DESELECT = "not esft and not real_histograms and not real_trace"

# Mutant name -> why it is equivalent (no input can tell it from the original).
EQUIVALENT: dict[str, str] = {}

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


def run_group(name: str, jobs: int, sample: str | None = None) -> dict[str, object]:
    """Mutate one group and run its tests; ``sample``: a glob on mutant names (mutmut's own
    selection, e.g. ``*_mutmut_?0`` for every tenth), None for all."""
    paths, tests = GROUPS[name]
    with tempfile.TemporaryDirectory(prefix=f"moesched-mutants-{name}-") as tmp:
        scratch = Path(tmp)
        _copy_tree(scratch)
        (scratch / "setup.cfg").write_text(_config(paths, tests))
        mutmut = Path(sys.executable).parent / "mutmut"
        env = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(
            [str(mutmut), "run", "--max-children", str(jobs), *([sample] if sample else [])],
            cwd=scratch, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        codes = _results(scratch)
        if sample:
            codes = {k: c for k, c in codes.items() if fnmatch.fnmatch(k, sample)}
        if not codes:
            return {"group": name, "paths": paths, "error": (proc.stdout + proc.stderr)[-3000:]}
        killed = sorted(k for k, c in codes.items() if c in _KILLED)
        survived = sorted(k for k, c in codes.items() if c in _SURVIVED)
        other = sorted(k for k, c in codes.items() if c not in _KILLED | _SURVIVED)
        diffs = {}
        for key in survived:
            diff = subprocess.run(
                [str(mutmut), "show", key], cwd=scratch, env=env,
                capture_output=True, text=True, check=False,
            ).stdout  # fmt: skip
            diffs[key] = diff
        return {
            "group": name,
            "paths": paths,
            "tests": tests,
            "sample": sample or "all mutants",
            "killed": len(killed),
            "survived_all": survived,
            "not_run": other,
            "diffs": diffs,
        }


def summarize(groups: list[dict[str, object]]) -> dict[str, object]:
    killed = sum(int(g.get("killed", 0)) for g in groups)  # type: ignore[call-overload]
    survivors, equivalent = [], []
    for g in groups:
        for key in g.get("survived_all", []):  # type: ignore[attr-defined]
            diff = g["diffs"][key]  # type: ignore[index]
            entry = {"mutant": key, "group": g["group"], "diff": diff}
            if key in EQUIVALENT:
                equivalent.append(entry | {"why_equivalent": EQUIVALENT[key]})
            else:
                survivors.append(entry)
    non_equivalent = killed + len(survivors)
    return {
        "killed": killed,
        "survived": len(survivors),
        "equivalent": len(equivalent),
        "kill_rate": round(killed / non_equivalent, 4) if non_equivalent else None,
        "covered": [g["paths"] for g in groups if "killed" in g],
        "not_covered": sorted(
            p
            for name, (paths, _) in GROUPS.items()
            for p in paths
            if name not in {g["group"] for g in groups if "killed" in g}
        ),
        "groups": [
            {k: v for k, v in g.items() if k not in ("diffs", "survived_all")}
            | {"survived": len(g.get("survived_all", []))}  # type: ignore[arg-type]
            for g in groups
        ],
        "survivors": survivors,
        "equivalent_mutants": equivalent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="*", default=list(GROUPS))
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "mutants.json")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--sample", default=None, help="glob on mutant names, e.g. '*_mutmut_?0' (every tenth)"
    )
    args = parser.parse_args()
    done: list[dict[str, object]] = []
    for name in args.groups:
        print(f"mutants: {name} ...", flush=True)
        done.append(run_group(name, args.jobs, args.sample))
        args.json.write_text(json.dumps(summarize(done), indent=1) + "\n")
        print(json.dumps({k: v for k, v in done[-1].items() if k != "diffs"})[:2000], flush=True)


if __name__ == "__main__":
    main()
