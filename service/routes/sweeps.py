"""Design-space sweeps as jobs: submit a spec, poll progress and rows, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, Field

from bench.sweep import SweepSpec
from service.errors import ErrorResponse
from service.sweep_jobs import SweepJob, SweepJobs

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorResponse, "description": "No such sweep."},
    422: {"model": ErrorResponse, "description": "Invalid spec, or more points than allowed."},
    503: {"model": ErrorResponse, "description": "Enough sweeps are running already."},
}
EXAMPLE = {
    "name": "cache_vs_dimms",
    "kind": "decode",
    "base": {"model": "deepseek-v2-lite", "trace": "esft-law", "prompt_tokens": 16,
             "decode_steps": 2},
    "axes": {"hardware": ["gpu-ndp-2dimm", "gpu-ndp-4dimm"], "cache_share": [0.1, 0.3]},
}  # fmt: skip


class SweepStatus(BaseModel):
    """A sweep job: its state, progress and (when asked) the rows finished so far."""

    id: str = Field(description="Job id.")
    name: str = Field(description="The spec's name.")
    state: str = Field(description="queued, running, done, failed or cancelled.")
    points_done: int = Field(description="Points finished (reused from an earlier run included).")
    points_total: int = Field(description="Points in the sweep.")
    failed: int = Field(description="Points that raised (recorded with their error).")
    error: str = Field(description="Why the job failed, when it did.")
    elapsed_s: float = Field(description="Host seconds since the job was submitted.")
    rows: list[dict[str, Any]] = Field(description="Finished rows (empty unless rows=true).")


def jobs(request: Request) -> SweepJobs:
    manager: SweepJobs = request.app.state.sweeps
    return manager


Jobs = Annotated[SweepJobs, Depends(jobs)]


def _status(job: SweepJob, rows: bool) -> SweepStatus:
    import time

    from bench.sweep import read_rows, typed

    got = read_rows(job.out) if job.out.exists() else []
    return SweepStatus(
        id=job.id, name=job.spec.name, state=job.state, points_done=job.done,
        points_total=job.total, failed=sum(r["status"] == "error" for r in got),
        error=job.error, elapsed_s=time.monotonic() - job.started_s,
        rows=[typed(r) for r in got] if rows else [],
    )  # fmt: skip


@router.post("", response_model=SweepStatus, status_code=202, responses=_ERRORS,
             summary="Start a sweep")  # fmt: skip
def submit(
    spec: Annotated[
        SweepSpec,
        Body(
            openapi_examples={
                "tiny": {"summary": "2 DIMM counts x 2 cache sizes", "value": EXAMPLE}
            }
        ),
    ],
    manager: Jobs,
) -> SweepStatus:
    """Run a sweep in the background on Ray (the server's cluster or a local instance)."""
    return _status(manager.submit(spec), rows=False)


@router.get("/{sweep_id}", response_model=SweepStatus, responses=_ERRORS, summary="A sweep")
def status(sweep_id: str, manager: Jobs, rows: bool = True) -> SweepStatus:
    """Progress, and the rows finished so far (``rows=false`` for progress only)."""
    return _status(manager.get(sweep_id), rows)


@router.delete("/{sweep_id}", response_model=SweepStatus, responses=_ERRORS,
               summary="Cancel a sweep")  # fmt: skip
def cancel(sweep_id: str, manager: Jobs) -> SweepStatus:
    """Stop the sweep between points; finished rows stay in its file."""
    return _status(manager.cancel(sweep_id), rows=False)
