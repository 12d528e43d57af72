"""Stdlib-only sanity checks of NRRD and NIfTI files before MRML reads them.

Why this exists: Slicer's readers are not safe on damaged files. ``vtkMRMLSegmentationStorageNode.ReadData``
on a ``.seg.nrrd`` whose data is truncated or corrupt lets an ITK exception escape and *aborts the process*
(verified with slicer-core 5.13: ``terminate called after throwing an instance of itk::ExceptionObject``); inside
Slicer that would kill the application with the user's unsaved work. The ITK NIfTI reader, for its part,
"successfully" reads a truncated ``.nii.gz`` (the missing voxels are garbage). So every file that comes from the
network is checked here first: the header is parsed and the (decompressed) data length is counted against what
the header promises. Decompression streams in chunks, so memory stays small; the cost is one extra
decompression pass (roughly 0.1-0.5 s for a CT volume).

Nothing here reads voxel values or geometry: that is MRML's job (:mod:`ActiveSegLib.mrml`).
"""

from __future__ import annotations

import bz2
import logging
import math
import struct
import zlib
from collections.abc import Iterator

from .errors import MrmlBridgeError

__all__ = [
    "NIFTI_SCALAR_TYPES",
    "NIFTI_TRAILING_SLACK",
    "check_nrrd_bytes",
    "check_nifti_bytes",
    "check_image_bytes",
    "image_format",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes fed to a decompressor at a time

# NRRD type names (the spec's spellings, lower case) -> bytes per sample.
_NRRD_TYPE_SIZES: dict[str, int] = {}
for _size, _names in (
    (1, "signed char,int8,int8_t,uchar,unsigned char,uint8,uint8_t"),
    (2, "short,short int,signed short,signed short int,int16,int16_t,"
        "ushort,unsigned short,unsigned short int,uint16,uint16_t"),
    (4, "int,signed int,int32,int32_t,uint,unsigned int,uint32,uint32_t,float"),
    (8, "longlong,long long,long long int,signed long long,signed long long int,int64,int64_t,"
        "ulonglong,unsigned long long,unsigned long long int,uint64,uint64_t,double"),
):
    for _name in _names.split(","):
        _NRRD_TYPE_SIZES[_name] = _size


def image_format(suffix: str) -> str:
    """The format family of a file name suffix.

    Args:
        suffix: a suffix or a whole file name, e.g. ``.nii.gz``, ``case.seg.nrrd``.

    Returns:
        ``"nifti"`` (``.nii``, ``.nii.gz``), ``"nrrd"`` (``.nrrd``, ``.seg.nrrd``), or ``""`` for anything else.
    """
    lowered = suffix.lower()
    if lowered.endswith((".nii", ".nii.gz")):
        return "nifti"
    if lowered.endswith(".nrrd"):
        return "nrrd"
    return ""


def check_image_bytes(data: bytes, suffix: str, what: str = "file") -> None:
    """Check an image file's bytes by the format its suffix names.

    Args:
        data: the whole file.
        suffix: ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.seg.nrrd``.
        what: how to name the file in error messages.

    Raises:
        MrmlBridgeError: an unsupported suffix, or the bytes are not a complete file of that format.
    """
    kind = image_format(suffix)
    if kind == "nifti":
        check_nifti_bytes(data, gzipped=suffix.lower().endswith(".gz"), what=what)
    elif kind == "nrrd":
        check_nrrd_bytes(data, what=what)
    else:
        raise MrmlBridgeError(f"{what}: unsupported image format {suffix!r}; expected .nii.gz, .nii or .nrrd")


def _chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        yield view[start:start + _CHUNK].tobytes()


def _gunzip_length(data: bytes, what: str, limit: int | None = None) -> tuple[int, bytes]:
    """Decompressed length of gzip data (concatenated members allowed) and its first decompressed bytes.

    Output is produced in bounded pieces (4 MiB), so a decompression bomb never fills memory; with ``limit`` the
    count stops, with an error, as soon as it exceeds ``limit`` bytes.

    Args:
        data: gzip bytes.
        what: file name for messages.
        limit: most decompressed bytes accepted (``None``: no limit).

    Returns:
        (number of decompressed bytes, the first up-to-1024 decompressed bytes).

    Raises:
        MrmlBridgeError: corrupt or truncated gzip data, or more than ``limit`` decompressed bytes.
    """
    total, head, pos = 0, b"", 0
    decompressor = zlib.decompressobj(wbits=31)  # 31: gzip wrapper only
    try:
        while True:
            if decompressor.eof:
                # Bytes after the end of a member start another member (gzip allows concatenation);
                # trailing zero padding is tolerated like gzip(1) does.
                pos -= len(decompressor.unused_data)
                if not data[pos:].strip(b"\0"):
                    return total, head
                decompressor = zlib.decompressobj(wbits=31)
            if pos >= len(data):
                raise MrmlBridgeError(f"{what}: gzip data ends early (file truncated?)")
            chunk = data[pos:pos + _CHUNK]
            pos += len(chunk)
            while chunk and not decompressor.eof:
                out = decompressor.decompress(chunk, 1 << 22)
                if len(head) < 1024:
                    head += out[: 1024 - len(head)]
                total += len(out)
                if limit is not None and total > limit:
                    raise MrmlBridgeError(f"{what}: decompressed data exceeds the {limit} bytes its header allows")
                chunk = decompressor.unconsumed_tail  # (after the member's end, the rest is in unused_data)
    except zlib.error as exc:
        raise MrmlBridgeError(f"{what}: corrupt gzip data ({exc})") from exc


def _gunzip_head(data: bytes, what: str, size: int = 1024) -> bytes:
    """The first ``size`` decompressed bytes of gzip data (fewer if the stream is shorter)."""
    decompressor = zlib.decompressobj(wbits=31)
    head, pos = b"", 0
    try:
        while len(head) < size and pos < len(data) and not decompressor.eof:
            head += decompressor.decompress(data[pos:pos + 4096], size - len(head))
            tail = decompressor.unconsumed_tail
            pos += 4096 - len(tail) if tail else 4096
    except zlib.error as exc:
        raise MrmlBridgeError(f"{what}: corrupt gzip data ({exc})") from exc
    return head


def _bunzip_length(data: bytes, what: str) -> int:
    total = 0
    decompressor = bz2.BZ2Decompressor()
    try:
        for chunk in _chunks(data):
            total += len(decompressor.decompress(chunk))
            if decompressor.eof:
                break
    except (OSError, EOFError) as exc:
        raise MrmlBridgeError(f"{what}: corrupt bzip2 data ({exc})") from exc
    if not decompressor.eof:
        raise MrmlBridgeError(f"{what}: bzip2 data ends early (file truncated?)")
    return total


def _split_nrrd(data: bytes, what: str) -> tuple[list[str], bytes]:
    if not data.startswith(b"NRRD000"):
        raise MrmlBridgeError(f"{what}: not a NRRD file (no 'NRRD000x' magic)")
    # The header ends at the first empty line; data (attached) follows.
    for separator in (b"\n\n", b"\r\n\r\n"):
        end = data.find(separator)
        if end >= 0:
            header = data[:end].decode("latin-1")
            return header.splitlines(), data[end + len(separator):]
    raise MrmlBridgeError(f"{what}: NRRD header never ends (file truncated?)")


def check_nrrd_bytes(data: bytes, what: str = "file", dimensions: tuple[int, ...] | None = None) -> None:
    """Check that bytes are a complete NRRD file with attached data.

    Args:
        data: the whole file.
        what: how to name the file in error messages.
        dimensions: allowed values of the ``dimension`` field (``None``: any).

    Raises:
        MrmlBridgeError: no NRRD magic, a missing or bad required field, detached data (``data file``), an
            unsupported type or encoding, the wrong dimension, or less data than ``sizes`` x ``type`` promise.
    """
    lines, body = _split_nrrd(data, what)
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line or line.startswith("#") or ":=" in line.split(": ", 1)[0]:
            continue  # comments and key/value pairs (e.g. Segment0_Name:=lung) carry no layout
        if ": " not in line:
            raise MrmlBridgeError(f"{what}: malformed NRRD header line {line[:80]!r}")
        key, value = line.split(": ", 1)
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    for required in ("type", "dimension", "sizes", "encoding"):
        if required not in fields:
            raise MrmlBridgeError(f"{what}: NRRD header lacks the required field {required!r}")
    if "datafile" in fields:
        raise MrmlBridgeError(f"{what}: NRRD with detached data ('data file: {fields['datafile']}') is not supported")
    type_name = " ".join(fields["type"].lower().split())
    if type_name not in _NRRD_TYPE_SIZES:
        raise MrmlBridgeError(f"{what}: unsupported NRRD type {fields['type']!r}")
    try:
        dimension = int(fields["dimension"])
        sizes = [int(s) for s in fields["sizes"].split()]
    except ValueError as exc:
        raise MrmlBridgeError(f"{what}: bad NRRD dimension/sizes ({exc})") from exc
    if len(sizes) != dimension or any(s < 1 for s in sizes):
        raise MrmlBridgeError(f"{what}: NRRD sizes {sizes} do not match dimension {dimension}")
    if dimensions is not None and dimension not in dimensions:
        raise MrmlBridgeError(f"{what}: NRRD has dimension {dimension}; expected one of {list(dimensions)}")
    sample = _NRRD_TYPE_SIZES[type_name]
    encoding = fields["encoding"].lower()
    if sample > 1 and encoding in ("raw", "gzip", "gz", "bzip2", "bz2") and "endian" not in fields:
        raise MrmlBridgeError(f"{what}: NRRD type {type_name!r} with {encoding} encoding needs an 'endian' field")
    count = 1
    for size in sizes:
        count *= size
    expected = count * sample
    if fields.get("byteskip", "0") != "0" or fields.get("lineskip", "0") != "0":
        # Rare in practice (no Slicer/ITK writer emits them); the length check would need their semantics.
        logger.debug("%s: NRRD with byte/line skip: data length not checked", what)
        return
    if encoding == "raw":
        found = len(body)
    elif encoding in ("gzip", "gz"):
        found, _ = _gunzip_length(body, what)
    elif encoding in ("bzip2", "bz2"):
        found = _bunzip_length(body, what)
    elif encoding in ("ascii", "text", "txt"):
        found, expected = len(body.split()), count
    elif encoding == "hex":
        found = len(b"".join(body.split())) // 2
    else:
        raise MrmlBridgeError(f"{what}: unsupported NRRD encoding {fields['encoding']!r}")
    if found < expected:
        raise MrmlBridgeError(
            f"{what}: NRRD data too short: {found} of {expected} expected "
            f"{'values' if encoding in ('ascii', 'text', 'txt') else 'bytes'} for sizes {sizes} (file truncated?)"
        )


# NIfTI datatype code -> bits per voxel: the scalar types ITK reads as single-component images. The backend's
# list (activeseg.io.nifti_integrity.NIFTI_SCALAR_TYPES); Testing/module/test_protocol_agreement.py compares them.
NIFTI_SCALAR_TYPES: dict[int, int] = {2: 8, 4: 16, 8: 32, 16: 32, 64: 64, 256: 8, 512: 16, 768: 32, 1024: 64, 1280: 64}

# Decompressed bytes a NIfTI stream may hold beyond header + voxel data before it is refused (a bomb's tail).
NIFTI_TRAILING_SLACK = 1 << 20


def _parse_nifti_header(head: bytes, what: str) -> int:
    """Bytes a single-file NIfTI-1/2 must hold (``vox_offset`` + voxel data), from its first 540+ bytes.

    The same rules as the backend's ``parse_nifti_header`` (the protocol: an image one side accepts, the other
    does too): single-file magic, ``dim[0]`` in 1-7 and every dimension >= 1, a scalar datatype with its own
    ``bitpix``, ``vox_offset`` past the header, finite non-zero spacing and finite intensity scaling.
    """
    if len(head) < 348:
        raise MrmlBridgeError(f"{what}: not a NIfTI file ({len(head)} bytes is shorter than a NIfTI header)")
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
        if sizeof_hdr in (348, 540):
            break
    else:
        raise MrmlBridgeError(f"{what}: not a NIfTI file (header size field {struct.unpack('<i', head[:4])[0]}, "
                              "expected 348 or 540)")
    if sizeof_hdr == 348:
        if head[344:348] != b"n+1\0":
            raise MrmlBridgeError(f"{what}: NIfTI-1 magic {head[344:348]!r} is not a single-file '.nii' (n+1); "
                                  ".hdr/.img pairs and ANALYZE files are not supported")
        dim = struct.unpack(endian + "8h", head[40:56])
        datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
        pixdim = struct.unpack(endian + "8f", head[76:108])
        offset = struct.unpack(endian + "f", head[108:112])[0]
        scaling = struct.unpack(endian + "2f", head[112:120])
        if not math.isfinite(offset) or offset != int(offset):
            raise MrmlBridgeError(f"{what}: bad NIfTI header (vox_offset {offset} is not a whole byte offset)")
        vox_offset, minimum = int(offset), 352
    else:
        if len(head) < 540:
            raise MrmlBridgeError(f"{what}: not a NIfTI-2 file ({len(head)} bytes is shorter than its header)")
        if head[4:8] != b"n+2\0":
            raise MrmlBridgeError(f"{what}: NIfTI-2 magic {head[4:8]!r} is not a single-file '.nii' (n+2)")
        datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
        dim = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset, minimum = struct.unpack(endian + "q", head[168:176])[0], 544
        scaling = struct.unpack(endian + "2d", head[176:192])
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1:ndim + 1]):
        raise MrmlBridgeError(f"{what}: bad NIfTI header (dim={list(dim)})")
    if datatype not in NIFTI_SCALAR_TYPES:
        raise MrmlBridgeError(f"{what}: unsupported NIfTI datatype {datatype} (a scalar integer or float type "
                              "is expected)")
    if bitpix != NIFTI_SCALAR_TYPES[datatype]:
        raise MrmlBridgeError(f"{what}: bad NIfTI header (bitpix {bitpix} does not match datatype {datatype})")
    if vox_offset < minimum:
        raise MrmlBridgeError(f"{what}: bad NIfTI header (vox_offset {vox_offset} lies inside the header)")
    spacing = pixdim[1:min(ndim, 3) + 1]
    if not all(math.isfinite(v) and v != 0 for v in spacing) or not all(math.isfinite(v) for v in scaling):
        raise MrmlBridgeError(f"{what}: bad NIfTI header (spacing {list(spacing)} or scaling {list(scaling)} "
                              "not finite)")
    count = 1
    for size in dim[1:ndim + 1]:
        count *= size
    return vox_offset + count * (bitpix // 8)


def check_nifti_bytes(data: bytes, gzipped: bool, what: str = "file") -> None:
    """Check that bytes are a complete single-file NIfTI-1 or NIfTI-2 image.

    Args:
        data: the whole file (``.nii`` or ``.nii.gz``).
        gzipped: whether ``data`` is gzip-compressed (``.nii.gz``).
        what: how to name the file in error messages.

    Raises:
        MrmlBridgeError: not gzip (when promised), no valid NIfTI header, or less voxel data than the header's
            ``dim`` x ``bitpix`` promise.
    """
    if gzipped:
        if not data.startswith(b"\x1f\x8b"):
            raise MrmlBridgeError(f"{what}: not gzip-compressed although named .gz")
        # The header first (from the first decompressed bytes), then the whole stream against its promise.
        head = _gunzip_head(data, what)
        expected = _parse_nifti_header(head, what)
        found, _ = _gunzip_length(data, what, limit=expected + NIFTI_TRAILING_SLACK)
    else:
        expected = _parse_nifti_header(data[:1024], what)
        found = len(data)
        if found > expected + NIFTI_TRAILING_SLACK:
            raise MrmlBridgeError(f"{what}: {found} bytes, more than the {expected} its NIfTI header declares")
    if found < expected:
        raise MrmlBridgeError(f"{what}: NIfTI data too short: {found} of {expected} expected bytes (file truncated?)")
