"""Answers as pictures: `?format=png|svg|perfetto|html` on the solve routes.

png/svg: a Gantt chart with its legend in words; perfetto: the Perfetto trace (process and
thread names, dependency arrows, link and memory counter tracks); html: an interactive plotly
timeline whose script is served from this server (no CDN).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import Query, Response

from hwmodel.spec import Hardware, ModelSpec
from hwmodel.trace_export import chrome_trace, gantt_bytes, timeline_html

PictureFormat = Literal["json", "png", "svg", "perfetto", "html"]
PERFETTO_MEDIA_TYPE = "application/vnd.moesched.perfetto+json"  # Chrome trace event JSON
PLOTLY_JS_URL = "/static/plotly/plotly.min.js"

FormatQuery = Annotated[
    PictureFormat,
    Query(
        description="json (default): the answer. png or svg: a Gantt chart of the simulated "
        "timeline, one row per device or link, bars coloured by task kind, legend in words. "
        "perfetto: a Perfetto trace (open it at ui.perfetto.dev or in Perfetto's trace "
        "processor). html: an interactive timeline page (zoom, hover for each task)."
    ),
]

PICTURE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The answer (JSON), or with ?format= its timeline as a picture.",
        "content": {
            "image/png": {},
            "image/svg+xml": {},
            "text/html": {},
            PERFETTO_MEDIA_TYPE: {},
        },
    }
}


def render(
    response: Any, fmt: str, what: str, hardware: Hardware, model: ModelSpec
) -> tuple[bytes, str, str]:
    """(body, media type, file name) of the picture of a solved ``response`` (simulated with
    its timeline)."""
    report = response.report
    s = response.summary
    title = (
        f"moesched {what}: {s.status}, makespan {s.makespan_ms:.3f} ms"
        if s is not None
        else f"moesched {what}"
    )
    if fmt == "png":
        return gantt_bytes(report, "png", title), "image/png", f"moesched-{what}.png"
    if fmt == "svg":
        return gantt_bytes(report, "svg", title), "image/svg+xml", f"moesched-{what}.svg"
    if fmt == "html":
        page = timeline_html(report, PLOTLY_JS_URL, title)
        return page.encode(), "text/html; charset=utf-8", f"moesched-{what}.html"
    trace = chrome_trace(report, response.plan, hardware, model)
    return json.dumps(trace).encode(), PERFETTO_MEDIA_TYPE, f"moesched-{what}.perfetto.json"


def as_response(rendered: tuple[bytes, str, str]) -> Response:
    """The HTTP answer for ``render``'s output (HTML inline, the others as named files)."""
    body, media, name = rendered
    headers = (
        {}
        if media.startswith("text/html")
        else {"Content-Disposition": f'inline; filename="{name}"'}
    )
    return Response(body, media_type=media, headers=headers)
