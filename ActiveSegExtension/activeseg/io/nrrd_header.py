"""Validation of NRRD files (plain labelmaps and Slicer ``.seg.nrrd``) before ITK or pynrrd reads them.

Why: both readers follow a header's ``data file:`` field to any path on the server (a file, ``/dev/zero``, a
FIFO), and both allocate what ``sizes`` x ``type`` declare before reading a byte of data. So an uploaded NRRD
is checked here first, from its header alone: attached data only (no field that names another file), a known
type and encoding, and a declared decoded size under the configured limit; then the attached data is counted
(decompressed in bounded chunks) against that size, so a truncated file or a compressed bomb is refused before
any reader decodes it.
"""

from __future__ import annotations

import bz2
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from activeseg.errors import ImageReadError

__all__ = ["NrrdHeader", "read_nrrd_header", "check_nrrd_complete", "DEFAULT_MAX_HEADER_BYTES"]

DEFAULT_MAX_HEADER_BYTES = 1 << 20  # a .seg.nrrd with hundreds of segments has a header of tens of KiB
_CHUNK = 1 << 20
_TRAILING_SLACK = 1 << 20

# NRRD type names (the spec's spellings, lower case, single spaces) -> bytes per sample.
_TYPE_SIZES: dict[str, int] = {}
for _size, _names in (
    (1, "signed char,int8,int8_t,uchar,unsigned char,uint8,uint8_t"),
    (2, "short,short int,signed short,signed short int,int16,int16_t,ushort,unsigned short,unsigned short int,"
        "uint16,uint16_t"),
    (4, "int,signed int,int32,int32_t,uint,unsigned int,uint32,uint32_t,float"),
    (8, "longlong,long long,long long int,signed long long,signed long long int,int64,int64_t,ulonglong,"
        "unsigned long long,unsigned long long int,uint64,uint64_t,double"),
):
    for _name in _names.split(","):
        _TYPE_SIZES[_name] = _size

_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
# Field names (lower case, spaces removed) that make a reader open another file.
_FILE_FIELDS = ("datafile",)
_FILE_FIELD_RE = re.compile(rb"(^|[\r\n])[ \t]*data[ \t]*file[ \t]*:", re.IGNORECASE)


@dataclass(frozen=True)
class NrrdHeader:
    """The layout of a NRRD with attached data.

    Attributes:
        fields: header fields, keys lower case without spaces (``spacedirections``), values stripped.
        key_values: ``key:=value`` pairs (Slicer's segment metadata), in file order.
        dimension: number of axes.
        sizes: samples per axis, fastest first (for a ``.seg.nrrd``: [layers,] i, j, k).
        sample_bytes: bytes per sample.
        encoding: ``raw``, ``gzip`` or ``bzip2``.
        data_offset: byte offset of the attached data in the file.
    """

    fields: dict[str, str]
    key_values: dict[str, str]
    dimension: int
    sizes: tuple[int, ...]
    sample_bytes: int
    encoding: str
    data_offset: int

    @property
    def data_bytes(self) -> int:
        """Decoded data size in bytes (sizes x type)."""
        return math.prod(self.sizes) * self.sample_bytes


def _refuse_file_fields(head: bytes) -> None:
    """Refuse a ``data file`` field anywhere in the first bytes, whatever line ending a reader might split on."""
    end = head.find(b"\n\n")
    if _FILE_FIELD_RE.search(head if end < 0 else head[:end]):
        raise ImageReadError("NRRD headers that name a data file (detached data) are not accepted; send the data attached")


def _header_bytes(path: Path, max_header_bytes: int) -> tuple[bytes, int]:
    """The header's bytes (without the blank line) and the data offset."""
    with open(path, "rb") as handle:
        head = handle.read(max_header_bytes + 4)
    if not head.startswith(b"NRRD000"):
        raise ImageReadError("not a NRRD file (no 'NRRD000x' magic)")
    _refuse_file_fields(head)
    candidates = [(head.find(sep), len(sep)) for sep in (b"\n\n", b"\r\n\r\n")]
    found = [(at, n) for at, n in candidates if at >= 0]
    if not found:
        if len(head) > max_header_bytes:
            raise ImageReadError(f"NRRD header longer than {max_header_bytes} bytes")
        raise ImageReadError("NRRD header never ends (no blank line before the data; file truncated?)")
    end, separator = min(found)
    if end > max_header_bytes:
        raise ImageReadError(f"NRRD header longer than {max_header_bytes} bytes")
    return head[:end], end + separator


def read_nrrd_header(path: Path, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> NrrdHeader:
    """Parse and check a NRRD header without reading its data.

    Args:
        path: the file.
        max_header_bytes: refuse longer headers.

    Raises:
        ImageReadError: no NRRD magic, a header that never ends or is too long, any field naming another file
            (``data file``: detached data is refused, whatever path it names), a missing or malformed required
            field, an unknown type or encoding, or byte/line skips.
    """
    raw, data_offset = _header_bytes(Path(path), max_header_bytes)
    fields: dict[str, str] = {}
    key_values: dict[str, str] = {}
    for line in re.split(r"[\r\n]+", raw.decode("latin-1"))[1:]:
        if not line.strip() or line.startswith("#"):
            continue
        if ":=" in line and (": " not in line or line.index(":=") < line.index(": ")):
            key, value = line.split(":=", 1)
            key_values[key] = value
            continue
        if ":" not in line:
            raise ImageReadError(f"malformed NRRD header line {line[:80]!r}")
        key, value = line.split(":", 1)
        name = "".join(key.split()).lower()
        if name in _FILE_FIELDS:
            raise ImageReadError("NRRD headers that name a data file (detached data) are not accepted")
        if name in fields:
            raise ImageReadError(f"NRRD header repeats the field {key.strip()!r}")
        fields[name] = value.strip()
    for required in ("type", "dimension", "sizes", "encoding"):
        if required not in fields:
            raise ImageReadError(f"NRRD header lacks the required field {required!r}")
    type_name = " ".join(fields["type"].lower().split())
    if type_name not in _TYPE_SIZES:
        raise ImageReadError(f"unsupported NRRD type {fields['type'][:40]!r}")
    encoding = _ENCODINGS.get(fields["encoding"].lower())
    if encoding is None:
        raise ImageReadError(f"unsupported NRRD encoding {fields['encoding'][:40]!r}; use raw, gzip or bzip2")
    try:
        dimension = int(fields["dimension"])
        sizes = tuple(int(s) for s in fields["sizes"].split())
    except ValueError as exc:
        raise ImageReadError("bad NRRD 'dimension' or 'sizes' field") from exc
    if not 1 <= dimension <= 16 or len(sizes) != dimension or any(s < 1 for s in sizes):
        raise ImageReadError(f"NRRD sizes {list(sizes)[:16]} do not match dimension {dimension}")
    for skip in ("byteskip", "lineskip"):
        if fields.get(skip, "0").strip() != "0":
            raise ImageReadError(f"NRRD '{skip}' is not supported in uploads")
    sample = _TYPE_SIZES[type_name]
    if sample > 1 and fields.get("endian", "").lower() not in ("little", "big"):
        raise ImageReadError(f"NRRD type {type_name!r} needs an 'endian: little' or 'endian: big' field")
    return NrrdHeader(fields, key_values, dimension, sizes, sample, encoding, data_offset)


def _data_chunks(path: Path, offset: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(offset)
        while chunk := handle.read(_CHUNK):
            yield chunk


def _decoded_length(path: Path, header: NrrdHeader, stop_after: int) -> int:
    """Decoded bytes of the attached data, counted in bounded chunks up to just past ``stop_after``."""
    chunks = _data_chunks(path, header.data_offset)
    if header.encoding == "raw":
        return sum(len(c) for c in chunks)
    total = 0
    try:
        if header.encoding == "gzip":
            decompressor = zlib.decompressobj(wbits=15 + 32)  # gzip or zlib wrapper, as teem and pynrrd accept
            for chunk in chunks:
                data = chunk
                while data and not decompressor.eof:
                    total += len(decompressor.decompress(data, 1 << 22))
                    data = decompressor.unconsumed_tail
                    if total > stop_after:
                        return total
                if decompressor.eof:
                    return total
            raise ImageReadError("truncated: the NRRD's gzip data ends before its end marker")
        bz = bz2.BZ2Decompressor()
        for chunk in chunks:
            data = chunk
            while not bz.eof:
                total += len(bz.decompress(data, 1 << 22))
                data = b""
                if total > stop_after:
                    return total
                if bz.needs_input:
                    break
            if bz.eof:
                return total
        raise ImageReadError("truncated: the NRRD's bzip2 data ends before its end marker")
    except (zlib.error, OSError, EOFError) as exc:
        raise ImageReadError(f"corrupt {header.encoding} data in the NRRD ({exc})") from exc


def check_nrrd_complete(
    path: Path, max_decoded_bytes: int | None = None, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> NrrdHeader:
    """Check a NRRD's header (:func:`read_nrrd_header`), its declared decoded size, then its data length.

    Args:
        path: the file.
        max_decoded_bytes: refuse a header declaring more decoded data than this (``None``: no limit).
        max_header_bytes: refuse longer headers.

    Returns:
        The header.

    Raises:
        ImageReadError: as :func:`read_nrrd_header`; declared data above ``max_decoded_bytes``; fewer data
            bytes than declared (truncated); or compressed data inflating beyond the declared size (a bomb).
    """
    header = read_nrrd_header(path, max_header_bytes)
    if max_decoded_bytes is not None and header.data_bytes > max_decoded_bytes:
        raise ImageReadError(
            f"the NRRD header declares {header.data_bytes} bytes of data (sizes {list(header.sizes)}), more than "
            f"the limit of {max_decoded_bytes} bytes"
        )
    found = _decoded_length(Path(path), header, header.data_bytes + _TRAILING_SLACK)
    if found < header.data_bytes:
        raise ImageReadError(f"truncated: {found} bytes of NRRD data, the header declares {header.data_bytes}")
    if header.encoding != "raw" and found > header.data_bytes + _TRAILING_SLACK:
        raise ImageReadError(f"the NRRD's compressed data inflates beyond the {header.data_bytes} bytes declared")
    return header
