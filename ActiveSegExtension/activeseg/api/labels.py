"""Label submission (``PUT /v1/cases/{id}/label``) and pseudo-label review (accept / reject; edit = submit)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from activeseg.store.datastore import CaseRecord, Datastore
from activeseg.errors import ActiveSegError, ImageReadError
from activeseg.io.atomic import TEMP_MARKER, storage_error
from activeseg.io.uploads import read_label_upload
from .cases import ANNOTATOR
from .context import ServerContext, get_context
from .errors import ERROR_RESPONSES
from .schemas import CaseOut, ErrorOut

if TYPE_CHECKING:
    import pydicom

    from activeseg.io.volumes import Volume

__all__ = ["router", "UploadTooLargeError"]

router = APIRouter(prefix="/cases", tags=["labels"], responses=ERROR_RESPONSES)

UploadFormat = Literal[".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".dcm"]


class UploadTooLargeError(ActiveSegError):
    """An upload body above the server's ``max_upload_bytes``."""

    code = "too_large"
    http_status = 413


_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        "description": "the label file's bytes: a labelmap (.nii.gz/.nii/.nrrd), a Slicer .seg.nrrd, or a DICOM SEG "
                       "(recognised by its content; cases imported from DICOM only) over the case's series",
    }
}


def _store_label(
    store: Datastore, case_id: str, path: Path, file_format: str, no_finding: bool, annotator: str, max_decoded_bytes: int
) -> CaseRecord:
    """Decode the uploaded file (header checked first) and hand it to the datastore, which validates and writes it
    atomically. The file keeps its voxel type, so non-integer values are caught by validation, not truncated.
    A DICOM SEG is placed on the case's series grid through the datastore's DICOM index; one that does not fit
    is refused before anything is written, so the case keeps what it had."""
    labels = store.config.labels

    def place_seg(seg: pydicom.Dataset) -> Volume:
        from activeseg.store.dicom_index import label_from_dicom_seg  # the DICOM index: imported for a SEG only

        return label_from_dicom_seg(store.meta_dir, case_id, seg, labels)

    label = read_label_upload(path, file_format, labels, store.image_geometry(case_id), max_decoded_bytes,
                              dicom_seg=place_seg)
    return store.submit_label(case_id, label, no_finding=no_finding, annotator=annotator)


def upload_dir(store: Datastore) -> Path:
    """Where uploads are spooled: inside the datastore (same disk, private), named with the temp marker so a
    restarted server's recovery removes what a killed one left behind."""
    return store.meta_dir / "uploads"


@router.put(
    "/{case_id}/label",
    response_model=CaseOut,
    summary="Submit an expert label (also: edit-and-submit a pseudo-label)",
    responses={413: {"model": ErrorOut, "description": "upload larger than max_upload_bytes"}},
    openapi_extra=_UPLOAD_DOC,
)
async def submit_label(
    case_id: str,
    request: Request,
    annotator: str = ANNOTATOR,
    no_finding: bool = Query(False, description="the case has no finding: an all-background label is intended"),
    file_format: UploadFormat = Query(".nii.gz", alias="format", description="the uploaded file's format suffix"),
    context: ServerContext = Depends(get_context),
) -> CaseOut:
    """Validate (geometry equal to the image's, values in the label set, non-empty unless ``no_finding``) and store.

    A DICOM SEG body (any ``format``; ``.dcm`` to say so) is mapped onto the series of a case imported from DICOM;
    422 ``geometry_mismatch`` names what does not match (another series or frame of reference, orientation,
    spacing, matrix size, a frame off the grid).

    The case becomes ``labeled``; its lease and pseudo-label are cleared. Refused with 409 when another
    annotator holds the lease. Nothing is changed by a refused upload.
    """
    store = context.store
    # Reject an unknown or malformed id before reading a possibly large body.
    await run_in_threadpool(store.case, case_id)
    limit = context.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLargeError(f"upload of {int(declared)} bytes exceeds the limit of {limit} bytes")
    spool = upload_dir(store) / f"{TEMP_MARKER}upload-{uuid.uuid4().hex}{file_format}"
    try:
        spool.parent.mkdir(exist_ok=True)
        handle = open(spool, "xb")  # noqa: SIM115 - closed below; "x": never follows a planted link
    except OSError as exc:
        raise storage_error(exc, "the upload") from exc
    try:
        size = 0
        # Chunks go to a private temp file (page-cache writes of <= 64 KiB: microseconds, fine on the loop);
        # decoding and validation, the slow part, run in the threadpool.
        with handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:  # a body without (or lying about) Content-Length is counted as it streams
                    raise UploadTooLargeError(f"upload exceeds the limit of {limit} bytes")
                try:
                    handle.write(chunk)
                except OSError as exc:
                    raise storage_error(exc, "the upload") from exc
        if size == 0:
            raise ImageReadError("empty upload: send the label file's bytes as the request body")
        record = await run_in_threadpool(
            _store_label, store, case_id, spool, file_format, no_finding, annotator, context.max_decoded_bytes
        )
    finally:
        spool.unlink(missing_ok=True)
    return context.case_view(record)


REVIEWER = Query(None, min_length=1, max_length=128, description="the reviewer (required when the case is leased)")


@router.post("/{case_id}/pseudo/accept", response_model=CaseOut, summary="Accept a pseudo-label as a trusted label")
def accept_pseudo(
    case_id: str, annotator: str | None = REVIEWER, context: ServerContext = Depends(get_context)
) -> CaseOut:
    """The pseudo-label becomes the case's label (state ``accepted``, trained at full weight).

    409 ``leased`` when someone other than ``annotator`` holds the case; 409 ``invalid_state`` when it has no
    pseudo-label or another request reviewed it meanwhile (only one verdict ever wins).
    """
    return context.case_view(context.store.accept_pseudo(case_id, annotator))


@router.post("/{case_id}/pseudo/reject", response_model=CaseOut, summary="Reject a pseudo-label")
def reject_pseudo(
    case_id: str, annotator: str | None = REVIEWER, context: ServerContext = Depends(get_context)
) -> CaseOut:
    """The pseudo-label is dropped and the case is not pseudo-labelled again (state ``rejected``).

    409 ``leased`` when someone other than ``annotator`` holds the case.
    """
    return context.case_view(context.store.reject_pseudo(case_id, annotator))
