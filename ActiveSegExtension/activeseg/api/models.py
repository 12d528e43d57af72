"""``/v1/models``: model versions with validation Dice and metrics, activation (rollback, which re-ranks), and the
learning curve."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Path, Query

from activeseg.jobs.runner import JobConflictError
from .context import ServerContext, get_context
from .errors import ERROR_RESPONSES
from .schemas import (ActivationOut, CurveOut, CurvePoint, ModelListOut, ModelOut, RankParams, job_out,
                      model_out)

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)

VERSION = Path(..., ge=1, le=2**31 - 1, description="model version number")


@router.get("/models", response_model=ModelListOut, summary="All model versions, oldest first")
def list_models(context: ServerContext = Depends(get_context)) -> ModelListOut:
    """Every version with its validation Dice and metrics; ``active`` names the one ranking and pseudo-labelling use,
    ``queue_model`` the one whose ranking chose the queue (``queue_stale`` when they differ)."""
    store = context.store
    active = store.active_version()
    return ModelListOut(active=active, queue_model=store.queue_model(), queue_stale=store.queue_stale(),
                        models=[model_out(record, active) for record in store.models()])


@router.get("/models/{version}", response_model=ModelOut, summary="One model version")
def get_model(version: int = VERSION, context: ServerContext = Depends(get_context)) -> ModelOut:
    """One version. 404 ``model_version`` if unknown."""
    store = context.store
    return model_out(store.model(version), store.active_version())


@router.post("/models/{version}/activate", response_model=ActivationOut, summary="Make a version active (rollback)")
def activate_model(
    version: int = VERSION,
    rank: bool = Query(True, description="start a ranking job with the version when the queue is not its own"),
    context: ServerContext = Depends(get_context),
) -> ActivationOut:
    """Roll back (or forward) to an existing version; later versions are kept.

    The queue was chosen by another version's ranking, so it is re-ranked with this one (``rank_job``): a new queue,
    its scores and starting predictions, and the pseudo-labels. With ``rank=false`` the queue is left and reported
    stale until a ranking job runs. Refused with 409 ``job_running`` (nothing changed) while a job runs: a training
    round would activate its own version when it ends, and a ranking would set the queue with the version it loaded.
    """
    running = context.table.running()
    if running is not None:
        raise JobConflictError(f"job {running.job_id} ({running.kind}) is running; wait for it or cancel it, "
                               "then roll back")
    store = context.store
    previous = store.queue_model()
    record = store.activate(version)
    job = None
    if rank and store.queue_stale():
        try:
            job = context.jobs.start("rank", RankParams().model_dump())
        except JobConflictError:  # a job started between the check and now: the queue stays stale, and says so
            job = None
    stale = store.queue_stale()
    if job is not None:
        message = f"model v{version} is active; ranking the cases with it (the queue was chosen by v{previous})" \
            if previous is not None else f"model v{version} is active; ranking the cases with it"
    elif stale:
        message = (f"model v{version} is active; the queue was chosen by "
                   f"{'v' + str(previous) if previous is not None else 'no model'}: rank to refresh it")
    else:
        message = f"model v{version} is active; the queue is already its own"
    logger.info("%s", message)
    return ActivationOut(model=model_out(record, store.active_version()), queue_model=store.queue_model(),
                         queue_stale=stale, rank_job=job_out(job) if job is not None else None, message=message)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _curve_point(version: int, metrics: dict[str, Any], active: bool) -> CurvePoint:
    dice = metrics.get("val_dice")
    losses = metrics.get("loss_history") or []
    return CurvePoint(
        version=version,
        round=metrics.get("round") if isinstance(metrics.get("round"), int) else None,
        n_expert=metrics.get("n_expert") if isinstance(metrics.get("n_expert"), int) else None,
        n_pseudo=metrics.get("n_pseudo") if isinstance(metrics.get("n_pseudo"), int) else None,
        val_dice=_number(dice.get("mean")) if isinstance(dice, dict) else _number(dice),
        final_loss=_number(losses[-1]) if isinstance(losses, list) and losses else None,
        active=active,
    )


@router.get("/learning-curve", response_model=CurveOut, summary="Validation Dice per model version")
def learning_curve(context: ServerContext = Depends(get_context)) -> CurveOut:
    """One point per version (round, labelled cases, validation Dice, final loss), oldest first.

    Versions that are copies of their parent (registered by older backends when a round kept the previous
    model: their metrics describe weights that were discarded) are left out.
    """
    store = context.store
    active = store.active_version()
    return CurveOut(points=[_curve_point(r.version, r.metrics, r.version == active) for r in store.models()
                            if not r.metrics.get("kept_parent")])
