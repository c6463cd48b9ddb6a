"""Export a simulated timeline: Perfetto (Chrome trace event JSON), a Gantt chart (PNG/SVG) and
an interactive HTML timeline.

All take a ``Report`` simulated with ``include_timeline=True``. Everything shown is named in
words: resources by kind ("GPU gpu", "NDP unit ndp0", "link pcie_down"), tasks by kind ("expert
shard", "expert weights loaded", ...), layers as "MoE layer k".
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

from hwmodel.plan import Plan, TransferTask
from hwmodel.report import Report, TaskSpan
from hwmodel.spec import Hardware, ModelSpec

# the first word of a span's label -> the task kind in words
TASK_KINDS: dict[str, str] = {
    "expert": "expert shard (compute)",
    "shared_expert": "shared expert (compute)",
    "attention": "attention (compute)",
    "reduce": "partial-sum reduction (compute)",
    "activations": "activations sent",
    "partial_sums": "partial sums returned",
    "weights": "expert weights loaded",
    "evict": "weights evicted",
}
DEVICE_KINDS = {"gpu": "GPU", "ndp": "NDP unit", "cpu": "host CPU"}
_PROCESSES = {"device": (1, "compute devices"), "link": (2, "links"), "memory": (3, "memories")}


def task_kind(span: TaskSpan) -> str:
    """The span's task kind in words (``TASK_KINDS``)."""
    first = span.label.split(" ", 1)[0]
    return TASK_KINDS.get(first, first)


def _resource_kinds(report: Report) -> dict[str, str]:
    """resource id -> 'device', 'link' or 'memory'."""
    kinds = {d.device_id: "device" for d in report.devices}
    kinds |= {lk.link_id: "link" for lk in report.links}
    for s in report.timeline:
        kinds.setdefault(s.resource_id, "memory")
    return kinds


def resource_names(report: Report) -> dict[tuple[str, int], str]:
    """(resource id, lane) -> its name in words: 'GPU gpu', 'NDP unit ndp0', 'link pcie_down
    (lane 1)', 'memory dimm0'."""
    device_kind = {d.device_id: DEVICE_KINDS.get(d.kind, d.kind) for d in report.devices}
    kinds = _resource_kinds(report)
    out = {}
    for rid, lane in sorted({(s.resource_id, s.lane) for s in report.timeline}):
        kind = kinds[rid]
        name = f"{device_kind[rid]} {rid}" if kind == "device" else f"{kind} {rid}"
        out[(rid, lane)] = name if lane == 0 else f"{name} (lane {lane})"
    return out


def chrome_trace(
    report: Report,
    plan: Plan | None = None,
    hardware: Hardware | None = None,
    model: ModelSpec | None = None,
) -> dict[str, Any]:
    """The timeline as a Perfetto / Chrome trace; times in microseconds.

    One process per resource kind (compute devices, links, memories), one named thread per
    resource lane, one complete ("X") event per task (args: task id, kind in words, MoE layer,
    micro-batch). A counter track per link counts its busy lanes. With ``plan``: a flow arrow
    ("s" -> "f") for every dependency (``after``) between two tasks that ran. With ``plan``,
    ``hardware`` and ``model`` too: a counter track per memory of the weight bytes loaded into it
    (minus those evicted) since cycle 0.

    Returns:
        ``{"traceEvents": [...], "displayTimeUnit": "ns"}``.
    """
    us_per_cycle = 1e6 / report.clock_hz
    kinds = _resource_kinds(report)
    names = resource_names(report)
    tid = {lane: i + 1 for i, lane in enumerate(names)}
    events: list[dict[str, Any]] = []
    for kind, (pid, pname) in _PROCESSES.items():
        if kind in kinds.values() or (kind == "memory" and model is not None):
            events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": pname}})
            events.append(
                {"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}}
            )
    for lane, name in names.items():
        pid = _PROCESSES[kinds[lane[0]]][0]
        events.append(
            {"name": "thread_name", "ph": "M", "pid": pid, "tid": tid[lane], "args": {"name": name}}
        )
    where: dict[str, TaskSpan] = {}
    for s in report.timeline:
        where[s.task_id] = s
        events.append(
            {
                "name": s.label,
                "cat": task_kind(s),
                "ph": "X",
                "pid": _PROCESSES[kinds[s.resource_id]][0],
                "tid": tid[(s.resource_id, s.lane)],
                "ts": s.start_cycle * us_per_cycle,
                "dur": (s.end_cycle - s.start_cycle) * us_per_cycle,
                "args": {
                    "task_id": s.task_id,
                    "kind": task_kind(s),
                    "moe_layer": s.layer,
                    "micro_batch": s.micro_batch,
                },
            }
        )
    events += _link_counters(report, kinds, us_per_cycle)
    if plan is not None:
        events += _flows(plan, where, kinds, tid, us_per_cycle)
        if hardware is not None and model is not None:
            events += _memory_counters(plan, where, hardware, model, us_per_cycle)
    return {"traceEvents": events, "displayTimeUnit": "ns"}


def _link_counters(
    report: Report, kinds: dict[str, str], us_per_cycle: float
) -> list[dict[str, Any]]:
    """Per link, the number of lanes busy after every change."""
    changes: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for s in report.timeline:
        if kinds[s.resource_id] == "link":
            changes[s.resource_id][s.start_cycle] += 1
            changes[s.resource_id][s.end_cycle] -= 1
    out = []
    for link, delta in sorted(changes.items()):
        busy = 0
        for cycle in sorted(delta):
            busy += delta[cycle]
            out.append(
                {
                    "name": f"link {link}: lanes busy",
                    "ph": "C",
                    "pid": _PROCESSES["link"][0],
                    "ts": cycle * us_per_cycle,
                    "args": {"lanes busy": busy},
                }
            )
    return out


def _flows(
    plan: Plan,
    where: dict[str, TaskSpan],
    kinds: dict[str, str],
    tid: dict[tuple[str, int], int],
    us_per_cycle: float,
) -> list[dict[str, Any]]:
    """A flow arrow from the end of each dependency to the start of the task that waited."""
    out: list[dict[str, Any]] = []
    flow_id = 0
    for task in plan.tasks:
        dst = where.get(task.id)
        if dst is None:
            continue
        for dep in task.after:
            src = where.get(dep)
            if src is None:
                continue
            flow_id += 1
            end_us = src.end_cycle * us_per_cycle
            inside = min(0.5 * (src.end_cycle - src.start_cycle) * us_per_cycle, 1e-3)
            common = {"name": "depends on", "cat": "dependency", "id": flow_id}
            out.append(
                common
                | {
                    "ph": "s",
                    "pid": _PROCESSES[kinds[src.resource_id]][0],
                    "tid": tid[(src.resource_id, src.lane)],
                    "ts": end_us - inside,
                }
            )
            out.append(
                common
                | {
                    "ph": "f",
                    "bp": "e",
                    "pid": _PROCESSES[kinds[dst.resource_id]][0],
                    "tid": tid[(dst.resource_id, dst.lane)],
                    "ts": dst.start_cycle * us_per_cycle,
                }
            )
    return out


def _memory_counters(
    plan: Plan,
    where: dict[str, TaskSpan],
    hardware: Hardware,
    model: ModelSpec,
    us_per_cycle: float,
) -> list[dict[str, Any]]:
    """Per memory, weight bytes loaded (at each load's end) minus evicted, since cycle 0."""
    memory_of = {d.id: d.memory_id for d in hardware.devices}
    width = model.expert_ffn_size

    def slice_bytes(start: int, end: int | None) -> float:
        return model.expert_bytes() * ((width if end is None else end) - start) / width

    delta: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for task in plan.tasks:
        span = where.get(task.id)
        if span is None:
            continue
        if isinstance(task, TransferTask) and task.payload == "weights" and task.weights:
            mem = memory_of.get(task.dst_device_id)
            if mem is not None:
                w = task.weights
                delta[mem][span.end_cycle] += slice_bytes(w.ffn_start, w.ffn_end)
        elif task.kind == "evict":
            w = task.weights
            delta[task.memory_id][span.end_cycle] -= slice_bytes(w.ffn_start, w.ffn_end)
    out = []
    for mem, changes in sorted(delta.items()):
        level = 0.0
        out.append(_memory_event(mem, 0, 0.0))
        for cycle in sorted(changes):
            level += changes[cycle]
            out.append(_memory_event(mem, cycle * us_per_cycle, level))
    return out


def _memory_event(memory: str, ts: float, level: float) -> dict[str, Any]:
    return {
        "name": f"memory {memory}: weights loaded (MB)",
        "ph": "C",
        "pid": _PROCESSES["memory"][0],
        "ts": ts,
        "args": {"MB loaded since start": level / 1e6},
    }


def _kind_colors() -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return {kind: cmap(i % 10) for i, kind in enumerate(dict.fromkeys(TASK_KINDS.values()))}


def matplotlib_hex(rgba: Any) -> str:
    """A matplotlib colour as '#rrggbb'."""
    from matplotlib.colors import to_hex

    hex_color: str = to_hex(rgba)
    return hex_color


def gantt(
    report: Report, path: str | Path | IO[bytes], title: str = "", fmt: str | None = None
) -> None:
    """Draw the timeline as a Gantt chart: one row per resource lane named in words, bars
    coloured by task kind (legend in words), each wide bar marked with its MoE layer.

    ``fmt`` (png, svg) defaults to the path's suffix.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    names = resource_names(report)
    row = {lane: i for i, lane in enumerate(names)}
    color = _kind_colors()
    ms_per_cycle = 1e3 / report.clock_hz
    fig, ax = plt.subplots(figsize=(13, 0.45 * len(names) + 2.2))
    used: dict[str, Any] = {}
    span_ms = max(report.makespan_cycles * ms_per_cycle, 1e-12)
    for s in report.timeline:
        kind = task_kind(s)
        used[kind] = color.get(kind, "grey")
        width = (s.end_cycle - s.start_cycle) * ms_per_cycle
        y = row[(s.resource_id, s.lane)]
        ax.barh(y, width, left=s.start_cycle * ms_per_cycle, color=used[kind],
                edgecolor="black", linewidth=0.3)  # fmt: skip
        if s.layer is not None and width > 0.04 * span_ms:
            ax.text(s.start_cycle * ms_per_cycle + width / 2, y, f"L{s.layer}",
                    ha="center", va="center", fontsize=7)  # fmt: skip
    ax.set_yticks(range(len(names)), list(names.values()))
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(title or f"Simulated timeline, makespan {report.makespan_s * 1e3:.3f} ms")
    handles = [Patch(facecolor=c, edgecolor="black", label=k) for k, c in used.items()]
    handles.append(Patch(facecolor="white", edgecolor="white", label="Lk on a bar: MoE layer k"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.2 / len(names)),
              ncol=min(4, len(handles)), fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120, format=fmt, bbox_inches="tight")
    plt.close(fig)


def gantt_bytes(report: Report, fmt: str, title: str = "") -> bytes:
    """``gantt`` into memory: PNG or SVG bytes."""
    buf = io.BytesIO()
    gantt(report, buf, title, fmt)
    return buf.getvalue()


def timeline_html(report: Report, plotly_js_url: str, title: str = "") -> str:
    """An interactive timeline page (plotly: zoom, pan, hover for each task's details); the
    plotly script is loaded from ``plotly_js_url`` (served locally, no CDN)."""
    import plotly.graph_objects as go

    names = resource_names(report)
    color = {k: matplotlib_hex(v) for k, v in _kind_colors().items()}
    ms = 1e3 / report.clock_hz
    by_kind: dict[str, list[TaskSpan]] = defaultdict(list)
    for s in report.timeline:
        by_kind[task_kind(s)].append(s)
    fig = go.Figure()
    for kind, spans in by_kind.items():
        fig.add_trace(
            go.Bar(
                name=kind,
                orientation="h",
                y=[names[(s.resource_id, s.lane)] for s in spans],
                base=[s.start_cycle * ms for s in spans],
                x=[(s.end_cycle - s.start_cycle) * ms for s in spans],
                marker_color=color.get(kind, "grey"),
                hovertext=[
                    f"{s.label}<br>task {s.task_id}<br>MoE layer {s.layer}, micro-batch "
                    f"{s.micro_batch}<br>{s.start_cycle * ms:.4f} - {s.end_cycle * ms:.4f} ms"
                    for s in spans
                ],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title=title or f"Simulated timeline, makespan {report.makespan_s * 1e3:.3f} ms",
        barmode="overlay",
        xaxis_title="time (ms)",
        yaxis={"categoryorder": "array", "categoryarray": list(names.values())[::-1]},
        legend_title_text="task kind",
        height=max(300, 40 * len(names) + 160),
    )
    html: str = fig.to_html(include_plotlyjs=plotly_js_url, full_html=True)
    return html
