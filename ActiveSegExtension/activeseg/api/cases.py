"""``/v1/cases``: case list and detail, image / label / pseudo-label downloads, leases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, Response

from activeseg.store.cases import STATES
from activeseg.errors import CaseStateError
from activeseg.io.seg_nrrd import segmentation_bytes
from .context import ServerContext, get_context
from .errors import ERROR_RESPONSES
from .schemas import CaseListOut, CaseOut

__all__ = ["router", "ANNOTATOR"]

router = APIRouter(prefix="/cases", tags=["cases"], responses=ERROR_RESPONSES)

_BINARY = {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
# The annotator's display name; required wherever a lease is involved, so a case is tied to one person.
ANNOTATOR = Query(..., min_length=1, max_length=128, description="annotator name (lease holder)")


@router.get("", response_model=CaseListOut, summary="All cases with state, scores and lease holder")
def list_cases(
    state: str | None = Query(None, description=f"only this state: one of {', '.join(STATES)}"),
    split: str | None = Query(None, pattern="^(train|val)$", description="only this split"),
    context: ServerContext = Depends(get_context),
) -> Response:
    """Cases ordered by id, with M-DSC, confidence and route under the active model, and display names."""
    # served from memory until the datastore changes (activeseg.api.hot_reads)
    if state is not None and state not in STATES:
        raise CaseStateError(f"unknown state {state!r}; use one of {list(STATES)}")
    return Response(context.hot.snapshot().cases_json(state, split), media_type="application/json")


@router.get("/{case_id}", response_model=CaseOut, summary="One case")
def get_case(case_id: str, context: ServerContext = Depends(get_context)) -> Response | CaseOut:
    """One case with its scores under the active model."""
    # from memory, as the case list
    data = context.hot.snapshot().case_json(case_id)
    if data is None:  # not a case (404/422 from the store's own checks), or one added since the snapshot
        return context.case_view(context.store.case(case_id))
    return Response(data, media_type="application/json")


@router.get("/{case_id}/image", response_class=FileResponse, responses=_BINARY, summary="The image file's bytes")
def get_image(case_id: str, context: ServerContext = Depends(get_context)) -> FileResponse:
    """The case's image exactly as stored (NIfTI or NRRD; the file name in Content-Disposition gives the format)."""
    record = context.store.case(case_id)
    suffix = record.image_path.name[len(case_id):]
    return FileResponse(record.image_path, media_type="application/octet-stream", filename=f"{case_id}{suffix}")


def _seg_response(data: bytes, name: str) -> Response:
    return Response(
        data, media_type="application/octet-stream", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/{case_id}/label", response_class=Response, responses=_BINARY, summary="The expert/accepted label as .seg.nrrd")
def get_label(case_id: str, context: ServerContext = Depends(get_context)) -> Response:
    """The stored label as a Slicer segmentation (one segment per class, names and colours from the label set).

    409 ``invalid_state`` when the case has no label.
    """
    store = context.store
    label = store.load_label(case_id)
    return _seg_response(segmentation_bytes(label.array, label.geometry, store.config), f"{case_id}.seg.nrrd")


# A file being replaced by a ranking round is opened again from the database's current pointer, this often.
_OPEN_ATTEMPTS = 3


def _committed_file(case_id: str, resolve: Callable[[], Path | None], what: str, name: str) -> Response:
    """Serve the committed file the database points at, read through one open handle.

    A ranking round replaces pseudo-labels and predictions while they are downloaded: the path read from the
    database may be gone when it is opened, or be unlinked mid-send. So the file is opened first (an open handle
    keeps the committed bytes even if the name is replaced or removed), read whole, and only then answered;
    a vanished file is looked up again, and a case that no longer has one gets 409, never a 500 or an empty body.
    """
    for _ in range(_OPEN_ATTEMPTS):
        path = resolve()
        if path is None:
            break
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            continue
        return _seg_response(data, name)
    raise CaseStateError(f"case {case_id!r} has no {what} now (it was replaced or reviewed meanwhile; ask again)")


@router.get("/{case_id}/pseudo", response_class=Response, responses=_BINARY, summary="The pending pseudo-label as .seg.nrrd")
def get_pseudo(case_id: str, context: ServerContext = Depends(get_context)) -> Response:
    """The model's pseudo-label awaiting review. 409 ``invalid_state`` when the case has none."""
    record = context.store.case(case_id)
    if record.pseudo_path is None:
        raise CaseStateError(f"case {case_id!r} has no pseudo-label (state {record.state!r})")
    first: list[Path | None] = [record.pseudo_path]

    def resolve() -> Path | None:
        return first.pop() if first else context.store.case(case_id).pseudo_path

    return _committed_file(case_id, resolve, "pseudo-label", f"{case_id}.pseudo.seg.nrrd")


@router.get("/{case_id}/prediction", response_class=Response, responses=_BINARY,
            summary="The active model's prediction of a queued case as .seg.nrrd")
def get_prediction(case_id: str, context: ServerContext = Depends(get_context)) -> Response:
    """A starting segmentation for the annotator, written by the last ranking of the active model.

    409 ``invalid_state`` when there is none (the case is not in the strong queue of the active model).
    """
    store = context.store
    record = store.case(case_id)

    def resolve() -> Path | None:
        version = store.active_version()
        return store.prediction_path(case_id, version) if version is not None else None

    try:
        return _committed_file(case_id, resolve, "prediction", f"{case_id}.prediction.seg.nrrd")
    except CaseStateError:
        raise CaseStateError(f"case {case_id!r} has no prediction of the active model (state {record.state!r}; "
                             "predictions are kept for queued cases after ranking)") from None


@router.post("/{case_id}/lease", response_model=CaseOut, summary="Lease (or renew) one case")
def lease_case(
    case_id: str, annotator: str = ANNOTATOR,
    reopen: bool = Query(False, description="also lease a labelled or accepted case, to edit its label"),
    context: ServerContext = Depends(get_context),
) -> CaseOut:
    """Lease a case to ``annotator`` for ``lease_seconds``. 409 ``leased`` when someone else holds it; 409 for a
    labelled or accepted case unless ``reopen=true`` (its label is then served by ``GET .../label`` to edit, and
    a submission replaces it)."""
    return context.case_view(context.store.lease(case_id, annotator, reopen))


@router.delete("/{case_id}/lease", response_model=CaseOut, summary="Release a lease")
def release_case(case_id: str, annotator: str = ANNOTATOR, context: ServerContext = Depends(get_context)) -> CaseOut:
    """Give a lease back so the case can be served to another annotator."""
    return context.case_view(context.store.release(case_id, annotator))




@router.post("/{case_id}/skip", response_model=CaseOut, summary="Skip a case: release it and serve it last to this annotator")
def skip_case(case_id: str, annotator: str = ANNOTATOR, context: ServerContext = Depends(get_context)) -> CaseOut:
    """Release ``annotator``'s lease; ``POST /v1/queue/next`` then serves them every other case before this one.
    409 ``leased`` when someone else holds it, 409 when the case is already labelled."""
    return context.case_view(context.store.skip(case_id, annotator))
