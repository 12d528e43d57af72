"""The two programs agree on the protocol: each defines the shared constants and the NIfTI check once, and this
test, which can import both, compares them. (Neither side imports the other: the module runs in Slicer's Python
without the backend installed.)

* constants: API prefix, the URL line ``activeseg serve`` prints, the token's environment variable, job and case
  states, upload formats, the uncertainty map's scale, the NIfTI scalar types;
* the typed client responses have the fields of the server's response schemas;
* the NIfTI header check: ``ActiveSegLib.fileformats.check_nifti_bytes`` (module) and
  ``activeseg.io.nifti_integrity.check_nifti_complete`` (backend) give the same verdict on a corpus of valid,
  truncated, forged and oversized files (NIfTI-1 and -2, both byte orders, gzip members and padding).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ActiveSegLib import MrmlBridgeError, protocol, responses
from ActiveSegLib.fileformats import NIFTI_SCALAR_TYPES, check_nifti_bytes

activeseg = pytest.importorskip("activeseg", reason="the backend is not installed in this environment")


# ----------------------------------------------------------------------------------------- constants


def test_shared_constants_agree() -> None:
    from activeseg.api import API_PREFIX
    from activeseg.api.labels import UploadFormat
    from activeseg.api.server import URL_LINE_PREFIX
    from activeseg.io.nifti_integrity import NIFTI_SCALAR_TYPES as ENGINE_TYPES
    from activeseg.jobs.runner import FINAL_STATES
    from activeseg.method.uncertainty_map import UNCERTAINTY_SCALE
    from activeseg.store.datastore import STATES

    assert protocol.API_PREFIX == API_PREFIX
    assert protocol.URL_LINE_PREFIX == URL_LINE_PREFIX
    assert set(protocol.FINISHED_JOB_STATES) == set(FINAL_STATES)
    assert set(protocol.CASE_STATES) == {str(s) for s in STATES}
    assert set(protocol.UPLOAD_FORMATS) == set(typing.get_args(UploadFormat))
    assert protocol.UNCERTAINTY_PERCENT == UNCERTAINTY_SCALE
    assert NIFTI_SCALAR_TYPES == ENGINE_TYPES


def test_the_launcher_reads_the_line_the_server_prints() -> None:
    from activeseg.api.server import URL_LINE_PREFIX

    from ActiveSegLib.launcher import BackendLauncher

    launcher = BackendLauncher("python", "/data")
    launcher._read_output(io.StringIO(f"INFO starting\n{URL_LINE_PREFIX}http://127.0.0.1:41234\n"))
    assert launcher._url == "http://127.0.0.1:41234"


def test_the_server_reads_its_token_from_the_variable_the_launcher_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    from activeseg.cli.main import build_parser

    from ActiveSegLib.launcher import BackendLauncher

    env = BackendLauncher("python", "/data", token="t0k3n").child_env()
    monkeypatch.setenv(protocol.TOKEN_ENV, env[protocol.TOKEN_ENV])
    args = build_parser().parse_args(["serve", "--data", "/data"])
    assert args.token == "t0k3n"


SCHEMA_PAIRS = [
    ("InfoOut", responses.Info), ("CaseOut", responses.Case), ("CaseListOut", responses.CaseList),
    ("QueueItem", responses.QueueItem), ("QueueOut", responses.Queue), ("EpochPoint", responses.EpochPoint),
    ("JobProgress", responses.JobProgress), ("JobOut", responses.Job), ("ModelOut", responses.ModelVersion),
    ("ModelListOut", responses.ModelList), ("ActivationOut", responses.Activation), ("CurvePoint", responses.CurvePoint),
]


@pytest.mark.parametrize("schema, dataclass", SCHEMA_PAIRS, ids=[p[0] for p in SCHEMA_PAIRS])
def test_typed_responses_have_the_schema_fields(schema: str, dataclass: type) -> None:
    from activeseg.api import schemas

    server = set(getattr(schemas, schema).model_fields)
    client = {f.name for f in dataclasses.fields(dataclass)}
    assert client == server, f"{dataclass.__name__} vs {schema}: only client {client - server}, only server " \
                             f"{server - client}"


# ----------------------------------------------------------------------------------------- the NIfTI check


def _nifti1(data: np.ndarray, *, endian: str = "<", datatype: int = 4, bitpix: int = 16,
            dim0: int | None = None, magic: bytes = b"n+1\0", vox_offset: float = 352.0,
            pixdim: tuple[float, float, float] = (0.8, 0.8, 2.0), slope: float = 1.0) -> bytes:
    """A single-file NIfTI-1 (header fields settable, to forge bad ones)."""
    header = bytearray(352)
    shape = data.shape[::-1]  # (i, j, k)
    struct.pack_into(endian + "i", header, 0, 348)
    dims = [len(shape) if dim0 is None else dim0, *shape] + [1] * (7 - len(shape))
    struct.pack_into(endian + "8h", header, 40, *dims)
    struct.pack_into(endian + "2h", header, 70, datatype, bitpix)
    struct.pack_into(endian + "8f", header, 76, 1.0, *pixdim, 0, 0, 0, 0)
    struct.pack_into(endian + "f", header, 108, vox_offset)
    struct.pack_into(endian + "2f", header, 112, slope, 0.0)
    header[344:348] = magic
    body = data.astype(data.dtype.newbyteorder(endian)).tobytes()
    return bytes(header) + body


def _nifti2(data: np.ndarray) -> bytes:
    header = bytearray(544)
    shape = data.shape[::-1]
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<2h", header, 12, 16, 32)  # float32
    struct.pack_into("<8q", header, 16, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into("<8d", header, 104, 1.0, 0.8, 0.8, 2.0, 0, 0, 0, 0)
    struct.pack_into("<q", header, 168, 544)
    struct.pack_into("<2d", header, 176, 1.0, 0.0)
    return bytes(header) + data.astype("<f4").tobytes()


def _sitk_file(tmp: Path, name: str, array: np.ndarray) -> bytes:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    path = tmp / name
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


VOLUME = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)

CORPUS: dict[str, tuple[Callable[[Path], bytes], bool]] = {
    # name: (bytes maker, gzipped)
    "sitk int16 .nii.gz": (lambda t: _sitk_file(t, "a.nii.gz", VOLUME), True),
    "sitk float32 .nii": (lambda t: _sitk_file(t, "b.nii", VOLUME.astype(np.float32)), False),
    "sitk uint8 .nii.gz": (lambda t: _sitk_file(t, "c.nii.gz", (VOLUME % 3).astype(np.uint8)), True),
    "big-endian NIfTI-1": (lambda t: _nifti1(VOLUME, endian=">"), False),
    "NIfTI-2 float32": (lambda t: _nifti2(VOLUME.astype(np.float32)), False),
    "NIfTI-2 gzip": (lambda t: gzip.compress(_nifti2(VOLUME.astype(np.float32))), True),
    "two gzip members": (lambda t: gzip.compress(_nifti1(VOLUME)[:500]) + gzip.compress(_nifti1(VOLUME)[500:]), True),
    "gzip with zero padding": (lambda t: gzip.compress(_nifti1(VOLUME)) + b"\0" * 64, True),
    # truncated
    "raw cut by one byte": (lambda t: _nifti1(VOLUME)[:-1], False),
    "raw cut inside the header": (lambda t: _nifti1(VOLUME)[:300], False),
    "gzip cut in half": (lambda t: (lambda g: g[: len(g) // 2])(gzip.compress(_nifti1(VOLUME))), True),
    "gzip of a cut file": (lambda t: gzip.compress(_nifti1(VOLUME)[:-10]), True),
    "NIfTI-2 cut": (lambda t: _nifti2(VOLUME.astype(np.float32))[:-4], False),
    # forged or unsupported headers
    "ANALYZE/.hdr magic": (lambda t: _nifti1(VOLUME, magic=b"ni1\0"), False),
    "dim[0] = 0": (lambda t: _nifti1(VOLUME, dim0=0), False),
    "dim[0] = 8": (lambda t: _nifti1(VOLUME, dim0=8), False),
    "RGB datatype": (lambda t: _nifti1(VOLUME, datatype=128, bitpix=24), False),
    "bitpix does not match datatype": (lambda t: _nifti1(VOLUME, datatype=4, bitpix=8), False),
    "vox_offset inside the header": (lambda t: _nifti1(VOLUME, vox_offset=348.0)[:348] + _nifti1(VOLUME)[352:], False),
    "fractional vox_offset": (lambda t: _nifti1(VOLUME, vox_offset=352.5), False),
    "NaN spacing": (lambda t: _nifti1(VOLUME, pixdim=(float("nan"), 1.0, 1.0)), False),
    "zero spacing": (lambda t: _nifti1(VOLUME, pixdim=(1.0, 0.0, 1.0)), False),
    "infinite scaling": (lambda t: _nifti1(VOLUME, slope=float("inf")), False),
    "not NIfTI at all": (lambda t: b"NRRD0004\n" + b"\0" * 400, False),
    "named .gz, not gzip": (lambda t: _nifti1(VOLUME), True),
    # more data than declared (a decompression bomb's tail)
    "raw with 2 MiB extra": (lambda t: _nifti1(VOLUME) + b"\0" * (2 << 20), False),
    "gzip with 2 MiB extra": (lambda t: gzip.compress(_nifti1(VOLUME) + b"\0" * (2 << 20)), True),
    "raw with a few extra bytes": (lambda t: _nifti1(VOLUME) + b"\0" * 16, False),
}
VALID = {"sitk int16 .nii.gz", "sitk float32 .nii", "sitk uint8 .nii.gz", "big-endian NIfTI-1", "NIfTI-2 float32",
         "NIfTI-2 gzip", "two gzip members", "gzip with zero padding", "raw with a few extra bytes"}


def _module_verdict(data: bytes, gzipped: bool) -> bool:
    try:
        check_nifti_bytes(data, gzipped=gzipped, what="x")
    except MrmlBridgeError:
        return False
    return True


def _engine_verdict(data: bytes, gzipped: bool, tmp_path: Path) -> bool:
    from activeseg.errors import ImageReadError
    from activeseg.io.nifti_integrity import check_nifti_complete

    path = tmp_path / ("x.nii.gz" if gzipped else "x.nii")
    path.write_bytes(data)
    try:
        check_nifti_complete(path, compressed=gzipped)
    except ImageReadError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_both_nifti_checks_give_the_same_verdict(name: str, tmp_path: Path) -> None:
    make, gzipped = CORPUS[name]
    data = make(tmp_path)
    module, engine = _module_verdict(data, gzipped), _engine_verdict(data, gzipped, tmp_path)
    assert module == engine, f"{name}: module {'accepts' if module else 'refuses'}, backend " \
                             f"{'accepts' if engine else 'refuses'}"
    assert module == (name in VALID), f"{name}: expected {'accept' if name in VALID else 'refuse'}"
