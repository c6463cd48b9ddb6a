"""The `moesched` command line.

Start-up is kept short: only typer and the standard library load when the module is imported;
every command imports the solvers, schemas, HTTP client or plotting it needs when it runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from hwmodel.report import Report
    from service.client import MoeschedClient

EXIT_OK, EXIT_VIOLATIONS, EXIT_BAD_INPUT = 0, 1, 2

HELP = """moesched: MoE scheduling on heterogeneous hardware.

Exit codes: 0 ok; 1 the plan breaks a rule (the executor found violations); 2 bad input (one
line on stderr naming the file and the field, worded as the HTTP service words it).
Commands the service also offers take --url URL to send the request to a running service.
"""

TraceOption = Annotated[Path | None, typer.Option(help="Write a Perfetto (Chrome) trace here.")]
GanttOption = Annotated[
    Path | None, typer.Option("--gantt", help="Write a Gantt chart (PNG or SVG, by suffix) here.")
]
UrlOption = Annotated[
    str | None,
    typer.Option(help="Send the request to a running service (e.g. http://127.0.0.1:8000)."),
]
ApiKeyOption = Annotated[str | None, typer.Option(help="API key for --url (X-API-Key).")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress display (also off when not a TTY).")
]

# name -> what it measures: shown by `bench --help` without importing any benchmark
BENCHMARK_HELP = {
    "executor": "simulation speed of a decode step",
    "solvers": "placement backends on real layers",
    "eplb": "EPLB balancedness vs DeepSeek's",
    "dep": "disaggregated expert parallelism vs PPPipe",
    "service": "HTTP latency and throughput",
    "reliability": "fuzzing, overload, kill -9",
    "balance": "per-batch routing balance",
    "cache": "expert-cache hit rates on real traces",
    "ndp": "the GPU-NDP reproduction",
    "sweep": "a design-space sweep on Ray, 1 vs 2 workers",
    "cli": "command-line start-up vs python -c pass",
    "runtimes": "runtime dumps in, placements out, at DeepSeek-V3 scale",
}
BENCHMARKS_WITHOUT_TRACES = frozenset({"dep", "cli"})


def say(text: str) -> None:
    """A result line, on stdout."""
    typer.echo(text)


def note(text: str) -> None:
    """A remark that is not the result (a note, an error), on stderr."""
    typer.echo(text, err=True)


@contextmanager
def bad_input(source: str | Path | None) -> Iterator[None]:
    """Input the command cannot use: one line on stderr naming ``source`` and the field, then
    exit 2. Anything that is not bad input (a bug) propagates with its traceback."""
    from service.input_errors import input_error_text

    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        text = input_error_text(exc, source)
        if text is None:
            raise
        note(f"error: {text}")
        raise typer.Exit(EXIT_BAD_INPUT) from None


Reporter = Callable[[str, int | None], Callable[[], None]]


@contextmanager
def progress(quiet: bool) -> Iterator[Reporter | None]:
    """A rich progress display on stderr, or None with --quiet or when stderr is no terminal.

    Yields ``reporter(label, total)`` which starts a task (a spinner when ``total`` is None)
    and returns the function advancing it by one.
    """
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:

        def reporter(label: str, total: int | None) -> Callable[[], None]:
            task = bar.add_task(label, total=total)
            return lambda: bar.advance(task)

        yield reporter


@contextmanager
def working(quiet: bool, label: str) -> Iterator[Reporter | None]:
    """``progress`` with one spinner task called ``label`` already started."""
    with progress(quiet) as reporter:
        if reporter is not None:
            reporter(label, None)
        yield reporter


def client(url: str, api_key: str | None) -> MoeschedClient:
    from service.client import MoeschedClient

    return MoeschedClient(url, api_key)


def read_json(path: Path) -> Any:
    """The JSON in ``path`` (bad input: exit 2 naming the file)."""
    return json.loads(path.read_bytes())


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            say(f"moesched {version('moesched')}")
        except PackageNotFoundError:
            say("moesched (not installed)")
        raise typer.Exit(EXIT_OK)


app = typer.Typer(help=HELP, no_args_is_help=True, rich_markup_mode=None)


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """moesched: MoE scheduling on heterogeneous hardware."""


@app.command()
def presets(url: UrlOption = None, api_key: ApiKeyOption = None) -> None:
    """List the hardware and model presets."""
    if url is not None:
        with bad_input(url), client(url, api_key) as c:
            hardware, models = c.hardware_presets(), c.model_presets()
        rows_hw = [(h.name, h.description) for h in hardware]
        rows_m = [(m.name, m.num_routed_experts, m.top_k, m.num_moe_layers, m.expert_bytes)
                  for m in models]  # fmt: skip
    else:
        from hwmodel.presets import HARDWARE_PRESETS, MODEL_PRESETS, hardware_preset, model_preset

        rows_hw = [(name, hardware_preset(name).description) for name in HARDWARE_PRESETS]
        rows_m = []
        for name in MODEL_PRESETS:
            m = model_preset(name)
            rows_m.append((name, m.num_routed_experts, m.top_k, m.num_moe_layers, m.expert_bytes()))
    say("hardware presets:")
    for name, description in rows_hw:
        say(f"  {name:24s} {description}")
    say("model presets:")
    for name, experts, top_k, layers, expert_bytes in rows_m:
        say(
            f"  {name:24s} {experts} experts top-{top_k}, {layers} MoE layers, "
            f"{expert_bytes / 1e6:.1f} MB per expert"
        )


def print_report(report: Report) -> None:
    """Print the headline figures and every violation."""
    say(f"valid: {report.valid}  tasks: {report.num_tasks}")
    say(f"makespan: {report.makespan_cycles} cycles = {report.makespan_s * 1e3:.4f} ms")
    for d in report.devices:
        say(f"  {d.device_id:10s} {d.kind:4s} busy {d.busy_cycles:>12d}  util {d.utilization:6.1%}")
    for lk in report.links:
        say(f"  {lk.link_id:10s} link {lk.bytes_moved / 1e6:10.3f} MB  util {lk.utilization:6.1%}")
    for imb in report.imbalance:
        say(f"  imbalance {imb.kind}: max/mean {imb.max_over_mean:.3f}  cv {imb.cv:.3f}")
    say(f"cache hits {report.cache_hits}  misses {report.cache_misses}")
    for v in report.violations:
        where = " ".join(
            f"{k}={val}"
            for k, val in (("task", v.task_id), ("at", v.resource_id), ("cycle", v.cycle))
            if val is not None
        )
        say(f"VIOLATION {v.code}: {v.message} {where}")


def write_pictures(report: Report, trace: Path | None, gantt_path: Path | None) -> None:
    """Write the Perfetto trace and the Gantt chart of a report simulated with its timeline."""
    from hwmodel.trace_export import chrome_trace, gantt

    if trace is not None:
        trace.write_text(json.dumps(chrome_trace(report)))
    if gantt_path is not None:
        gantt(report, gantt_path)


@app.command()
def simulate(
    file: Annotated[
        Path,
        typer.Argument(
            help="JSON: the body of POST /v1/simulate, or a plan written by `solve --out`."
        ),
    ],
    trace: TraceOption = None,
    gantt_path: GanttOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Simulate a plan and print the report; exit 1 when the plan breaks a rule."""
    from service.schemas import SimulateRequest

    timeline = trace is not None or gantt_path is not None
    with bad_input(file):
        request = SimulateRequest.model_validate(read_json(file))
        if timeline:
            request = request.model_copy(update={"include_timeline": True})
        if url is not None:
            with bad_input(url), client(url, api_key) as c:
                report = c.simulate(request).report
        else:
            from hwmodel.executor import simulate as run_simulation

            report = run_simulation(
                request.resolved_hardware(),
                request.resolved_model(),
                request.plan,
                request.workload,
                request.residency,
                include_timeline=timeline,
                context_tokens=request.context_tokens,
            )
    print_report(report)
    write_pictures(report, trace, gantt_path)
    if not report.valid:
        raise typer.Exit(EXIT_VIOLATIONS)


@app.command()
def solve(
    file: Annotated[
        Path,
        typer.Argument(help="JSON request: the body of POST /v1/placement or POST /v1/ordering."),
    ],
    backend: Annotated[
        str | None, typer.Option(help="Override the backend: auto, cpsat, milp or greedy.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Write the plan here, as a request `moesched simulate` accepts."),
    ] = None,
    trace: TraceOption = None,
    gantt_path: GanttOption = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    quiet: QuietOption = False,
) -> None:
    """Solve a placement or ordering request; print the account and the executor's report."""
    from service.schemas import (
        OrderingRequest,
        OrderingResponse,
        PlacementRequest,
        PlacementResponse,
    )
    from solvers.common import BACKENDS

    if backend is not None and backend not in BACKENDS:
        note(f"error: --backend: unknown '{backend}'; known: {list(BACKENDS)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    timeline = trace is not None or gantt_path is not None
    response: PlacementResponse | OrderingResponse
    with bad_input(file):
        data = read_json(file)
        request: PlacementRequest | OrderingRequest
        if isinstance(data, dict) and "batch_tokens" in data:
            request = OrderingRequest.model_validate(data)
        else:
            request = PlacementRequest.model_validate(data)
        if backend is not None:
            opts = request.options.model_copy(update={"backend": backend})
            request = request.model_copy(update={"options": opts})
        kind = "ordering" if isinstance(request, OrderingRequest) else "placement"
        label = (
            f"solving {kind}: backend {request.options.backend}, "
            f"deadline {request.options.deadline_s:g} s"
        )
        with working(quiet, label):
            if url is not None:
                if timeline:
                    note("note: --trace/--gantt need the timeline; the service returns none here")
                    trace = gantt_path = None
                with bad_input(url), client(url, api_key) as c:
                    if isinstance(request, OrderingRequest):
                        response = c.ordering(request)
                    else:
                        response = c.placement(request)
            else:
                from service.settings import get_settings
                from service.solving import order, place

                if isinstance(request, OrderingRequest):
                    response = order(request, get_settings(), timeline)
                else:
                    response = place(request, get_settings(), timeline)
    print_summary(response)
    if isinstance(response, OrderingResponse):
        say(
            f"micro-batches {response.micro_batches} ({response.why}); serial "
            f"{response.serial_cycles}, PPPipe {response.pppipe_cycles} at m="
            f"{response.pppipe_micro_batches}; {response.throughput_tokens_per_s:,.0f} tokens/s"
        )
    print_report(response.report)
    if out is not None:
        out.write_text(json.dumps(simulate_body(data, request, response), indent=1))
    write_pictures(response.report, trace, gantt_path)


def print_summary(response: Any) -> None:
    """The answer first: status and why, gap, makespan, then where every expert runs."""
    s, a = response.summary, response.account
    gap = "n/a" if s.gap is None else f"{s.gap:.2%}"
    say(f"status {s.status}: {s.why}")
    say(
        f"gap {gap}  makespan {s.makespan_ms:.4f} ms ({s.makespan_cycles} cycles)  "
        f"backend {a.backend}  bound {a.lower_bound_cycles}  wall {a.wall_time_s:.3f} s"
    )
    for layer in s.layers:
        experts = "; ".join(
            f"e{e} -> "
            + " ".join(d if end is None else f"{d}[{start}:{end}]" for d, start, end in shards)
            for e, shards in layer.experts.items()
        )
        say(f"layer {layer.layer}: {experts}")


def simulate_body(data: dict[str, Any], request: Any, response: Any) -> dict[str, Any]:
    """The body of POST /v1/simulate for a solved plan: the request's hardware and model as
    given (presets stay presets), the residency the plan was solved on, the workload (placement)
    or the context length (ordering), and the plan."""
    from service.schemas import OrderingRequest

    body: dict[str, Any] = {
        k: data[k] for k in ("hardware", "hardware_preset", "model", "model_preset") if k in data
    }
    if isinstance(request, OrderingRequest):
        from solvers.ordering.dep import DepProblem

        residency = DepProblem(
            request.resolved_hardware(), request.resolved_model(), request.batch_tokens,
            request.num_layers, request.context_tokens,
        ).residency()  # fmt: skip
        body["context_tokens"] = request.context_tokens
    else:
        from service.settings import get_settings
        from service.solving import resolve_placement

        residency = resolve_placement(request, get_settings()).residency
        body["workload"] = request.workload.model_dump(mode="json", exclude_none=True)
    body["residency"] = residency.model_dump(mode="json", exclude_none=True)
    body["plan"] = response.plan.model_dump(mode="json", exclude_none=True)
    return body


@app.command()
def eplb(
    num_gpus: Annotated[int, typer.Option(help="GPUs.")],
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Where to write moesched's full answer.")
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="JSON list of lists: [num_layers][num_experts].")
    ] = None,
    dump_path: Annotated[
        Path | None, typer.Argument(help="The runtime's file (with --from).", show_default=False)
    ] = None,
    from_runtime: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Who wrote PATH: sglang (expert-distribution dump, .pt or .json), vllm "
            "(expert_load_window + physical_to_logical_map), deepseek (weight), routing-log "
            "(.jsonl / .jsonl.gz route records, or a batched decode layout).",
        ),
    ] = None,
    current: Annotated[
        Path | None,
        typer.Option(help="JSON [num_layers][num_replicas]: the placement running now."),
    ] = None,
    num_replicas: Annotated[
        int | None, typer.Option(help="Physical slots (default: the current placement's).")
    ] = None,
    num_groups: Annotated[int, typer.Option(help="Expert groups.")] = 1,
    num_nodes: Annotated[int, typer.Option(help="Nodes.")] = 1,
    num_experts: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Logical experts of the model (default: the file's, or its largest id + 1; a "
            "log whose top experts were never routed needs this, or they get no slot).",
        ),
    ] = None,
    max_moved_replicas: Annotated[
        int | None, typer.Option(help="At most this many slots change expert.")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="moesched, sglang, vllm or deepseek (for --out).")
    ] = "moesched",
    out: Annotated[
        Path | None, typer.Option(help="Where to write the file the runtime loads (--format).")
    ] = None,
    logical_count: Annotated[
        bool, typer.Option(help="With --format sglang: add logical_count.")
    ] = False,
    backend: Annotated[str, typer.Option(help="auto, cpsat or greedy (EPLB's own).")] = "auto",
    deadline_s: Annotated[float, typer.Option(help="Wall-clock budget in seconds.")] = 5.0,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    quiet: QuietOption = False,
) -> None:
    """EPLB-compatible replica placement from EPLB's weight or a runtime's recording; writes
    moesched's answer (--json) and the file the runtime loads (--format, --out)."""
    import base64

    import numpy as np

    from service.eplb import eplb as solve_eplb_request
    from service.schemas import EplbRequest, RuntimeDump
    from service.settings import get_settings

    with bad_input(dump_path or weights):
        dump = None
        if (from_runtime is None) != (dump_path is None):
            raise ValueError("--from RUNTIME and PATH go together")
        if from_runtime is not None and dump_path is not None:
            dump = RuntimeDump(
                runtime=from_runtime,  # validated by RuntimeDump
                filename=dump_path.name,
                content_base64=base64.b64encode(dump_path.read_bytes()).decode(),
            )
        request = EplbRequest(
            weights=json.loads(weights.read_text()) if weights is not None else None,
            dump=dump,
            current_physical_to_logical=(
                json.loads(current.read_text()) if current is not None else None
            ),
            num_replicas=num_replicas,
            num_logical_experts=num_experts,
            num_groups=num_groups,
            num_nodes=num_nodes,
            num_gpus=num_gpus,
            max_moved_replicas=max_moved_replicas,
            backend=backend,  # validated by EplbRequest
            deadline_s=deadline_s,
            format=output_format,  # validated by EplbRequest
            logical_count=logical_count,
        )
        if out is not None and request.format == "moesched":
            raise ValueError("--out: name the runtime with --format sglang|vllm|deepseek")
    if url is not None:
        with bad_input(url), client(url, api_key) as c:
            response = c.eplb(request)
    else:
        with bad_input(dump_path or weights):
            response = solve_eplb_request(request, get_settings())
    if json_path is not None:
        json_path.write_text(response.model_dump_json(indent=1))
    if out is not None:
        out.write_text(json.dumps(response.runtime_file))
    moved = (
        f"  moved {response.moved_replicas} replicas ({response.moved_replicas_unaligned} "
        "unaligned)"
        if response.moved_replicas is not None
        else ""
    )
    window = (
        f"  window balancedness {np.mean(response.window_balancedness):.4f} "
        f"(EPLB {np.mean(response.window_balancedness_eplb or [0]):.4f})"
        if response.window_balancedness
        else ""
    )
    print(
        f"status {response.status}  samples {response.num_samples}  balancedness mean "
        f"{response.balancedness_mean:.4f}  min {min(response.balancedness):.4f}{window}{moved}  "
        f"wall {response.wall_time_s:.3f} s"
    )
    for note in response.notes:
        print(f"  note: {note}")


@app.command()
def route(
    placement: Annotated[
        Path, typer.Option(help="JSON list: the logical expert of each slot (GPU-major).")
    ],
    loads: Annotated[Path, typer.Option(help="JSON list: tokens per logical expert.")],
    num_gpus: Annotated[int, typer.Option(help="GPUs.")],
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the routing.")],
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
) -> None:
    """Split one batch's tokens among replicas so the busiest GPU is lightest."""
    from service.schemas import RouteRequest

    with bad_input(placement):
        p2l = read_json(placement)
    with bad_input(loads):
        tokens = read_json(loads)
    with bad_input(f"{placement} + {loads}"):
        request = RouteRequest(physical_to_logical=p2l, num_gpus=num_gpus, loads=tokens)
        if url is not None:
            with bad_input(url), client(url, api_key) as c:
                response = c.route(request)
        else:
            from service.solving import route as route_request

            response = route_request(request)
    json_path.write_text(response.model_dump_json(indent=1))
    say(
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
    quiet: QuietOption = False,
) -> None:
    """Replay a real decode trace step by step through prediction, prefetch, cache, placement
    and the executor: hit rate, bytes moved, substituted gate mass and per-step latency.

    Exits 1 when the executor finds a violation in any step.
    """
    from typing import cast, get_args

    import numpy as np

    from bench.common import reporting, tracked
    from bench.ndp import decode_granules
    from hwmodel.plan_builder import layout_residency
    from hwmodel.presets import hardware_preset, model_preset
    from hwmodel.routing_traces import load_for_replay
    from solvers.decode_loop import Dispatch, LoopConfig, run_sequences
    from solvers.prefetch.cache import POLICIES, Policy

    with bad_input(trace), progress(quiet) as reporter, reporting(reporter):
        model, routing = load_for_replay(trace, model)
        spec, hw = model_preset(model), hardware_preset(hardware)
        ndps = sum(1 for d in hw.devices if d.kind == "ndp")
        granules = decode_granules(spec, ndps) if ndps else 4  # bench ndp's rule
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
        if not runs:
            raise ValueError(
                f"trace: no token left to decode in its first {sequences} sequence(s) after "
                f"the prompt ({prefill_fraction:g} of each, at least one token; "
                f"{len(routing.sequences())} sequences, {routing.num_tokens} tokens)"
            )
        results = {}
        for name in tracked(policies, f"replaying {trace.name}: cache policies"):
            config = LoopConfig(
                capacity_experts=capacity, cache=cast(Policy, name),
                prefetch=prefetch and name == "moesched", dispatch=cast(Dispatch, dispatch),
                substitute_below=substitute_below, quality_budget=quality_budget,
                num_granules=granules,
            )  # fmt: skip
            try:
                merged = run_sequences(hw, spec, base, config, routing, runs)
            except ValueError as exc:
                if capacity_experts is None and str(exc).startswith("capacity_experts:"):
                    raise ValueError(
                        f"{exc} (the default cache is {capacity_fraction:g} of each layer's "
                        "experts: pass a smaller --capacity-experts or --capacity-fraction)"
                    ) from exc
                raise
            st = merged.stats
            first_violations = list(dict.fromkeys(v for s in merged.steps for v in s.violations))
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
                "violations_first": first_violations[:3],
            }
            r = results[name]
            say(
                f"{name:9s} hit rate {r['hit_rate']:.3f}  loads {r['demand_loads']:6d}  "
                f"prefetches {r['prefetches']:5d}  latency {r['latency_ms_mean']:.3f} ms/step  "
                f"substituted mass {r['substituted_gate_mass_share']:.3f}  "
                f"violations {r['executor_violations']}"
            )
            for message in first_violations[:3]:
                say(f"  violation: {message}")
    idle = all(r["demand_loads"] == 0 and r["prefetches"] == 0 for r in results.values())
    if len(results) > 1 and idle:
        say(
            f"note: no policy loaded an expert (dispatch {dispatch} runs every miss where its "
            "weights live), so no cache changed after warm-up and the policies coincide"
        )
    out = {
        "trace": str(trace), "model": model, "hardware": hardware, "dispatch": dispatch,
        "capacity_experts": capacity, "decode_runs": runs, "policies": results,
    }  # fmt: skip
    json_path.write_text(json.dumps(out, indent=1))
    if any(r["executor_violations"] for r in results.values()):
        raise typer.Exit(EXIT_VIOLATIONS)


@app.command(
    epilog="Benchmarks: "
    + "; ".join(f"{name} ({what})" for name, what in BENCHMARK_HELP.items())
    + "."
)
def bench(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(BENCHMARK_HELP)}.")],
    json_path: Annotated[Path, typer.Option("--json", help="Where to write the JSON result.")],
    quick: Annotated[bool, typer.Option(help="A short run (seconds, not minutes).")] = False,
    plot_path: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the benchmark's chart (PNG).")
    ] = None,
    quiet: QuietOption = False,
    trace_paths: Annotated[
        list[Path] | None,
        typer.Option("--trace", help="Run on this per-token trace instead (repeatable)."),
    ] = None,
) -> None:
    """Run one benchmark and write {"benchmark", "rows", "summary"} as JSON."""
    import inspect

    from bench import BENCHMARKS
    from bench.common import reporting

    if name not in BENCHMARKS:
        note(f"error: unknown benchmark '{name}'; known: {', '.join(BENCHMARKS)}")
        raise typer.Exit(EXIT_BAD_INPUT)
    from hwmodel.routing_traces import traces_dir

    traces = traces_dir()
    missing_traces = (
        f"error: bench {name} reads the real routing traces, which are not at {traces}; set "
        "MOESCHED_TRACES_DIR to their folder (in Docker: -v PATH/shared/traces:/traces:ro)"
    )
    if name not in BENCHMARKS_WITHOUT_TRACES and not traces.is_dir():
        note(missing_traces)
        raise typer.Exit(EXIT_BAD_INPUT)
    if trace_paths:
        if "traces" not in inspect.signature(BENCHMARKS[name]).parameters:
            note(f"error: --trace: benchmark '{name}' runs on its own traces only")
            raise typer.Exit(EXIT_BAD_INPUT)
        for path in trace_paths:
            if not path.is_file():
                note(f"error: --trace: {path} is not a file")
                raise typer.Exit(EXIT_BAD_INPUT)
    label = f"bench {name}" + (" --quick" if quick else "")
    # A trace the benchmark cannot use is bad input; its message names the trace.
    with bad_input(None):
        try:
            with working(quiet, label) as reporter, reporting(reporter):
                if trace_paths:
                    result = BENCHMARKS[name](quick, traces=trace_paths)  # type: ignore[call-arg]
                else:
                    result = BENCHMARKS[name](quick)
        except FileNotFoundError as exc:
            if exc.filename is None or not Path(exc.filename).is_relative_to(traces):
                raise
            note(f"{missing_traces} ({Path(exc.filename).name} is missing)")
            raise typer.Exit(EXIT_BAD_INPUT) from None
    result.write(json_path)
    if plot_path is not None:
        from bench.plots import plot as draw

        draw(result.to_json(), plot_path)
    say(json.dumps(result.summary, indent=2))


@app.command()
def plot(
    result: Annotated[Path, typer.Argument(help="A benchmark's JSON result.")],
    out: Annotated[Path, typer.Option(help="Where to write the PNG.")],
) -> None:
    """Draw a benchmark's chart from its JSON result (no re-run)."""
    with bad_input(result):
        data = read_json(result)
        from bench.plots import plot as draw

        draw(data, out)
    say(f"wrote {out}")


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
    quiet: QuietOption = False,
) -> None:
    """Run a design-space sweep on Ray, one point a task, rows streamed to a CSV file.

    Exit 1 when a point failed or broke an executor check, 2 on a bad spec."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from bench.sweep import load_spec, plot_sweep, run_sweep

    with bad_input(spec_path):
        spec = load_spec(spec_path)
    bar_display = Progress(
        "{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=quiet or not sys.stderr.isatty(),
    )  # fmt: skip
    with bar_display:
        bar = bar_display.add_task(f"sweep {spec.name}", total=None)
        got = run_sweep(
            spec, out, address=address, num_cpus=workers,
            on_row=lambda done, total: bar_display.update(bar, completed=done, total=total),
        )  # fmt: skip
    say(
        f"{got.total} points: {got.reused} reused, {got.computed} computed, {got.failed} failed "
        f"in {got.wall_s:.1f} s; rows in {out}"
    )
    if plot_dir is not None:
        for path in plot_sweep(spec, got.rows, plot_dir):
            say(f"wrote {path}")
    if any(r["status"] != "ok" for r in got.rows):
        raise typer.Exit(EXIT_VIOLATIONS)


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: settings, loopback).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default: MOESCHED_PORT, else 8000).")
    ] = None,
) -> None:
    """Start the HTTP service (Swagger UI at /docs)."""
    import uvicorn

    from service.http_protocol import MAX_HEADER_BYTES, best_protocol
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
        http=best_protocol(),
        timeout_keep_alive=int(max(1, settings.keep_alive_s)),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,  # request line + headers (h11)
        limit_concurrency=settings.max_connections,
    )


if __name__ == "__main__":
    app()
