"""``/v1/queue``: the ranked strong queue and leasing its next case."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from .cases import ANNOTATOR
from .context import ServerContext, get_context
from .errors import ERROR_RESPONSES
from .schemas import NextOut, QueueOut

__all__ = ["router"]

router = APIRouter(prefix="/queue", tags=["queue"], responses=ERROR_RESPONSES)


@router.get("", response_model=QueueOut, summary="The strong queue, most uncertain first")
def get_queue(context: ServerContext = Depends(get_context)) -> Response:
    """Queued cases by ascending M-DSC under the active model, each with its lease holder (if leased) and its
    display name (where the datastore has one)."""
    # served from memory until the datastore changes (activeseg.api.hot_reads)
    return Response(context.hot.snapshot().queue_json(), media_type="application/json")


@router.post("/next", response_model=NextOut, summary="Lease the next case to an annotator")
def lease_next(annotator: str = ANNOTATOR, context: ServerContext = Depends(get_context)) -> NextOut:
    """Lease the most uncertain queued case nobody else holds (an own lease is renewed and returned first).

    ``case`` is null when every queued case is leased by others or the queue is empty.
    """
    record = context.store.lease_next(annotator)
    return NextOut(case=None if record is None else context.case_view(record))
