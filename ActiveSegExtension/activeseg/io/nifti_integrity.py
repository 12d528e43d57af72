"""Completeness checks of NIfTI files, before SimpleITK reads them.

Why: SimpleITK's NIfTI reader decodes a truncated ``.nii`` or ``.nii.gz`` without error, zero-filling the
missing voxels, so a cut-off upload or a half-copied file would otherwise be imported or stored as a
wrong label. NRRD and ``.seg.nrrd`` readers already fail on truncated data. ``imageio.read_volume``
calls :func:`check_nifti_complete` for every NIfTI file.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from activeseg.errors import ImageReadError

__all__ = ["check_nifti_complete"]

_CHUNK = 1 << 20


def _raw_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _gunzip_chunks(path: Path) -> Iterator[bytes]:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        for chunk in _raw_chunks(path):
            data = chunk
            while data and not decompressor.eof:
                yield decompressor.decompress(data, 1 << 22)  # bounded output: inflating never fills memory
                data = decompressor.unconsumed_tail
            if decompressor.eof:
                break
    except zlib.error as exc:
        raise ImageReadError(f"not a valid gzip stream ({exc})") from exc
    if not decompressor.eof:
        raise ImageReadError("truncated: the gzip stream ends before its end marker")


def _expected_size(header: bytes) -> int | None:
    """Bytes a NIfTI-1/2 file must hold (vox_offset + voxel data), or None if the header is not NIfTI."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            bitpix = struct.unpack(endian + "h", header[72:74])[0]
            offset = int(struct.unpack(endian + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            bitpix = struct.unpack(endian + "h", header[14:16])[0]
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            break
    else:
        return None
    count = 1
    for n in dims[1 : 1 + max(0, min(7, dims[0]))]:
        count *= max(1, n)
    return max(offset, 348) + count * max(1, bitpix) // 8


def check_nifti_complete(path: Path, compressed: bool) -> None:
    """Raise :class:`ImageReadError` when a NIfTI file holds fewer bytes than its header declares.

    Args:
        path: the file.
        compressed: it is gzip-compressed (``.nii.gz``); the gzip stream must also be complete.
    """
    header = b""
    total = 0
    expected: int | None = None
    for chunk in (_gunzip_chunks(path) if compressed else _raw_chunks(path)):
        if len(header) < 540:
            header += chunk[: 540 - len(header)]
            if len(header) >= 348 and expected is None:
                expected = _expected_size(header)
        total += len(chunk)
    if expected is None and len(header) >= 4:
        expected = _expected_size(header)
    if expected is not None and total < expected:
        raise ImageReadError(f"truncated: {total} bytes of NIfTI data, the header declares {expected}")
