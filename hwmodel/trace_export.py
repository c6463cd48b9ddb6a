"""Export a simulated timeline: Chrome trace event JSON (Perfetto, chrome://tracing) and Gantt.

Both take a ``Report`` simulated with ``include_timeline=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwmodel.report import Report


def chrome_trace(report: Report) -> dict[str, Any]:
    """The timeline as a Chrome trace: one thread per resource lane, times in microseconds.

    Returns:
        ``{"traceEvents": [...], "displayTimeUnit": "ns"}`` with complete ("X") events and
        thread-name metadata events.
    """
    us_per_cycle = 1e6 / report.clock_hz
    lanes = sorted({(s.resource_id, s.lane) for s in report.timeline})
    tid = {lane: i + 1 for i, lane in enumerate(lanes)}
    events: list[dict[str, Any]] = [
        {
            "name": "thread_name",
            "ph": "M",
            "pid": 1,
            "tid": tid[lane],
            "args": {"name": lane[0] if lane[1] == 0 else f"{lane[0]}#{lane[1]}"},
        }
        for lane in lanes
    ]
    for s in report.timeline:
        events.append(
            {
                "name": s.label,
                "cat": f"layer{s.layer}",
                "ph": "X",
                "pid": 1,
                "tid": tid[(s.resource_id, s.lane)],
                "ts": s.start_cycle * us_per_cycle,
                "dur": (s.end_cycle - s.start_cycle) * us_per_cycle,
                "args": {"task_id": s.task_id, "micro_batch": s.micro_batch},
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ns"}


def gantt(report: Report, path: str | Path, title: str = "") -> None:
    """Draw the timeline as a Gantt chart (one row per resource lane); format from the suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = sorted({(s.resource_id, s.lane) for s in report.timeline})
    row = {lane: i for i, lane in enumerate(lanes)}
    layers = sorted({s.layer for s in report.timeline if s.layer is not None})
    cmap = plt.get_cmap("tab20")
    color = {layer: cmap(i % 20) for i, layer in enumerate(layers)}
    ms_per_cycle = 1e3 / report.clock_hz
    fig, ax = plt.subplots(figsize=(12, 0.45 * len(lanes) + 1.5))
    for s in report.timeline:
        ax.barh(
            row[(s.resource_id, s.lane)],
            (s.end_cycle - s.start_cycle) * ms_per_cycle,
            left=s.start_cycle * ms_per_cycle,
            color=color[s.layer] if s.layer is not None else "grey",
            edgecolor="black",
            linewidth=0.3,
        )
    ax.set_yticks(range(len(lanes)), [r if ln == 0 else f"{r}#{ln}" for r, ln in lanes])
    ax.invert_yaxis()
    ax.set_xlabel("time (ms)")
    ax.set_title(title or f"makespan {report.makespan_s * 1e3:.3f} ms")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
