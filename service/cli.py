"""The `moesched` command line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, cast, get_args

import numpy as np
import typer
from pydantic import ValidationError

from hwmodel.executor import simulate as run_simulation
from hwmodel.presets import HARDWARE_PRESETS, MODEL_PRESETS, hardware_preset, model_preset
from hwmodel.report import Report
from hwmodel.trace_export import chrome_trace, gantt
from service.client import MoeschedClient, MoeschedError
from service.errors import DomainError
from service.schemas import (
    EplbRequest,
    OrderingRequest,
    OrderingResponse,
    PlacementRequest,
    PlacementResponse,
    RouteRequest,
    SimulateRequest,
)
from solvers.common import BACKENDS

TraceOption = Annotated[Path | None, typer.Option(help="Write a Chrome trace (Perfetto) here.")]
GanttOption = Annotated[
    Path | None, typer.Option("--gantt", help="Write a Gantt chart (PNG/SVG) here.")
]


@contextmanager
def _exit_2_on_bad_input() -> Iterator[None]:
    """Input the command cannot use: print why and exit with status 2."""
    try:
        yield
    except (ValidationError, DomainError, OSError, ValueError, KeyError, MoeschedError) as exc:
        print(f"error: {exc}")
        raise typer.Exit(2) from None


app = typer.Typer(help="moesched: MoE scheduling on heterogeneous hardware.", no_args_is_help=True)


@app.command()
def presets() -> None:
    """List the hardware and model presets."""
    print("hardware presets:")
    for name in HARDWARE_PRESETS:
        print(f"  {name:24s} {hardware_preset(name).description}")
    print("model presets:")
    for name in MODEL_PRESETS:
        m = model_preset(name)
        print(
            f"  {name:24s} {m.num_routed_experts} experts top-{m.top_k}, {m.num_moe_layers} MoE "
            f"layers, {m.expert_bytes() / 1e6:.1f} MB per expert"
        )


def print_report(report: Report) -> None:
    """Print the headline figures and every violation."""
    print(f"valid: {report.valid}  tasks: {report.num_tasks}")
    print(f"makespan: {report.makespan_cycles} cycles = {report.makespan_s * 1e3:.4f} ms")
    for d in report.devices:
        print(
            f"  {d.device_id:10s} {d.kind:4s} busy {d.busy_cycles:>12d}  util {d.utilization:6.1%}"
        )
    for lk in report.links:
        print(
            f"  {lk.link_id:10s} link {lk.bytes_moved / 1e6:10.3f} MB  util {lk.utilization:6.1%}"
        )
    for imb in report.imbalance:
        print(f"  imbalance {imb.kind}: max/mean {imb.max_over_mean:.3f}  cv {imb.cv:.3f}")
    print(f"cache hits {report.cache_hits}  misses {report.cache_misses}")
    for v in report.violations:
        where = " ".join(
            f"{k}={val}"
            for k, val in (("task", v.task_id), ("at", v.resource_id), ("cycle", v.cycle))
            if val is not None
        )
        print(f"VIOLATION {v.code}: {v.message} {where}")


@app.command()
def simulate(
    file: Annotated[Path, typer.Argument(help="JSON request: the body of POST /v1/simulate.")],
    trace: TraceOption = None,
    gantt_path: GanttOption = None,
) -> None:
    """Simulate a plan and print the report; exit 1 when the plan breaks a rule."""
    with _exit_2_on_bad_input():
        request = SimulateRequest.model_validate_json(file.read_bytes())
        hardware, model = request.resolved_hardware(), request.resolved_model()
    report = run_simulation(
        hardware,
        model,
        request.plan,
        request.workload,
        request.residency,
        include_timeline=trace is not None or gantt_path is not None,
    )
    print_report(report)
    if trace is not None:
        trace.write_text(json.dumps(chrome_trace(report)))
    if gantt_path is not None:
        gantt(report, gantt_path)
    if not report.valid:
        raise typer.Exit(1)


@app.command()
def solve(
    file: Annotated[
        Path,
        typer.Argument(help="JSON request: the body of POST /v1/placement or POST /v1/ordering."),
    ],
    backend: Annotated[
        str | None, typer.Option(help="Override the backend: auto, cpsat, milp or greedy.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the plan (JSON) here.")] = None,
    trace: TraceOption = None,
    gantt_path: GanttOption = None,
    url: Annotated[
        str | None, typer.Option(help="Send the request to a running service instead.")
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --url.")] = None,
) -> None:
    """Solve a placement or ordering request; print the account and the executor's report."""
    from service.settings import get_settings
    from service.solving import order, place

    if backend is not None and backend not in BACKENDS:
        print(f"error: --backend must be one of {list(BACKENDS)}")
        raise typer.Exit(2)
    with _exit_2_on_bad_input():
        data = json.loads(file.read_bytes())
        request: PlacementRequest | OrderingRequest
        if isinstance(data, dict) and "batch_tokens" in data:
            request = OrderingRequest.model_validate(data)
        else:
            request = PlacementRequest.model_validate(data)
        if backend is not None:
            opts = request.options.model_copy(update={"backend": backend})
            request = request.model_copy(update={"options": opts})
        timeline = trace is not None or gantt_path is not None
        response: PlacementResponse | OrderingResponse
        if url is not None:
            if timeline:
                print("note: --trace/--gantt need the timeline; the service returns none here")
                trace = gantt_path = None
            with MoeschedClient(url, api_key) as client:
                if isinstance(request, OrderingRequest):
                    response = client.ordering(request)
                else:
                    response = client.placement(request)
        elif isinstance(request, OrderingRequest):
            response = order(request, get_settings(), timeline)
        else:
            response = place(request, get_settings(), timeline)
    a = response.account
    gap = "n/a" if a.gap is None else f"{a.gap:.2%}"
    print(
        f"status {a.status}  backend {a.backend}  objective {a.objective_cycles} cycles  "
        f"bound {a.lower_bound_cycles}  gap {gap}  wall {a.wall_time_s:.3f} s"
    )
    if a.fallback_reason:
        print(f"fallback: {a.fallback_reason}")
    if isinstance(response, OrderingResponse):
        print(
            f"micro-batches {response.micro_batches} ({response.why}); serial "
            f"{response.serial_cycles}, PPPipe {response.pppipe_cycles} at m="
            f"{response.pppipe_micro_batches}; {response.throughput_tokens_per_s:,.0f} tokens/s"
        )
    print_report(response.report)
    if out is not None:
        out.write_text(response.plan.model_dump_json(indent=1))
    if trace is not None:
        trace.write_text(json.dumps(chrome_trace(response.report)))
    if gantt_path is not None:
        gantt(response.report, gantt_path)


@app.command()
def eplb(
    weights: Annotated[Path, typer.Option(help="JSON list of lists: [num_layers][num_experts].")],
    num_replicas: Annotated[int, typer.Option(help="Physical slots (multiple of num_gpus).")],
    num_groups: Annotated[int, typer.Option(help="Expert groups.")],
    num_nodes: Annotated[int, typer.Option(help="Nodes.")],
    num_gpus: Annotated[int, typer.Option(help="GPUs.")],
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the maps.")],
    backend: Annotated[str, typer.Option(help="auto, cpsat or greedy (EPLB's own).")] = "auto",
    deadline_s: Annotated[float, typer.Option(help="Wall-clock budget in seconds.")] = 5.0,
) -> None:
    """EPLB-compatible replica placement; writes physical_to_logical and friends as JSON."""
    from service.settings import get_settings
    from service.solving import eplb as solve_eplb_request

    with _exit_2_on_bad_input():
        request = EplbRequest(
            weights=json.loads(weights.read_text()),
            num_replicas=num_replicas,
            num_groups=num_groups,
            num_nodes=num_nodes,
            num_gpus=num_gpus,
            backend=backend,  # validated by EplbRequest
            deadline_s=deadline_s,
        )
        response = solve_eplb_request(request, get_settings())
    json_path.write_text(response.model_dump_json(indent=1))
    print(
        f"status {response.status}  balancedness mean {response.balancedness_mean:.4f}  "
        f"min {min(response.balancedness):.4f}  wall {response.wall_time_s:.3f} s"
    )


@app.command()
def route(
    placement: Annotated[
        Path, typer.Option(help="JSON list: the logical expert of each slot (GPU-major).")
    ],
    loads: Annotated[Path, typer.Option(help="JSON list: tokens per logical expert.")],
    num_gpus: Annotated[int, typer.Option(help="GPUs.")],
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the routing.")],
) -> None:
    """Split one batch's tokens among replicas so the busiest GPU is lightest."""
    from service.solving import route as route_request

    with _exit_2_on_bad_input():
        request = RouteRequest(
            physical_to_logical=json.loads(placement.read_text()),
            num_gpus=num_gpus,
            loads=json.loads(loads.read_text()),
        )
        response = route_request(request)
    json_path.write_text(response.model_dump_json(indent=1))
    print(
        f"max load {response.max_load}  balancedness {response.balancedness:.4f} (even split "
        f"{response.even_split_balancedness:.4f})"
    )


@app.command()
def replay(
    trace: Annotated[Path, typer.Option(help="A per-token trace (ESFT .jsonl.gz or FLAME .json).")],
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the results.")],
    model: Annotated[
        str | None, typer.Option(help="Model preset (default: the preset matching the trace).")
    ] = None,
    hardware: Annotated[str, typer.Option(help="Hardware preset.")] = "offload-a6000-pcie4",
    capacity_experts: Annotated[int | None, typer.Option(help="Experts cached per layer.")] = None,
    capacity_fraction: Annotated[
        float, typer.Option(help="Or: share of a layer's experts.")
    ] = 0.25,
    policy: Annotated[list[str] | None, typer.Option(help="Cache policies (default: all).")] = None,
    dispatch: Annotated[
        str, typer.Option(help="demand (GPU only, misses loaded), solver, monde, expert_parallel.")
    ] = "demand",
    prefetch: Annotated[bool, typer.Option(help="Stage predicted experts (moesched).")] = True,
    prefill_fraction: Annotated[
        float, typer.Option(help="Share of each sequence used as prompt.")
    ] = 0.25,
    sequences: Annotated[int, typer.Option(min=1, help="Sequences to replay.")] = 1,
    max_steps: Annotated[int, typer.Option(min=1, help="Decode steps per sequence.")] = 64,
    substitute_below: Annotated[
        float, typer.Option(help="Gate weight below which a miss may be substituted (0: off).")
    ] = 0.0,
    quality_budget: Annotated[
        float, typer.Option(help="Largest share of gate mass substituted.")
    ] = 0.05,
) -> None:
    """Replay a real decode trace step by step through prediction, prefetch, cache, placement
    and the executor: hit rate, bytes moved, substituted gate mass and per-step latency.

    Exits 1 when the executor finds a violation in any step.
    """
    from hwmodel.plan_builder import layout_residency, stripe_granules
    from hwmodel.presets import MODEL_PRESETS, hardware_preset, model_preset
    from hwmodel.routing_traces import load_trace
    from solvers.decode_loop import Dispatch, LoopConfig, run_sequences
    from solvers.prefetch.cache import POLICIES, Policy

    with _exit_2_on_bad_input():
        routing = load_trace(trace)
        if model is None:
            model = next(
                (
                    name
                    for name, make in MODEL_PRESETS.items()
                    if (m := make()).num_moe_layers == routing.num_layers
                    and m.num_routed_experts == routing.num_experts
                ),
                None,
            )
            if model is None:
                raise ValueError("model: no preset matches the trace; name one with --model")
        spec, hw = model_preset(model), hardware_preset(hardware)
        ndps = sum(1 for d in hw.devices if d.kind == "ndp")
        granules = stripe_granules(spec.expert_ffn_size, ndps) if ndps else 4
        base = layout_residency(
            hw, spec, "striped" if ndps else "round_robin", kind="ndp" if ndps else "cpu",
            num_granules=granules,
        )  # fmt: skip
        if dispatch not in get_args(Dispatch):
            raise ValueError(f"dispatch: unknown '{dispatch}'; known: {list(get_args(Dispatch))}")
        policies = policy or list(POLICIES)
        unknown = [p for p in policies if p not in (*POLICIES, "static")]
        if unknown:
            raise ValueError(f"policy: unknown {unknown}; known: {[*POLICIES, 'static']}")
        capacity = (
            capacity_experts
            if capacity_experts is not None
            else round(capacity_fraction * routing.num_experts)
        )
        runs = routing.decode_runs(prefill_fraction, max_steps, sequences)
        results = {}
        for name in policies:
            config = LoopConfig(
                capacity_experts=capacity, cache=cast(Policy, name),
                prefetch=prefetch and name == "moesched", dispatch=cast(Dispatch, dispatch),
                substitute_below=substitute_below, quality_budget=quality_budget,
                num_granules=granules,
            )  # fmt: skip
            merged = run_sequences(hw, spec, base, config, routing, runs)
            st = merged.stats
            latency_ms = [s.latency_s * 1e3 for s in merged.steps]
            results[name] = {
                "hit_rate": st.hit_rate,
                "demand_loads": st.loads,
                "prefetches": st.prefetches,
                "weight_bytes_moved": float(sum(s.weight_bytes for s in merged.steps)),
                "bytes_moved": float(sum(s.bytes_moved for s in merged.steps)),
                "substitutions": st.substitutions,
                "substituted_gate_mass_share": st.substituted_share,
                "steps": len(merged.steps),
                "latency_ms_per_step": latency_ms,
                "latency_ms_mean": float(np.mean(latency_ms)),
                "latency_ms_p90": float(np.percentile(latency_ms, 90)),
                "executor_violations": merged.violations,
            }
            r = results[name]
            print(
                f"{name:9s} hit rate {r['hit_rate']:.3f}  loads {r['demand_loads']:6d}  "
                f"prefetches {r['prefetches']:5d}  latency {r['latency_ms_mean']:.3f} ms/step  "
                f"substituted mass {r['substituted_gate_mass_share']:.3f}  "
                f"violations {r['executor_violations']}"
            )
    out = {
        "trace": str(trace), "model": model, "hardware": hardware, "dispatch": dispatch,
        "capacity_experts": capacity, "decode_runs": runs, "policies": results,
    }  # fmt: skip
    json_path.write_text(json.dumps(out, indent=1))
    if any(r["executor_violations"] for r in results.values()):
        raise typer.Exit(1)


@app.command()
def bench(
    name: Annotated[str, typer.Argument(help="Benchmark name (see --help of the bench module).")],
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")],
    quick: Annotated[bool, typer.Option(help="A short run (seconds, not minutes).")] = False,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the benchmark's chart (PNG).")
    ] = None,
) -> None:
    """Run one benchmark and write {"benchmark", "rows", "summary"} as JSON."""
    from bench import BENCHMARKS
    from bench.plots import plot as draw

    if name not in BENCHMARKS:
        print(f"error: unknown benchmark '{name}'; known: {sorted(BENCHMARKS)}")
        raise typer.Exit(2)
    result = BENCHMARKS[name](quick)
    result.write(json_path)
    if plot_path is not None:
        draw(result.to_json(), plot_path)
    print(json.dumps(result.summary, indent=2))


@app.command()
def plot(
    result: Annotated[Path, typer.Argument(help="A benchmark's JSON result.")],
    out: Annotated[Path, typer.Option(help="Where to write the PNG.")],
) -> None:
    """Draw a benchmark's chart from its JSON result (no re-run)."""
    from bench.plots import plot as draw

    with _exit_2_on_bad_input():
        draw(json.loads(result.read_text()), out)
    print(f"wrote {out}")


@app.command()
def sweep(
    spec_path: Annotated[Path, typer.Argument(help="A sweep spec (YAML or JSON).")],
    out: Annotated[Path, typer.Option(help="The CSV of rows; finished points are reused.")],
    address: Annotated[
        str | None,
        typer.Option(help="A Ray cluster to join (ray start --head prints it); default: local."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray instance (default: all).")
    ] = None,
    plot_dir: Annotated[
        Path | None, typer.Option("--plot-dir", help="Draw the Pareto and sensitivity charts.")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Run a design-space sweep on Ray, one point a task, rows streamed to a CSV file.

    Exit 1 when a point failed or broke an executor check, 2 on a bad spec."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from bench.sweep import load_spec, plot_sweep, run_sweep

    with _exit_2_on_bad_input():
        spec = load_spec(spec_path)
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), disable=quiet,
    )  # fmt: skip
    with progress:
        bar = progress.add_task(f"sweep {spec.name}", total=None)
        got = run_sweep(
            spec, out, address=address, num_cpus=workers,
            on_row=lambda done, total: progress.update(bar, completed=done, total=total),
        )  # fmt: skip
    print(
        f"{got.total} points: {got.reused} reused, {got.computed} computed, {got.failed} failed "
        f"in {got.wall_s:.1f} s; rows in {out}"
    )
    if plot_dir is not None:
        for path in plot_sweep(spec, got.rows, plot_dir):
            print(f"wrote {path}")
    if any(r["status"] != "ok" for r in got.rows):
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: settings, loopback).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: settings, 8000).")] = None,
) -> None:
    """Start the HTTP service (Swagger UI at /docs)."""
    import uvicorn

    from service.http_protocol import DeadlineH11Protocol
    from service.main import create_app
    from service.settings import get_settings

    settings = get_settings()
    bind = settings.model_copy(update={"host": host or settings.host})
    for warning in bind.warnings():
        print(f"WARNING: {warning}", file=sys.stderr)
    uvicorn.run(
        create_app(bind),
        host=bind.host,
        port=port or settings.port,
        http=DeadlineH11Protocol,
        timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
        limit_concurrency=settings.max_connections,
    )


if __name__ == "__main__":
    app()
