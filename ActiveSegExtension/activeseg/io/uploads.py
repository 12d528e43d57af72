"""Decoding an uploaded label file, which nobody on the server has vetted.

Every upload goes through :func:`read_label_upload`: the header is checked before any reader sees the bytes
(no detached data or other file references, a fully valid NIfTI header, a declared decoded size under the
limit, data neither truncated nor a compressed bomb), then one pinned reader decodes it. Messages name the
file "uploaded label", never a server path.

A DICOM Segmentation (DICOM SEG) is recognised by its content - the ``DICM`` marker after the 128-byte
preamble, then its SOP Class UID - whatever ``format`` the client declared; it carries no grid of its own, so
the caller supplies how to place it on the case's series (:func:`activeseg.store.dicom_index.label_from_dicom_seg`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from activeseg.errors import ActiveSegError, ImageReadError, NotThreeDimensionalError
from activeseg.io.dicom_series import SEGMENTATION_STORAGE, is_dicom_file
from activeseg.io.nrrd_header import check_nrrd_complete
from activeseg.io.seg_nrrd import read_segmentation_labelmap
from activeseg.io.volumes import Geometry, Volume, read_untrusted_volume

__all__ = ["UPLOAD_FORMATS", "UPLOAD_NAME", "DicomSegMapper", "read_label_upload"]

UPLOAD_FORMATS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".dcm")
UPLOAD_NAME = "uploaded label"

#: Places a DICOM SEG dataset on the case's grid: (k, j, i) class values, LPS geometry of the case's series.
DicomSegMapper = Callable[[pydicom.Dataset], Volume]

# What pydicom may raise on a malformed file or dataset (it has no single error type for bad input).
_DICOM_PARSE_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError,
                       AttributeError, struct.error, NotImplementedError, RuntimeError, OverflowError)


def read_label_upload(
    path: Path,
    file_format: str,
    labels: dict[int, str],
    reference: Geometry,
    max_decoded_bytes: int,
    *,
    dicom_seg: DicomSegMapper | None = None,
) -> Volume:
    """Decode an uploaded label (a labelmap, a Slicer ``.seg.nrrd`` or a DICOM SEG) without trusting its header.

    Args:
        path: the private temp file holding the upload.
        file_format: one of :data:`UPLOAD_FORMATS` (a file with the DICOM marker is read as DICOM whatever it says).
        labels: class value -> name (a ``.seg.nrrd``'s segments are mapped by name).
        reference: the case image's grid (LPS); a ``.seg.nrrd`` cropped to its segments is padded onto it.
        max_decoded_bytes: the largest decoded voxel data accepted, bytes (checked from the header first).
        dicom_seg: places a DICOM SEG on the case's series grid; ``None`` refuses DICOM uploads.

    Returns:
        The label, (k, j, i): a labelmap in its file's voxel type (non-integer values are left for validation
        to refuse), a ``.seg.nrrd`` or DICOM SEG as uint8 class values.

    Raises:
        ImageReadError: a refused header, too much data, truncated or corrupt data, an unknown format, a DICOM
            object that is not a Segmentation.
        NotThreeDimensionalError: not a single-component 3D volume.
        LabelValueError: NaN or infinite voxels; segments that cannot be mapped to classes.
        GeometryMismatchError: a ``.seg.nrrd`` grid that cannot be placed on ``reference``; a DICOM SEG of another
            series or frame of reference, or whose orientation, spacing, matrix or frame positions do not fit.
        DatastoreError: a DICOM SEG for a case that was not imported from DICOM (as ``dicom_seg`` raises it).
    """
    if file_format not in UPLOAD_FORMATS:
        raise ImageReadError(f"unsupported upload format {file_format!r}; send one of {list(UPLOAD_FORMATS)}")
    if is_dicom_file(path):
        return _read_dicom_seg_upload(path, max_decoded_bytes, dicom_seg)
    if file_format == ".dcm":
        raise ImageReadError(f"{UPLOAD_NAME}: not a DICOM file (no 'DICM' marker after a 128-byte preamble); "
                             "send a DICOM SEG as a DICOM Part 10 file")
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


def _read_dicom_seg_upload(path: Path, max_decoded_bytes: int, dicom_seg: DicomSegMapper | None) -> Volume:
    """A DICOM upload: its header is read first (no pixel data) and must be a Segmentation whose decoded frames
    fit ``max_decoded_bytes``; only then is the whole object read and handed to ``dicom_seg``."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        sop_class = str(header.get("SOPClassUID") or header.file_meta.get("MediaStorageSOPClassUID") or "")
    except _DICOM_PARSE_ERRORS as exc:
        raise ImageReadError(f"{UPLOAD_NAME}: not a readable DICOM file ({type(exc).__name__}: {exc})"[:500]) from exc
    if sop_class != SEGMENTATION_STORAGE:
        what = getattr(pydicom.uid.UID(sop_class), "name", sop_class) if sop_class else "no SOP class"
        raise ImageReadError(f"{UPLOAD_NAME}: a DICOM upload must be a Segmentation (SOP class {SEGMENTATION_STORAGE}), "
                             f"this one is {what!s} ({sop_class or 'missing'})")
    try:
        rows, columns = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames") or 1)
        bits = int(header.get("BitsAllocated") or 1)
    except _DICOM_PARSE_ERRORS as exc:
        raise ImageReadError(f"{UPLOAD_NAME}: DICOM SEG without a valid matrix size ({exc})") from exc
    if min(rows, columns, frames) < 1:
        raise ImageReadError(f"{UPLOAD_NAME}: DICOM SEG with {frames} frame(s) of {rows} x {columns} pixels")
    decoded = rows * columns * frames * max(1, bits // 8)  # binary frames are unpacked to one byte per pixel
    if decoded > max_decoded_bytes:
        raise ImageReadError(f"{UPLOAD_NAME}: DICOM SEG of {frames} frame(s) of {rows} x {columns} pixels decodes to "
                             f"{decoded} bytes, above the limit of {max_decoded_bytes} bytes")
    if dicom_seg is None:
        raise ImageReadError(f"{UPLOAD_NAME}: a DICOM SEG needs the case's DICOM series to be placed on; "
                             "send a .seg.nrrd or a labelmap instead")
    try:
        dataset = pydicom.dcmread(path)
        return dicom_seg(dataset)
    except ActiveSegError:
        raise
    except _DICOM_PARSE_ERRORS as exc:
        raise ImageReadError(f"{UPLOAD_NAME}: malformed DICOM SEG ({type(exc).__name__}: {exc})"[:500]) from exc
