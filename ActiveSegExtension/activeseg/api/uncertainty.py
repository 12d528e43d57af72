"""``/v1/cases/{id}/uncertainty``: the voxel-wise uncertainty map the ranking pass wrote for a case.

The map (:mod:`activeseg.method.uncertainty_map`) is a uint8 NRRD in the case image's own geometry (LPS file),
values in percent: 0 = the three heads agree and the main head is sure, 100 = the heads contradict each other or
the main head is at chance. Slicer shows it as a colour overlay.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from activeseg.errors import CaseStateError
from activeseg.method.uncertainty_map import uncertainty_map_path
from .context import ServerContext, get_context
from .errors import ERROR_RESPONSES

__all__ = ["router"]

router = APIRouter(prefix="/cases", tags=["cases"], responses=ERROR_RESPONSES)

_BINARY = {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.get("/{case_id}/uncertainty", response_class=Response, responses=_BINARY,
            summary="The case's voxel-wise uncertainty map (uint8 percent NRRD, image geometry)")
def get_uncertainty(case_id: str, context: ServerContext = Depends(get_context)) -> Response:
    """The map written by the last ranking pass that scored this case.

    404 ``unknown_case`` for an unknown case; 409 ``invalid_state`` when no ranking has written a map for it.
    """
    record = context.store.case(case_id)
    path = uncertainty_map_path(context.store.meta_dir, case_id)
    # A ranking renames a new map over this name while it is downloaded. Streaming it by name (stat for the
    # length, then open) could pair one file's length with another's bytes; one open handle reads one whole file.
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, IsADirectoryError):
        raise CaseStateError(f"case {case_id!r} has no uncertainty map (state {record.state!r}; maps are written "
                             "when a ranking pass scores the case)") from None
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{case_id}.uncertainty.nrrd"'})
