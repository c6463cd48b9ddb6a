"""Imports point down: hwmodel <- solvers <- service/bench; heavy libraries stay in their corner."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(package: str) -> dict[Path, set[str]]:
    out: dict[Path, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[path] = names
    return out


def roots(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_hwmodel_imports_neither_solvers_nor_service() -> None:
    for path, names in imported_modules("hwmodel").items():
        assert not roots(names) & {"solvers", "service", "bench"}, path


def test_solvers_do_not_import_service() -> None:
    for path, names in imported_modules("solvers").items():
        assert not roots(names) & {"service", "bench"}, path


def test_fastapi_only_in_service() -> None:
    for pkg in ("hwmodel", "solvers", "bench"):
        for path, names in imported_modules(pkg).items():
            assert not roots(names) & {"fastapi", "starlette", "uvicorn"}, path


def test_ortools_and_pulp_only_in_backend_modules() -> None:
    for pkg in ("hwmodel", "solvers", "service", "bench"):
        for path, names in imported_modules(pkg).items():
            r = roots(names)
            if "ortools" in r:
                assert path.name.startswith("cpsat"), path
            if "pulp" in r:
                assert path.name.startswith("milp"), path


def test_bench_imports_of_the_service_are_its_examples_only() -> None:
    """bench drives the service over HTTP and takes its public examples, nothing else."""
    for path, names in imported_modules("bench").items():
        service = {n for n in names if roots({n}) == {"service"}}
        assert service <= {"service.examples"}, (path, service)


MAX_FUNCTION_LINES = 120


def long_functions(package: str) -> set[tuple[str, str, int]]:
    """(path, name, lines) of every function or method of ``package`` over the limit."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.add((str(path.relative_to(ROOT)), node.name, lines))
    return found


def test_no_function_in_hwmodel_or_solvers_is_over_120_lines() -> None:
    long = long_functions("hwmodel") | long_functions("solvers")
    assert not long, sorted(long)
