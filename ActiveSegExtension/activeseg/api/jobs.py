"""``/v1/jobs``: start train / rank / pseudo-label jobs (202), read their status and log, cancel them."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Path, Query, Response
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from activeseg.jobs.runner import read_log_tail
from .context import ServerContext, get_context
from .errors import ERROR_RESPONSES
from .schemas import JobListOut, JobOut, RankParams, TrainParams, job_out

__all__ = ["router"]

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

JOB_ID = Path(..., pattern="^[0-9a-f]{32}$", description="job id (32 hex digits)")


def _started(context: ServerContext, response: Response, kind: str, params: dict) -> JobOut:
    job = context.jobs.start(kind, params)
    response.headers["Location"] = f"/v1/jobs/{job.job_id}"
    return job_out(job)


@router.post("/train", response_model=JobOut, status_code=202, summary="Start a training round")
def start_train(
    response: Response, params: TrainParams | None = Body(None), context: ServerContext = Depends(get_context)
) -> JobOut:
    """Train a new model version from the labelled cases (fine-tunes the active one). 409 if a job runs."""
    return _started(context, response, "train", (params or TrainParams()).model_dump())


@router.post("/rank", response_model=JobOut, status_code=202, summary="Start a ranking round")
def start_rank(
    response: Response, params: RankParams | None = Body(None), context: ServerContext = Depends(get_context)
) -> JobOut:
    """Score candidates with the active model, set the strong queue and (by default) the pseudo-label set."""
    return _started(context, response, "rank", (params or RankParams()).model_dump())


@router.post("/pseudo-label", response_model=JobOut, status_code=202, summary="Start a pseudo-labelling round")
def start_pseudo_label(response: Response, context: ServerContext = Depends(get_context)) -> JobOut:
    """Rewrite pseudo-labels for the weak set with the active model."""
    return _started(context, response, "pseudo-label", {})


def _post_only() -> None:
    """``GET /v1/jobs/train`` and the like: the path exists, the method does not (405, not a 422 about a job id)."""
    raise StarletteHTTPException(405, detail="this path only accepts POST", headers={"Allow": "POST"})


for _kind in ("train", "rank", "pseudo-label"):
    router.add_api_route(f"/{_kind}", _post_only, methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)


@router.get("", response_model=JobListOut, summary="Recent jobs, newest first")
def list_jobs(limit: int = Query(20, ge=1, le=500), context: ServerContext = Depends(get_context)) -> JobListOut:
    """Recent jobs without their logs."""
    return JobListOut(jobs=[job_out(job) for job in context.table.list(limit)])


@router.get("/{job_id}", response_model=JobOut, summary="A job's status, progress and log tail")
def get_job(
    job_id: str = JOB_ID,
    log_lines: int = Query(20, ge=0, le=1000, description="lines of the log tail to include"),
    context: ServerContext = Depends(get_context),
) -> JobOut:
    """Phase, epoch, step, loss, validation Dice, ETA, log tail and error text."""
    job = context.table.get(job_id)
    return job_out(job, read_log_tail(context.table.log_path(job_id), log_lines))


# response_class=Response (no media type) keeps the documented error bodies application/json.
@router.get(
    "/{job_id}/log",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="A job's log (tail)",
)
def get_job_log(
    job_id: str = JOB_ID, lines: int = Query(200, ge=1, le=10000), context: ServerContext = Depends(get_context)
) -> PlainTextResponse:
    """The last ``lines`` lines of the job's log as plain text."""
    context.table.get(job_id)
    return PlainTextResponse("\n".join(read_log_tail(context.table.log_path(job_id), lines, max_bytes=4 << 20)) + "\n")


@router.post("/{job_id}/cancel", response_model=JobOut, status_code=202, summary="Cancel a running job")
def cancel_job(job_id: str = JOB_ID, context: ServerContext = Depends(get_context)) -> JobOut:
    """Stop the job's process tree (SIGTERM, then SIGKILL after a grace period); poll until ``cancelled``."""
    return job_out(context.jobs.cancel(job_id))
