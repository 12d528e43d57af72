"""Validation of NIfTI files before SimpleITK reads them: the whole header, then the data length.

Why: SimpleITK's NIfTI reader decodes a truncated ``.nii`` or ``.nii.gz`` without error, zero-filling the
missing voxels, and it accepts headers a careful reader would refuse (``sizeof_hdr = 0``, an ANALYZE or
``.hdr``/``.img`` pair pointing at a second file). So a cut-off upload, a forged header or a half-copied file
would otherwise be imported or stored as a wrong label. :func:`check_nifti_complete` is the one check every
NIfTI file goes through (``volumes.read_volume`` for local files, ``uploads`` for uploaded ones, and the
atomic writer's read-back); it streams the (decompressed) file in bounded chunks, so memory stays small
whatever the header declares.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from activeseg.errors import ImageReadError

__all__ = ["NiftiHeader", "parse_nifti_header", "check_nifti_complete", "NIFTI_SCALAR_TYPES"]

_CHUNK = 1 << 20
# Bytes a decompressed stream may hold beyond vox_offset + data before it is refused (a bomb's tail).
_TRAILING_SLACK = 1 << 20

# NIfTI datatype code -> bits per voxel, for the scalar types ITK reads as a single-component image.
NIFTI_SCALAR_TYPES: dict[int, int] = {
    2: 8,  # uint8
    4: 16,  # int16
    8: 32,  # int32
    16: 32,  # float32
    64: 64,  # float64
    256: 8,  # int8
    512: 16,  # uint16
    768: 32,  # uint32
    1024: 64,  # int64
    1280: 64,  # uint64
}


@dataclass(frozen=True)
class NiftiHeader:
    """The layout fields of a single-file NIfTI-1 or NIfTI-2 header.

    Attributes:
        version: 1 or 2.
        dims: voxels per axis, (i, j, k, ...) order, ``dim[0]`` entries.
        datatype: NIfTI datatype code (a key of :data:`NIFTI_SCALAR_TYPES`).
        bitpix: bits per voxel.
        vox_offset: byte offset of the voxel data in the (decompressed) file.
        endian: ``<`` or ``>``, the byte order of header and data.
        nonfinite: NaN or infinite voxels counted by :func:`check_nifti_complete` (``None``: not counted).
    """

    version: int
    dims: tuple[int, ...]
    datatype: int
    bitpix: int
    vox_offset: int
    endian: str = "<"
    nonfinite: int | None = None

    @property
    def data_bytes(self) -> int:
        """Decoded voxel data size in bytes (dimensions x type)."""
        return math.prod(self.dims) * self.bitpix // 8

    @property
    def file_bytes(self) -> int:
        """Bytes the (decompressed) file must hold: header, extensions and voxel data."""
        return self.vox_offset + self.data_bytes


def parse_nifti_header(head: bytes) -> NiftiHeader:
    """Validate a NIfTI header fully and return its layout.

    Args:
        head: the first bytes of the (decompressed) file: at least 348 (NIfTI-1) or 540 (NIfTI-2).

    Raises:
        ImageReadError: not a single-file NIfTI-1/2 (wrong ``sizeof_hdr`` or magic, e.g. ANALYZE or a
            ``.hdr``/``.img`` pair), a bad ``dim``, a non-scalar or inconsistent ``datatype``/``bitpix``, a
            ``vox_offset`` inside the header, or non-finite spacing or intensity scaling.
    """
    if len(head) < 348:
        raise ImageReadError(f"not a NIfTI file: {len(head)} bytes is shorter than a NIfTI header (348)")
    for endian in "<>":
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr == 348:
            version = 1
            break
        if sizeof_hdr == 540:
            version = 2
            break
    else:
        raise ImageReadError(
            f"not a NIfTI file: header size field is {struct.unpack('<i', head[:4])[0]}, expected 348 or 540"
        )
    if version == 1:
        magic = head[344:348]
        if magic != b"n+1\0":
            raise ImageReadError(
                f"NIfTI-1 magic {magic!r} is not a single-file '.nii' (n+1): .hdr/.img pairs and ANALYZE files "
                "are not accepted"
            )
        dim = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        pixdim = struct.unpack(endian + "8f", head[76:108])
        vox_offset_f = struct.unpack(endian + "f", head[108:112])[0]
        scaling = struct.unpack(endian + "2f", head[112:120])
        if not math.isfinite(vox_offset_f) or vox_offset_f != int(vox_offset_f):
            raise ImageReadError(f"bad NIfTI header: vox_offset {vox_offset_f} is not a whole byte offset")
        vox_offset, minimum_offset = int(vox_offset_f), 352
    else:
        if len(head) < 540:
            raise ImageReadError(f"not a NIfTI-2 file: {len(head)} bytes is shorter than its header (540)")
        magic = head[4:12]
        if magic[:4] != b"n+2\0":
            raise ImageReadError(f"NIfTI-2 magic {magic[:4]!r} is not a single-file '.nii' (n+2)")
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        dim = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset, minimum_offset = struct.unpack(endian + "q", head[168:176])[0], 544
        scaling = struct.unpack(endian + "2d", head[176:192])
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise ImageReadError(f"bad NIfTI header: dim[0] = {ndim}, expected 1 to 7")
    dims = tuple(int(d) for d in dim[1 : ndim + 1])
    if any(d < 1 for d in dims):
        raise ImageReadError(f"bad NIfTI header: dimensions {list(dims)} must all be at least 1")
    if datatype not in NIFTI_SCALAR_TYPES:
        raise ImageReadError(f"unsupported NIfTI datatype {datatype}: expected a scalar integer or float type")
    if bitpix != NIFTI_SCALAR_TYPES[datatype]:
        raise ImageReadError(
            f"bad NIfTI header: bitpix {bitpix} does not match datatype {datatype} ({NIFTI_SCALAR_TYPES[datatype]})"
        )
    if vox_offset < minimum_offset:
        raise ImageReadError(f"bad NIfTI header: vox_offset {vox_offset} lies inside the header (< {minimum_offset})")
    spacing = pixdim[1 : min(ndim, 3) + 1]
    if not all(math.isfinite(s) and s != 0 for s in spacing):
        raise ImageReadError(f"bad NIfTI header: voxel spacing {list(spacing)} must be finite and non-zero")
    if not all(math.isfinite(v) for v in scaling):
        raise ImageReadError(f"bad NIfTI header: intensity scaling (scl_slope, scl_inter) {list(scaling)} is not finite")
    return NiftiHeader(version=version, dims=dims, datatype=datatype, bitpix=bitpix, vox_offset=vox_offset, endian=endian)


def _raw_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            yield chunk


def _gunzip_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed chunks of a gzip file (concatenated members allowed), each at most 4 MiB."""
    with open(path, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            raise ImageReadError("not gzip-compressed although named .gz")
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        for chunk in _raw_chunks(path):
            data = chunk
            while True:
                if decompressor.eof:  # a member ended: what follows is another member or zero padding
                    rest = decompressor.unused_data + data
                    if not rest.strip(b"\0"):  # gzip(1) tolerates trailing zeros
                        break
                    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                    data = rest
                if not data:
                    break
                out = decompressor.decompress(data, 1 << 22)  # bounded output: inflating never fills memory
                if out:
                    yield out
                data = decompressor.unconsumed_tail
    except zlib.error as exc:
        raise ImageReadError(f"not a valid gzip stream ({exc})") from exc
    if not decompressor.eof:
        raise ImageReadError("truncated: the gzip stream ends before its end marker")


def check_nifti_complete(
    path: Path, compressed: bool, max_decoded_bytes: int | None = None, count_nonfinite: bool = False
) -> NiftiHeader:
    """Validate a NIfTI file's header and check it holds exactly the data the header declares.

    Args:
        path: the file.
        compressed: it is gzip-compressed (``.nii.gz``); the gzip stream must also be complete.
        max_decoded_bytes: refuse a header declaring more voxel data than this many bytes (before any
            decoding); ``None``: no limit.
        count_nonfinite: count NaN and infinite voxels of float data while streaming (ITK's reader silently
            turns them into 0, so they can only be seen here).

    Returns:
        The validated header (with ``nonfinite`` set when counted).

    Raises:
        ImageReadError: an invalid header (see :func:`parse_nifti_header`), declared data above
            ``max_decoded_bytes``, fewer bytes than declared (truncated), or a decompressed stream longer than
            declared by more than 1 MiB (a decompression bomb).
    """
    head = b""
    total = 0
    header: NiftiHeader | None = None
    pending: list[bytes] = []  # chunks read before the header was complete
    counter: _NonFiniteCounter | None = None
    for chunk in (_gunzip_chunks(path) if compressed else _raw_chunks(path)):
        if header is None:
            head += chunk[: 540 - len(head)]
            pending.append(chunk)
            if len(head) >= 540 or (len(head) >= 348 and head[:4] in (b"\x5c\x01\0\0", b"\0\0\x01\x5c")):
                header = _checked_header(head, max_decoded_bytes)
                if count_nonfinite and header.datatype in (16, 64):
                    counter = _NonFiniteCounter(header)
                for earlier in pending:
                    total = _consume(earlier, total, header, counter)
                pending = []
            continue
        total = _consume(chunk, total, header, counter)
    if header is None:
        header = _checked_header(head, max_decoded_bytes)
        total = sum(len(c) for c in pending)
    if total < header.file_bytes:
        raise ImageReadError(f"truncated: {total} bytes of NIfTI data, the header declares {header.file_bytes}")
    if count_nonfinite:
        header = replace(header, nonfinite=counter.count if counter is not None else 0)
    return header


class _NonFiniteCounter:
    """Counts NaN/inf float voxels of a byte stream starting at the file's first byte."""

    def __init__(self, header: NiftiHeader) -> None:
        self.dtype = np.dtype(("f4" if header.datatype == 16 else "f8")).newbyteorder(header.endian)
        self.start, self.stop = header.vox_offset, header.file_bytes
        self.carry = b""
        self.count = 0

    def feed(self, chunk: bytes, offset: int) -> None:
        lo, hi = max(self.start - offset, 0), min(self.stop - offset, len(chunk))
        if hi <= lo:
            return
        data = self.carry + chunk[lo:hi]
        usable = len(data) - len(data) % self.dtype.itemsize
        self.count += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], dtype=self.dtype))))
        self.carry = data[usable:]


def _consume(chunk: bytes, total: int, header: NiftiHeader, counter: _NonFiniteCounter | None) -> int:
    if counter is not None:
        counter.feed(chunk, total)
    total += len(chunk)
    if total > header.file_bytes + _TRAILING_SLACK:
        raise ImageReadError(f"the NIfTI data stream holds more than the {header.file_bytes} bytes its header declares")
    return total


def _checked_header(head: bytes, max_decoded_bytes: int | None) -> NiftiHeader:
    header = parse_nifti_header(head)
    if max_decoded_bytes is not None and header.data_bytes > max_decoded_bytes:
        raise ImageReadError(
            f"the NIfTI header declares {header.data_bytes} bytes of voxel data (dimensions {list(header.dims)}), "
            f"more than the limit of {max_decoded_bytes} bytes"
        )
    return header
