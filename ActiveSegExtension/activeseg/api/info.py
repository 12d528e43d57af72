"""``/v1/health`` and ``/v1/info``."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from activeseg import __version__
from activeseg.io.seg_nrrd import segment_styles
from .context import ServerContext, get_context
from .errors import ERROR_RESPONSES
from .schemas import HealthOut, InfoOut

__all__ = ["router"]

router = APIRouter(tags=["info"], responses={401: ERROR_RESPONSES[401]})


@router.get("/health", response_model=HealthOut, summary="Liveness (cheap; for launchers polling start-up)")
def health() -> HealthOut:
    """Always ``{"status": "ok"}`` while the server runs."""
    return HealthOut()


@router.get("/info", response_model=InfoOut, summary="Version, device, labels, active model, case counts")
def info(context: ServerContext = Depends(get_context)) -> InfoOut:
    """The backend at a glance (the client's server section shows it)."""
    store = context.store
    running = context.table.running()
    styles = segment_styles(store.config)  # the colours the backend's .seg.nrrd files carry
    return InfoOut(
        version=__version__,
        device=context.device(),
        labels={str(k): v for k, v in sorted(store.config.labels.items())},
        label_colours={str(k): list(style.colour) for k, style in styles.items()},
        label_codes={str(k): c for k in sorted(store.config.labels) if (c := store.config.code(k))},
        active_model=store.active_version(),
        counts=store.counts(),
        running_job=running.job_id if running else None,
        auth_required=context.token is not None,
        max_upload_bytes=context.max_upload_bytes,
    )
