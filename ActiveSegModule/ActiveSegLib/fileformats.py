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
import struct
import zlib
from collections.abc import Iterator

from .errors import MrmlBridgeError

__all__ = ["check_nrrd_bytes", "check_nifti_bytes", "check_image_bytes", "image_format"]

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


def _gunzip_length(data: bytes, what: str) -> tuple[int, bytes]:
    """Decompressed length of gzip data (concatenated members allowed) and its first decompressed bytes.

    Args:
        data: gzip bytes.
        what: file name for messages.

    Returns:
        (number of decompressed bytes, the first up-to-1024 decompressed bytes).

    Raises:
        MrmlBridgeError: corrupt or truncated gzip data.
    """
    total, head, pos = 0, b"", 0
    decompressor = zlib.decompressobj(wbits=31)  # 31: gzip wrapper only
    try:
        while True:
            if pos >= len(data):
                if not decompressor.eof:
                    raise MrmlBridgeError(f"{what}: gzip data ends early (file truncated?)")
                return total, head
            chunk = data[pos:pos + _CHUNK]
            pos += len(chunk)
            out = decompressor.decompress(chunk)
            if len(head) < 1024:
                head += out[: 1024 - len(head)]
            total += len(out)
            if decompressor.eof:
                # Bytes after the end of a member start another member (gzip allows concatenation);
                # trailing zero padding is tolerated like gzip(1) does.
                pos -= len(decompressor.unused_data)
                if not data[pos:].strip(b"\0"):
                    return total, head
                decompressor = zlib.decompressobj(wbits=31)
    except zlib.error as exc:
        raise MrmlBridgeError(f"{what}: corrupt gzip data ({exc})") from exc


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


def _parse_nifti_header(head: bytes, what: str) -> int:
    """Bytes a single-file NIfTI-1/2 needs (``vox_offset`` + voxel data), from its first 540+ bytes."""
    if len(head) >= 4:
        for endian in ("<", ">"):
            (sizeof_hdr,) = struct.unpack(endian + "i", head[:4])
            if sizeof_hdr == 348 and len(head) >= 348:
                magic = head[344:348]
                if magic != b"n+1\0":
                    raise MrmlBridgeError(
                        f"{what}: NIfTI-1 magic {magic!r} is not a single-file '.nii' (n+1); .hdr/.img pairs "
                        "and ANALYZE files are not supported"
                    )
                dim = struct.unpack(endian + "8h", head[40:56])
                bitpix = struct.unpack(endian + "h", head[72:74])[0]
                vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
                break
            if sizeof_hdr == 540 and len(head) >= 540:
                if head[4:8] != b"n+2\0":
                    raise MrmlBridgeError(f"{what}: NIfTI-2 magic {head[4:8]!r} is not a single-file '.nii' (n+2)")
                bitpix = struct.unpack(endian + "h", head[14:16])[0]
                dim = struct.unpack(endian + "8q", head[16:80])
                vox_offset = struct.unpack(endian + "q", head[168:176])[0]
                break
        else:
            raise MrmlBridgeError(f"{what}: not a NIfTI file (bad header size field)")
    else:
        raise MrmlBridgeError(f"{what}: not a NIfTI file (too short)")
    ndim = dim[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dim[1:ndim + 1]) or bitpix <= 0 or bitpix % 8:
        raise MrmlBridgeError(f"{what}: bad NIfTI header (dim={list(dim)}, bitpix={bitpix})")
    count = 1
    for size in dim[1:ndim + 1]:
        count *= size
    return max(vox_offset, 348) + count * (bitpix // 8)


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
        found, head = _gunzip_length(data, what)
    else:
        found, head = len(data), data[:1024]
    expected = _parse_nifti_header(head, what)
    if found < expected:
        raise MrmlBridgeError(f"{what}: NIfTI data too short: {found} of {expected} expected bytes (file truncated?)")
