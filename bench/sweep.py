"""Design-space sweeps: hardware figures x models x real traces x policies, one point a Ray task.

A sweep spec (YAML or JSON) names a point ``kind``, the ``base`` parameters every point shares,
and ``axes``: each axis a parameter name and the values it takes; the points are the cartesian
product of the axes over the base (axes in the spec's order, values in their order). A value
that is a mapping sets several parameters together (``workload: [{model: M, trace: T}, ...]``
pairs each model with its own trace); the axis name is then only a label.

Parameters of a ``decode`` point (the GPU-NDP decode loop of ``bench ndp``, checked by the
executor at every step):

* ``hardware``: a hardware preset name (``gpu-ndp-4dimm``; the DIMM count is the preset's);
* ``model``: a model preset; ``trace``: ``esft-law``, ``esft-intent``, ``flame`` (real routing)
  or ``olmoe-sampled`` / ``mixtral-sampled`` (sampled from real histograms);
* ``policy``: a configuration of ``bench.ndp.CONFIGS`` (``moesched``, ``monde_paper``,
  ``monde_best_h``, ``gpu_only`` and the ablations);
* ``cache_share``: the GPU cache as a share of each layer's experts;
* ``prompt_tokens``, ``decode_steps``: the prefill and the decoded tokens simulated;
* ``hw.<path>``: any figure of the hardware preset, addressed as
  ``devices[SELECTOR].FIELD``, ``memories[SELECTOR].FIELD``, ``links[SELECTOR].FIELD`` or a top
  field (``clock_hz``), where SELECTOR is an id (``gpu``, ``pcie_down``) or ``kind=ndp``
  (every device of that kind). The changed hardware is validated like any request.

Every point is keyed by a hash of its parameters; rows stream to a CSV file as points finish,
so a sweep that is stopped resumes where it stopped, recomputing no finished point. A point that
fails is recorded with its error and does not stop the sweep. Simulated figures never depend on
wall time (``wall_s`` is reported beside them).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hwmodel.presets import hardware_preset
from hwmodel.spec import Hardware

PointKind = Literal["decode"]

DECODE_DEFAULTS: dict[str, Any] = {
    "hardware": "gpu-ndp-4dimm",
    "model": "deepseek-v2-lite",
    "trace": "esft-law",
    "policy": "moesched",
    "cache_share": 0.2,
    "prompt_tokens": 128,
    "decode_steps": 16,
}
DECODE_METRICS = (
    "latency_s",
    "prefill_s",
    "decode_per_token_s",
    "hit_rate",
    "gpu_util",
    "ndp_load_cv",
    "bytes_moved",
    "weight_bytes",
    "cache_lines_per_layer",
    "num_ndp_units",
    "ndp_sram_bytes_total",
    "gpu_cache_bytes",
    "executor_violations",
    "prediction_error_s_max",
)
MAX_POINTS = 100_000
TRACES = ("esft-law", "esft-intent", "flame", "olmoe-sampled", "mixtral-sampled")
MAX_TOKENS_PER_POINT = 8192


class SweepSpec(BaseModel):
    """A sweep: points of one kind, the base parameters and the axes varied over them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, description="Name of the sweep.")
    kind: PointKind = Field(default="decode", description="What one point runs.")
    base: dict[str, Any] = Field(default_factory=dict, description="Parameters of every point.")
    axes: dict[str, list[Any]] = Field(
        min_length=1, description="Parameter name -> the values it takes (cartesian product)."
    )

    @field_validator("axes")
    @classmethod
    def _axes_not_empty(cls, axes: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name, values in axes.items():
            if not values:
                raise ValueError(f"axes.{name}: needs at least one value")
        total = 1
        for values in axes.values():
            total *= len(values)
        if total > MAX_POINTS:
            raise ValueError(f"axes: {total} points exceed the limit of {MAX_POINTS}")
        return axes

    @model_validator(mode="after")
    def _points_are_runnable(self) -> SweepSpec:
        for name in self.parameter_names():
            if name not in DECODE_DEFAULTS and not name.startswith("hw."):
                raise ValueError(
                    f"{name}: not a parameter of a {self.kind} point; known: "
                    f"{sorted(DECODE_DEFAULTS)} and hw.<path>"
                )
        hardware: set[str] = set()
        for point in self.points():
            check_point(point)
            figures = {k: v for k, v in point.items() if k == "hardware" or k.startswith("hw.")}
            hardware.add(json.dumps(figures, sort_keys=True))
        for blob in hardware:  # every changed hardware validates before anything runs
            point_hardware(json.loads(blob))
        return self

    def num_tokens(self) -> int:
        """Prompt plus decoded tokens over all points (the work a sweep asks for)."""
        return sum(int(p["prompt_tokens"]) + int(p["decode_steps"]) for p in self.points())

    def parameter_names(self) -> list[str]:
        """Every parameter of a point, defaults first, in a stable order."""
        names = list(DECODE_DEFAULTS)
        names += [n for n in self.base if n not in names]
        for axis, values in self.axes.items():
            for n in _set_by(axis, values[0]):
                if n not in names:
                    names.append(n)
        return names

    def points(self) -> list[dict[str, Any]]:
        """The points: base and defaults overlaid by one value of every axis."""
        common = {**DECODE_DEFAULTS, **self.base}
        names = list(self.axes)
        out = []
        for values in itertools.product(*(self.axes[n] for n in names)):
            point = dict(common)
            for axis, value in zip(names, values, strict=True):
                point.update(_set_by(axis, value))
            out.append(point)
        return out


def _set_by(axis: str, value: Any) -> dict[str, Any]:
    """The parameters one axis value sets: itself, or a mapping's items."""
    return dict(value) if isinstance(value, dict) else {axis: value}


def check_point(p: dict[str, Any]) -> None:
    """Refuse a point that cannot run, naming the parameter (ValueError)."""
    from bench.ndp import CONFIGS
    from hwmodel.presets import HARDWARE_PRESETS, MODEL_PRESETS

    known: dict[str, list[str]] = {
        "hardware": list(HARDWARE_PRESETS), "model": list(MODEL_PRESETS), "trace": list(TRACES),
        "policy": list(CONFIGS),
    }  # fmt: skip
    for name, allowed in known.items():
        if p[name] not in allowed:
            raise ValueError(f"{name}: '{p[name]}' is not one of {sorted(allowed)}")
    share = p["cache_share"]
    if not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ValueError(f"cache_share: {share!r} is not a share in (0, 1]")
    for name in ("prompt_tokens", "decode_steps"):
        if not isinstance(p[name], int) or not 1 <= p[name] <= MAX_TOKENS_PER_POINT // 2:
            raise ValueError(f"{name}: {p[name]!r} is not a whole number in [1, "
                             f"{MAX_TOKENS_PER_POINT // 2}]")  # fmt: skip


def load_spec(path: Path) -> SweepSpec:
    """Read a sweep spec from YAML (``.yaml``/``.yml``) or JSON (anything else)."""
    text = path.read_text()
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep spec is a mapping with name, kind, base and axes")
    return SweepSpec.model_validate(data)


def point_key(kind: str, params: dict[str, Any]) -> str:
    """A stable key of a point: the first 16 hex digits of SHA-256 of its canonical JSON."""
    blob = json.dumps({"kind": kind, **params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- hardware overrides

_PATH = re.compile(r"^(?:(devices|memories|links)\[([^\]]+)\]\.)?([a-z_][a-z0-9_]*)$")


def override_hardware(hw: Hardware, overrides: dict[str, Any]) -> Hardware:
    """``hw`` with the figures at ``overrides``' paths replaced (paths as in the module doc).

    Raises:
        ValueError: a path that matches nothing, or a value the hardware model refuses; the
            message names the path.
    """
    if not overrides:
        return hw
    data = hw.model_dump()
    for path, value in overrides.items():
        m = _PATH.match(path)
        if m is None:
            raise ValueError(f"hw.{path}: not of the form [devices|memories|links[SEL].]FIELD")
        group, selector, fieldname = m.groups()
        if group is None:
            targets = [data]
        else:
            key, _, want = selector.partition("=")
            if want:
                targets = [item for item in data[group] if str(item.get(key)) == want]
            else:
                targets = [item for item in data[group] if item["id"] == selector]
        if not targets or any(fieldname not in t for t in targets):
            raise ValueError(f"hw.{path}: matches no field of hardware '{hw.name}'")
        for t in targets:
            t[fieldname] = value
    try:
        return Hardware.model_validate(data)
    except ValueError as exc:
        raise ValueError(f"hw overrides {sorted(overrides)}: {exc}") from exc


def point_hardware(params: dict[str, Any]) -> Hardware:
    """The hardware of a point: its preset with the ``hw.*`` overrides applied."""
    overrides = {k.removeprefix("hw."): v for k, v in params.items() if k.startswith("hw.")}
    return override_hardware(hardware_preset(params["hardware"]), overrides)


# ------------------------------------------------------------------------------- point kinds


def decode_point(params: dict[str, Any]) -> dict[str, Any]:
    """One decode-loop point (``bench.ndp.decode_point``) with hardware-cost figures beside."""
    from bench.ndp import decode_point as run_decode
    from hwmodel.presets import model_preset

    hw = point_hardware(params)
    got = run_decode(
        hw,
        params["model"],
        params["trace"],
        params["policy"],
        int(params["decode_steps"]),
        cache_share=float(params["cache_share"]),
        prompt_tokens=int(params["prompt_tokens"]),
    )
    ndps = hw.devices_of_kind("ndp")
    got["num_ndp_units"] = len(ndps)
    got["ndp_sram_bytes_total"] = sum(d.sram_bytes or 0 for d in ndps)
    got["gpu_cache_bytes"] = (
        got["cache_lines_per_layer"]
        * model_preset(params["model"]).num_moe_layers
        * model_preset(params["model"]).expert_bytes()
    )
    return got


EVALUATORS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"decode": decode_point}
METRICS: dict[str, tuple[str, ...]] = {"decode": DECODE_METRICS}


def evaluate(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one point; never raises: a failure becomes a row with ``status: error``."""
    started = time.perf_counter()
    row: dict[str, Any] = {"key": point_key(kind, params), **params}
    try:
        got = EVALUATORS[kind](params)
        row.update({m: got[m] for m in METRICS[kind]})
        row["status"] = "ok" if got["executor_violations"] == 0 else "violations"
        row["error"] = ""
    except Exception as exc:  # a failed point is recorded, the sweep goes on
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        row["traceback"] = traceback.format_exc(limit=4)
    row["wall_s"] = time.perf_counter() - started
    return row


# ------------------------------------------------------------------------------ the results file


@dataclass
class ResultsFile:
    """The CSV rows of a sweep, appended one point at a time (flushed, so a kill loses none)."""

    path: Path
    columns: list[str]
    done: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.path.exists() and self.path.stat().st_size > 0:
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != self.columns:
                    raise ValueError(
                        f"{self.path}: its columns are not this sweep's; write to a new file"
                    )
                # A row cut short by a kill has missing fields: it is recomputed.
                for row in reader:
                    if row.get("status") and None not in row.values():
                        self.done[row["key"]] = row
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("w", newline="") as f:
                csv.DictWriter(f, self.columns).writeheader()

    def append(self, row: dict[str, Any]) -> None:
        cells = {c: _cell(row.get(c, "")) for c in self.columns}
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow(cells)
            f.flush()
        self.done[row["key"]] = cells


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def columns_of(spec: SweepSpec) -> list[str]:
    """The CSV header of a sweep: key and status, the parameters, the metrics, wall time."""
    return ["key", "status", "error", *spec.parameter_names(), *METRICS[spec.kind], "wall_s"]


# ------------------------------------------------------------------------------------ running


@dataclass
class SweepOutcome:
    """What a run did: points in the sweep, taken from the file, computed now, failed."""

    total: int
    reused: int
    computed: int
    failed: int
    wall_s: float
    rows: list[dict[str, str]]


def run_sweep(
    spec: SweepSpec,
    out: Path,
    address: str | None = None,
    num_cpus: int | None = None,
    on_row: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepOutcome:
    """Run every point of ``spec`` not already in ``out``, one Ray task a point.

    Args:
        spec: the sweep.
        out: the CSV file; rows already there (by key) are not recomputed.
        address: a Ray cluster to join (``ray start --head`` prints it); None starts a local
            Ray instance with ``num_cpus`` CPUs (all of the machine's when None).
        on_row: called with (points done, points in all) after every finished point.
        should_stop: polled between points; True cancels what is still queued.
    """
    if address is None or address.split(":")[0] in ("127.0.0.1", "localhost"):
        # A local Ray stays on loopback (read by Ray at import; otherwise it advertises the
        # machine's interface address).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    started = time.perf_counter()
    results = ResultsFile(out, columns_of(spec))
    todo = [p for p in spec.points() if point_key(spec.kind, p) not in results.done]
    total = len(spec.points())
    reused = total - len(todo)
    failed = 0
    if on_row:
        on_row(reused, total)
    if todo:
        owns = not ray.is_initialized()
        if owns:
            ray.init(
                address=address,
                num_cpus=None if address else num_cpus,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
        try:
            failed = _drive(ray, spec, todo, results, reused, total, on_row, should_stop)
        finally:
            if owns:
                ray.shutdown()
    rows = [results.done[point_key(spec.kind, p)] for p in spec.points()
            if point_key(spec.kind, p) in results.done]  # fmt: skip
    return SweepOutcome(total, reused, len(todo), failed, time.perf_counter() - started, rows)


def _drive(
    ray: Any,
    spec: SweepSpec,
    todo: list[dict[str, Any]],
    results: ResultsFile,
    done: int,
    total: int,
    on_row: Callable[[int, int], None] | None,
    should_stop: Callable[[], bool] | None,
) -> int:
    """Submit the points as tasks and append each row as it finishes; the number that failed."""
    task = ray.remote(num_cpus=1, max_retries=1)(evaluate)
    pending = [task.remote(spec.kind, p) for p in todo]
    failed = 0
    while pending:
        if should_stop and should_stop():
            for ref in pending:
                ray.cancel(ref)
            break
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for ref in ready:
            row = ray.get(ref)
            failed += row["status"] == "error"
            results.append(row)
            done += 1
            if on_row:
                on_row(done, total)
    return failed


def iter_numeric(rows: list[dict[str, str]], column: str) -> Iterator[float]:
    """The values of a numeric column over the rows that ran (status ok)."""
    for row in rows:
        if row["status"] == "ok" and row.get(column, "") != "":
            yield float(row[column])


# ------------------------------------------------------------------------------------ charts


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both coordinates (lower is better), sorted by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(set(points)):
        if not front or y < front[-1][1]:
            front.append((x, y))
    return front


def sensitivity(rows: list[dict[str, str]], axes: dict[str, list[Any]], metric: str) -> dict:
    """Per axis, the mean of ``metric`` at each of its values over the other axes' points,
    divided by the mean over all points: ``{axis: {value: ratio}}`` (1.0: no effect)."""
    ok = [r for r in rows if r["status"] == "ok"]
    overall = sum(float(r[metric]) for r in ok) / max(1, len(ok))
    out: dict[str, dict[str, float]] = {}
    for axis, values in axes.items():
        if len(values) < 2:
            continue
        out[axis] = {}
        for v in values:
            want = {k: _cell(x) for k, x in _set_by(axis, v).items()}
            sel = [float(r[metric]) for r in ok if all(r[k] == x for k, x in want.items())]
            if sel and overall > 0:
                out[axis]["/".join(want.values())] = sum(sel) / len(sel) / overall
    return out


COST_AXES = {
    "gpu_cache_bytes": "GPU expert cache (GB)",
    "ndp_sram_bytes_total": "NDP SRAM, all units (MiB)",
    "num_ndp_units": "NDP units (DIMMs)",
}
_COST_SCALE = {"gpu_cache_bytes": 1e9, "ndp_sram_bytes_total": 2**20, "num_ndp_units": 1}


def plot_sweep(spec: SweepSpec, rows: list[dict[str, str]], out_dir: Path) -> list[Path]:
    """Draw the Pareto chart (latency against each hardware cost) and the per-axis
    sensitivity chart of a sweep's rows; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if r["status"] == "ok"]
    paths = []
    fig, axs = plt.subplots(1, len(COST_AXES), figsize=(5 * len(COST_AXES), 4), squeeze=False)
    for ax, (col, label) in zip(axs[0], COST_AXES.items(), strict=True):
        pts = [(float(r[col]) / _COST_SCALE[col], float(r["latency_s"])) for r in ok]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=14, alpha=0.5, label="design points")
            ax.plot(*zip(*pareto_front(pts), strict=True), "r-o", ms=4, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel("end-to-end latency (s)")
        ax.legend(fontsize=8)
    fig.suptitle(f"{spec.name}: latency against hardware cost ({len(ok)} points)")
    fig.tight_layout()
    paths.append(out_dir / f"{spec.name}_pareto.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    sens = sensitivity(rows, spec.axes, "latency_s")
    fig, ax = plt.subplots(figsize=(7, 4))
    for axis, by_value in sens.items():
        ax.plot(range(len(by_value)), list(by_value.values()), "-o", label=axis)
        for i, v in enumerate(by_value):
            ax.annotate(v, (i, by_value[v]), fontsize=7, textcoords="offset points",
                        xytext=(0, 4))  # fmt: skip
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("axis value (in the spec's order)")
    ax.set_ylabel("mean latency / mean over all points")
    ax.set_title(f"{spec.name}: what each knob does to latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / f"{spec.name}_sensitivity.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def read_rows(path: Path) -> list[dict[str, str]]:
    """The finished rows of a results file, in file order."""
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("status") and None not in r.values()]


def typed(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row with numbers as numbers (for JSON answers)."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        try:
            out[k] = int(v)
        except ValueError:
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
    return out
