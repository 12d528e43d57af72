"""Pydantic models of the ``/v1`` API's JSON bodies (the OpenAPI document is generated from them).

Times are Unix seconds (float). M-DSC and confidence are in [0, 1]; foreground volume in millilitres.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from activeseg.store.datastore import CaseRecord, ModelRecord, ScoreRecord
from activeseg.jobs.runner import JobRecord

__all__ = [
    "ErrorDetail",
    "ErrorOut",
    "HealthOut",
    "InfoOut",
    "CaseOut",
    "CaseListOut",
    "QueueItem",
    "QueueOut",
    "NextOut",
    "JobProgress",
    "JobOut",
    "JobListOut",
    "TrainParams",
    "RankParams",
    "ModelOut",
    "ModelListOut",
    "ActivationOut",
    "CurvePoint",
    "CurveOut",
    "case_out",
    "job_out",
    "model_out",
]


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine ``code`` and a human ``message`` naming the bad value."""

    code: str
    message: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorDetail


class HealthOut(BaseModel):
    """Liveness."""

    status: str = "ok"


class InfoOut(BaseModel):
    """The backend at a glance."""

    name: str = "activeseg"
    version: str
    api_version: str = "v1"
    device: str = Field(description="where jobs run: 'cpu' or 'cuda:0 (<GPU name>)'")
    labels: dict[str, str] = Field(description="label value (as a string) -> class name; 0 is background")
    label_colours: dict[str, list[float]] = Field(
        default_factory=dict,
        description="label value -> RGB in [0, 1] of every label: the datastore's choice, "
                    "else the palette its .seg.nrrd files use")
    label_codes: dict[str, str] = Field(
        default_factory=dict, description="label value -> coded concept 'scheme^value^meaning' (e.g. SNOMED CT), where known")
    active_model: int | None
    counts: dict[str, int] = Field(description="cases per state, plus 'total' and 'val'")
    running_job: str | None = Field(description="id of the running job, if any")
    auth_required: bool
    max_upload_bytes: int


class CaseOut(BaseModel):
    """One case with its scores under the active model (null before ranking)."""

    case_id: str
    display_name: str | None = Field(
        None, description="a name the annotator recognises where the datastore has one (DICOM: series description "
        "and study date), else null (show case_id); never patient name, id or birth date")
    split: str
    state: str
    has_label: bool
    label_source: str | None
    no_finding: bool
    has_pseudo: bool
    pseudo_model: int | None
    lease_holder: str | None
    lease_expires: float | None
    mdsc: float | None = None
    confidence: float | None = None
    foreground_ml: float | None = None
    route: str | None = None


class CaseListOut(BaseModel):
    """Cases ordered by id."""

    active_model: int | None
    cases: list[CaseOut]


class QueueItem(BaseModel):
    """A queued case and its 1-based rank (1 = most uncertain)."""

    rank: int
    case: CaseOut


class QueueOut(BaseModel):
    """The strong queue, most uncertain first (unlabelled validation cases lead: validation Dice needs them)."""

    active_model: int | None
    items: list[QueueItem]


class NextOut(BaseModel):
    """The case just leased to the annotator, or null when nothing is left to lease."""

    case: CaseOut | None


class EpochPoint(BaseModel):
    """One finished epoch of a training job."""

    epoch: int | None = None
    loss: float | None = None
    val_dice: float | None = None


class JobProgress(BaseModel):
    """The latest progress event of a job (fields a phase does not report are null)."""

    model_config = {"extra": "allow"}

    phase: str | None = Field(
        None, description="starting, preprocess, train, validate, compare_parent, rank, write, pseudo-label, done")
    phase_label: str | None = Field(None, description="the phase in words, for a status line")
    fraction: float | None = Field(None, ge=0.0, le=1.0, description="share of the whole job done (all phases)")
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    val_dice: float | None = None
    eta_s: float | None = Field(None, description="seconds left in the whole job; null while it cannot be estimated")
    phase_eta_s: float | None = Field(None, description="seconds left in the current phase, as the engine estimates")
    elapsed_s: float | None = Field(None, description="seconds since the job started")
    history: list[EpochPoint] = Field(default_factory=list, description="this job's epochs so far (live curve)")


class JobOut(BaseModel):
    """A job's status."""

    job_id: str
    kind: str
    status: str = Field(description="running, succeeded, failed, cancelled or interrupted")
    params: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    updated: float
    cancel_requested: bool
    progress: JobProgress
    result: dict[str, Any] | None
    error: str | None
    log_tail: list[str] = Field(default_factory=list)


class JobListOut(BaseModel):
    """Most recent jobs first."""

    jobs: list[JobOut]


class TrainParams(BaseModel):
    """Options of a training job."""

    then_rank: bool = Field(False, description="rank the cases with the new model when training ends")
    write_pseudo: bool = Field(True, description="with then_rank: also rebuild the pseudo-label set")


class RankParams(BaseModel):
    """Options of a ranking job."""

    write_pseudo: bool = Field(True, description="also rebuild the pseudo-label set (weak route)")


class ModelOut(BaseModel):
    """One model version and its metrics (as the training round wrote them)."""

    version: int
    parent: int | None
    created: float
    active: bool
    val_dice: float | None = Field(
        None, description="mean Dice in [0, 1] on the fixed validation split; null without labelled validation cases")
    val_dice_classes: dict[str, float] = Field(
        default_factory=dict, description="validation Dice per class name, in [0, 1] (empty without one)")
    metrics: dict[str, Any]


class ModelListOut(BaseModel):
    """All versions, oldest first, and which one chose the queue."""

    active: int | None
    queue_model: int | None = Field(None, description="the version whose ranking chose the queue; null before any")
    queue_stale: bool = Field(
        False, description="a model is active but did not choose the queue (after a rollback or a round without "
        "ranking): start a ranking job (POST /v1/jobs/rank) to refresh the queue, its scores and predictions")
    models: list[ModelOut]


class ActivationOut(BaseModel):
    """The answer to a rollback (or roll forward): the now-active version and what happens to the queue."""

    model: ModelOut
    queue_model: int | None = Field(description="the version whose ranking chose the queue; null before any")
    queue_stale: bool = Field(description="the queue is not the active version's (until rank_job ends)")
    rank_job: JobOut | None = Field(
        None, description="the ranking job started with the now-active version (null when the queue was already its "
        "own, or rank=false)")
    message: str = Field(description="what happened, in words")


class CurvePoint(BaseModel):
    """One point of the learning curve: a model version's round, training-set size and validation Dice."""

    version: int
    round: int | None
    n_expert: int | None
    n_pseudo: int | None
    val_dice: float | None
    final_loss: float | None
    active: bool


class CurveOut(BaseModel):
    """Validation Dice per model version, oldest first."""

    points: list[CurvePoint]


def case_out(record: CaseRecord, score: ScoreRecord | None = None, display_name: str | None = None) -> CaseOut:
    """API view of a case (``display_name``: see :meth:`ServerContext.display_names`)."""
    data = record.to_json()
    data["display_name"] = display_name or None
    if score is not None:
        data.update(mdsc=score.mdsc, confidence=score.confidence, foreground_ml=score.foreground_ml, route=score.route)
    return CaseOut(**data)


def job_out(job: JobRecord, log_tail: list[str] | None = None) -> JobOut:
    """API view of a job."""
    progress = {k: v for k, v in job.progress.items() if not isinstance(v, (dict, list)) or k == "history"}
    return JobOut(
        job_id=job.job_id,
        kind=job.kind,
        status=job.status,
        params=job.params,
        created=job.created,
        started=job.started,
        finished=job.finished,
        updated=job.updated,
        cancel_requested=job.cancel_requested,
        progress=JobProgress(**progress),
        result=job.result,
        error=job.error,
        log_tail=log_tail or [],
    )


def model_out(record: ModelRecord, active: int | None) -> ModelOut:
    """API view of a model version (validation Dice taken from its metrics: ``val_dice`` {"mean", class names})."""
    dice = record.metrics.get("val_dice")
    dice = dice if isinstance(dice, dict) else {}
    numbers = {str(k): float(v) for k, v in dice.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return ModelOut(
        version=record.version, parent=record.parent, created=record.created, active=record.version == active,
        val_dice=numbers.pop("mean", None), val_dice_classes=numbers, metrics=record.metrics,
    )
