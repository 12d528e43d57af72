"""``/v1/models``: model versions with metrics, activation (rollback), and the learning curve."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path

from .context import ServerContext, get_context
from .errors import ERROR_RESPONSES
from .schemas import CurveOut, CurvePoint, ModelListOut, ModelOut, model_out

__all__ = ["router"]

router = APIRouter(tags=["models"], responses=ERROR_RESPONSES)

VERSION = Path(..., ge=1, le=2**31 - 1, description="model version number")


@router.get("/models", response_model=ModelListOut, summary="All model versions, oldest first")
def list_models(context: ServerContext = Depends(get_context)) -> ModelListOut:
    """Every version with its metrics; ``active`` names the one ranking and pseudo-labelling use."""
    store = context.store
    active = store.active_version()
    return ModelListOut(active=active, models=[model_out(record, active) for record in store.models()])


@router.get("/models/{version}", response_model=ModelOut, summary="One model version")
def get_model(version: int = VERSION, context: ServerContext = Depends(get_context)) -> ModelOut:
    """One version. 404 ``model_version`` if unknown."""
    store = context.store
    return model_out(store.model(version), store.active_version())


@router.post("/models/{version}/activate", response_model=ModelOut, summary="Make a version active (rollback)")
def activate_model(version: int = VERSION, context: ServerContext = Depends(get_context)) -> ModelOut:
    """Roll back (or forward) to an existing version; later versions are kept. Re-rank to refresh the queue."""
    store = context.store
    record = store.activate(version)
    return model_out(record, store.active_version())


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
