"""Decoding an uploaded label file, which nobody on the server has vetted.

Every upload goes through :func:`read_label_upload`: the header is checked before any reader sees the bytes
(no detached data or other file references, a fully valid NIfTI header, a declared decoded size under the
limit, data neither truncated nor a compressed bomb), then one pinned reader decodes it. Messages name the
file "uploaded label", never a server path.
"""

from __future__ import annotations

from pathlib import Path

from activeseg.errors import ImageReadError, NotThreeDimensionalError
from activeseg.io.nrrd_header import check_nrrd_complete
from activeseg.io.seg_nrrd import read_segmentation_labelmap
from activeseg.io.volumes import Geometry, Volume, read_untrusted_volume

__all__ = ["UPLOAD_FORMATS", "UPLOAD_NAME", "read_label_upload"]

UPLOAD_FORMATS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")
UPLOAD_NAME = "uploaded label"


def read_label_upload(
    path: Path, file_format: str, labels: dict[int, str], reference: Geometry, max_decoded_bytes: int
) -> Volume:
    """Decode an uploaded label (a labelmap or a Slicer ``.seg.nrrd``) without trusting its header.

    Args:
        path: the private temp file holding the upload.
        file_format: one of :data:`UPLOAD_FORMATS`.
        labels: class value -> name (a ``.seg.nrrd``'s segments are mapped by name).
        reference: the case image's grid (LPS); a ``.seg.nrrd`` cropped to its segments is padded onto it.
        max_decoded_bytes: the largest decoded voxel data accepted, bytes (checked from the header first).

    Returns:
        The label, (k, j, i): a labelmap in its file's voxel type (non-integer values are left for validation
        to refuse), a ``.seg.nrrd`` as uint8 class values.

    Raises:
        ImageReadError: a refused header, too much data, truncated or corrupt data, or an unknown format.
        NotThreeDimensionalError: not a single-component 3D volume.
        LabelValueError: NaN or infinite voxels; a ``.seg.nrrd`` whose segments cannot be mapped to classes.
        GeometryMismatchError: a ``.seg.nrrd`` grid that cannot be placed on ``reference``.
    """
    if file_format not in UPLOAD_FORMATS:
        raise ImageReadError(f"unsupported upload format {file_format!r}; send one of {list(UPLOAD_FORMATS)}")
    if file_format == ".seg.nrrd":
        try:
            header = check_nrrd_complete(path, max_decoded_bytes=max_decoded_bytes)
        except ImageReadError as exc:
            raise ImageReadError(f"{UPLOAD_NAME}: {exc}") from exc
        if header.dimension not in (3, 4):
            raise NotThreeDimensionalError(
                f"{UPLOAD_NAME}: a .seg.nrrd has 3 axes (or 4 with layers), this one has {header.dimension}"
            )
        return read_segmentation_labelmap(path, labels, reference=reference, what=UPLOAD_NAME)
    return read_untrusted_volume(path, file_format, max_decoded_bytes, what=UPLOAD_NAME, allow_nonfinite=False)
