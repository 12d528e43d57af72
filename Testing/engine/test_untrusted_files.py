"""Uploaded files are hostile until checked (issue 12, items 2, 3, 4, 9, 14).

Each file here is crafted the way an attacker or a careless exporter would make it; the readers must refuse
it from the header alone, before any decoder runs, with a message that names no server path.
"""

from __future__ import annotations

import gzip
import os
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from activeseg.errors import ActiveSegError, GeometryMismatchError, ImageReadError, LabelValueError
from activeseg.experiments.phantoms import make_phantom
from activeseg.io.seg_nrrd import read_segmentation_labelmap, write_segmentation_file
from activeseg.io.volumes import Geometry, read_volume, volume_from_bytes, write_volume

LABELS = {1: "lung", 2: "lesion"}
LIMIT = 64 << 20  # decoded-size limit used by the bomb tests, bytes


def _nrrd(fields: list[str], data: bytes = b"", newline: str = "\n") -> bytes:
    return (newline.join(["NRRD0004", *fields]) + newline + newline).encode() + data


def _volume_fields(sizes: str = "4 4 4", encoding: str = "raw", kind: str = "unsigned char") -> list[str]:
    return [f"type: {kind}", "dimension: 3", f"sizes: {sizes}", f"encoding: {encoding}",
            "space: left-posterior-superior", "space directions: (1,0,0) (0,1,0) (0,0,1)", "space origin: (0,0,0)"]


def _read(data: bytes, suffix: str, tmp_path: Path) -> object:
    """Decode bytes the way the server decodes an upload."""
    from activeseg.io.uploads import read_label_upload

    path = tmp_path / f"upload{suffix}"
    path.write_bytes(data)
    reference = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return read_label_upload(path, suffix, LABELS, reference, max_decoded_bytes=LIMIT)


# ------------------------------------------------------------------ item 2: detached data and file references
@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """A server file of exactly 64 bytes of class values: a detached header naming it would decode 'fine'."""
    path = tmp_path / "secret-server-file.raw"
    path.write_bytes(bytes([1]) * 64)
    return path


@pytest.mark.parametrize("suffix", [".nrrd", ".seg.nrrd"])
@pytest.mark.parametrize("spelling", ["data file: {}", "datafile: {}", "DATA FILE: {}", "data file:{}", "data file: LIST\n{}"])
def test_nrrd_naming_a_server_file_is_refused_without_reading_it(
    tmp_path: Path, secret: Path, suffix: str, spelling: str
) -> None:
    fields = _volume_fields() + [spelling.format(secret)]
    if suffix == ".seg.nrrd":
        fields += ["Segment0_ID:=Segment_1", "Segment0_Name:=lung", "Segment0_LabelValue:=1", "Segment0_Layer:=0"]
    with pytest.raises(ActiveSegError) as caught:
        _read(_nrrd(fields), suffix, tmp_path)
    assert str(secret) not in str(caught.value) and str(tmp_path) not in str(caught.value)
    assert "data file" in str(caught.value)


def test_detached_header_hidden_behind_carriage_returns_is_refused(tmp_path: Path, secret: Path) -> None:
    """teem splits header lines on a bare CR too; the check may not see fewer lines than a reader does."""
    with pytest.raises(ImageReadError, match="data file"):
        _read(_nrrd(_volume_fields() + [f"data file: {secret}"], newline="\r"), ".nrrd", tmp_path)


def test_detached_header_pointing_at_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            _read(_nrrd(_volume_fields() + [f"data file: {fifo}"]), ".nrrd", tmp_path)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader so the test process can end
        with open(fifo, "wb") as handle:
            handle.write(b"\0" * 64)
        worker.join(10)
        pytest.fail("reading an upload blocked on a FIFO named in its header")
    assert isinstance(outcome[0], ImageReadError)


def test_volume_from_bytes_refuses_detached_data(tmp_path: Path, secret: Path) -> None:
    with pytest.raises(ImageReadError, match="data file"):
        volume_from_bytes(_nrrd(_volume_fields() + [f"data file: {secret}"]), ".nrrd")


# ------------------------------------------------------------------ item 3: decompression bombs
def test_nrrd_declaring_more_than_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    sizes = "512 512 512"  # 128 MiB of uint8 declared, 2 x the limit; a few KiB sent
    data = gzip.compress(b"\0" * (1 << 20))
    started = time.perf_counter()
    with pytest.raises(ImageReadError, match="limit"):
        _read(_nrrd(_volume_fields(sizes, "gzip"), data), ".nrrd", tmp_path)
    assert time.perf_counter() - started < 5


def test_seg_nrrd_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    fields = _volume_fields("512 512 512", "gzip") + ["Segment0_Name:=lung", "Segment0_LabelValue:=1"]
    with pytest.raises(ImageReadError, match="limit"):
        _read(_nrrd(fields, gzip.compress(b"\0" * 1024)), ".seg.nrrd", tmp_path)


def test_gzip_stream_longer_than_declared_is_refused(tmp_path: Path) -> None:
    """A small header over a huge stream of zeros: counting stops just past the declared size."""
    data = gzip.compress(b"\1" * 64 + b"\0" * (8 << 20))
    with pytest.raises(ImageReadError, match="inflates beyond"):
        _read(_nrrd(_volume_fields("4 4 4", "gzip"), data), ".nrrd", tmp_path)


def _nifti_bytes(shape: tuple[int, int, int] = (4, 4, 4), dtype: type = np.uint8) -> bytes:
    image = sitk.GetImageFromArray(np.ones(shape[::-1], dtype=dtype))
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"activeseg-test-{os.getpid()}-{threading.get_ident()}.nii"
    try:
        sitk.WriteImage(image, str(path))
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def _with_dims(raw: bytes, dims: tuple[int, int, int]) -> bytes:
    head = bytearray(raw[:352])
    struct.pack_into("<8h", head, 40, 3, *dims, 1, 1, 1, 1)
    return bytes(head)


def test_nifti_declaring_more_than_the_limit_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = gzip.compress(_with_dims(_nifti_bytes(), (1024, 1024, 1024)) + b"\0" * (1 << 20))
    with pytest.raises(ImageReadError, match="limit"):
        _read(bomb, ".nii.gz", tmp_path)


# ------------------------------------------------------------------ item 4: NIfTI header validation
def test_nifti_with_zero_sizeof_hdr_and_half_its_data_is_refused(tmp_path: Path) -> None:
    raw = bytearray(_nifti_bytes((32, 32, 16)))
    struct.pack_into("<i", raw, 0, 0)
    half = bytes(raw[: 352 + (len(raw) - 352) // 2])
    for suffix, data in ((".nii", half), (".nii.gz", gzip.compress(half))):
        with pytest.raises(ImageReadError, match="header size"):
            _read(data, suffix, tmp_path)
        local = tmp_path / f"local{suffix}"
        local.write_bytes(data)
        with pytest.raises(ImageReadError):  # the same check guards local files (init, stored labels)
            read_volume(local)


@pytest.mark.parametrize(
    ("field", "offset", "fmt", "value", "message"),
    [
        ("magic ni1 (.hdr/.img pair)", 344, "4s", b"ni1\0", "single-file"),
        ("dim[0] = 0", 40, "<h", 0, "dim"),
        ("negative dimension", 42, "<h", -4, "dimensions"),
        ("unknown datatype", 70, "<h", 999, "datatype"),
        ("bitpix lies", 72, "<h", 64, "bitpix"),
        ("vox_offset inside header", 108, "<f", 100.0, "vox_offset"),
        ("NaN spacing", 80, "<f", float("nan"), "spacing"),
        ("infinite slope", 112, "<f", float("inf"), "scaling"),
    ],
)
def test_nifti_header_fields_are_validated(
    tmp_path: Path, field: str, offset: int, fmt: str, value: object, message: str
) -> None:
    raw = bytearray(_nifti_bytes())
    struct.pack_into(fmt, raw, offset, value)
    with pytest.raises(ImageReadError, match=message):
        _read(bytes(raw), ".nii", tmp_path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
def test_nan_voxels_are_refused_not_read_as_zero(tmp_path: Path, suffix: str) -> None:
    """ITK's NIfTI reader turns NaN/inf into 0; a label with them must be refused, not stored as background."""
    array = np.ones((4, 4, 4), dtype=np.float32)
    array[1, 2, 3] = np.nan
    array[0, 0, 0] = np.inf
    path = tmp_path / f"x{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(LabelValueError, match="2 voxel.*NaN or infinite"):
        _read(path.read_bytes(), suffix, tmp_path)


def test_errors_never_name_the_server_temp_file(tmp_path: Path) -> None:
    raw = _nifti_bytes()
    for data, suffix in ((raw[:300], ".nii"), (b"NRRD0004\ntype: float\n", ".nrrd"), (raw[:-10], ".nii")):
        with pytest.raises(ImageReadError) as caught:
            _read(data, suffix, tmp_path)
        assert str(tmp_path) not in str(caught.value) and "upload." not in str(caught.value)


def test_well_formed_uploads_still_decode(tmp_path: Path) -> None:
    image, label = make_phantom(3, shape=(8, 12, 10))
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        path = tmp_path / f"label{suffix}"
        write_volume(label.array, label.geometry, path)
        from activeseg.io.uploads import read_label_upload

        volume = read_label_upload(path, suffix, LABELS, label.geometry, max_decoded_bytes=LIMIT)
        assert np.array_equal(volume.array, label.array)
        assert volume.geometry == label.geometry


# ------------------------------------------------------------------ item 9: .seg.nrrd mapped by name
def _slicer_seg(path: Path, voxels_ijk: np.ndarray, segments: list[dict], origin: tuple[float, ...] = (0, 0, 0)) -> Path:
    import slicerio

    matrix = np.eye(4)
    matrix[:3, 3] = origin
    segmentation = {"voxels": voxels_ijk, "ijkToLPS": matrix, "encoding": "gzip", "segments": segments}
    slicerio.write_segmentation(str(path), segmentation)
    return path


def _segment(name: str, value: int, layer: int = 0) -> dict:
    return {"id": f"S_{name}", "name": name, "labelValue": value, "layer": layer, "color": [1.0, 0.0, 0.0]}


GRID = Geometry((6, 5, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_segment_with_label_value_zero_is_refused(tmp_path: Path) -> None:
    voxels = np.zeros((6, 5, 4), dtype=np.uint8)
    voxels[1:3, 1:3, 1:3] = 1
    path = _slicer_seg(tmp_path / "z.seg.nrrd", voxels, [_segment("lung", 1), _segment("lesion", 0)])
    with pytest.raises(LabelValueError, match="label value 0"):
        read_segmentation_labelmap(path, LABELS, reference=GRID)


def test_segment_whose_name_matches_no_class_is_refused_not_mapped_by_value(tmp_path: Path) -> None:
    voxels = np.zeros((6, 5, 4), dtype=np.uint8)
    voxels[1:3, 1:3, 1:3] = 2
    path = _slicer_seg(tmp_path / "n.seg.nrrd", voxels, [_segment("lung", 1), _segment("Segment_2", 2)])
    with pytest.raises(LabelValueError, match="Segment_2"):
        read_segmentation_labelmap(path, LABELS, reference=GRID)


def test_segments_map_by_name_whatever_their_label_values(tmp_path: Path) -> None:
    voxels = np.zeros((6, 5, 4), dtype=np.uint8)
    voxels[0:2] = 7  # "Lesion" stored with value 7
    voxels[3:5] = 3  # "LUNG" stored with value 3
    path = _slicer_seg(tmp_path / "m.seg.nrrd", voxels, [_segment("Lesion", 7), _segment("LUNG", 3)])
    labelmap = read_segmentation_labelmap(path, LABELS, reference=GRID).array  # (k, j, i)
    assert (labelmap[:, :, 0:2] == 2).all() and (labelmap[:, :, 3:5] == 1).all() and (labelmap[:, :, 2] == 0).all()


def test_overlapping_segments_resolve_in_class_order_not_file_order(tmp_path: Path) -> None:
    layers = np.zeros((2, 6, 5, 4), dtype=np.uint8)
    layers[0, 1:5, 1:4, 1:3] = 1  # lesion, listed first, layer 0
    layers[1, 0:6, 0:5, 0:4] = 1  # lung everywhere, layer 1, listed second
    path = _slicer_seg(tmp_path / "o.seg.nrrd", layers, [_segment("lesion", 1, 0), _segment("lung", 1, 1)])
    labelmap = read_segmentation_labelmap(path, LABELS, reference=GRID).array
    assert (labelmap[1:3, 1:4, 1:5] == 2).all()  # the lesion survives the lung drawn over it
    assert int((labelmap == 2).sum()) == 4 * 3 * 2


def test_cropped_seg_nrrd_is_padded_onto_the_image_grid(tmp_path: Path) -> None:
    cropped = np.zeros((3, 2, 2), dtype=np.uint8)
    cropped[:] = 1
    path = _slicer_seg(tmp_path / "c.seg.nrrd", cropped, [_segment("lung", 1)], origin=(2.0, 1.0, 1.0))
    volume = read_segmentation_labelmap(path, LABELS, reference=GRID)
    assert volume.geometry.size == GRID.size
    assert volume.array.shape == GRID.array_shape
    assert int(volume.array.sum()) == 12 and (volume.array[1:3, 1:3, 2:5] == 1).all()


def test_seg_nrrd_off_the_image_grid_or_outside_it_is_refused(tmp_path: Path) -> None:
    block = np.ones((2, 2, 2), dtype=np.uint8)
    off_grid = _slicer_seg(tmp_path / "g.seg.nrrd", block, [_segment("lung", 1)], origin=(0.5, 0, 0))
    with pytest.raises(GeometryMismatchError, match="voxel grid"):
        read_segmentation_labelmap(off_grid, LABELS, reference=GRID)
    outside = _slicer_seg(tmp_path / "x.seg.nrrd", block, [_segment("lung", 1)], origin=(5.0, 0, 0))
    with pytest.raises(GeometryMismatchError, match="outside"):
        read_segmentation_labelmap(outside, LABELS, reference=GRID)


def test_plain_labelmap_sent_as_seg_nrrd_says_which_format_to_use(tmp_path: Path) -> None:
    image, label = make_phantom(3, shape=(8, 12, 10))
    path = tmp_path / "plain.nrrd"
    write_volume(label.array, label.geometry, path)
    with pytest.raises(LabelValueError, match="format=.nrrd") as caught:
        read_segmentation_labelmap(path, LABELS, reference=label.geometry)
    assert "no_finding" not in str(caught.value)


def test_activeseg_written_seg_nrrd_round_trips(tmp_path: Path) -> None:
    image, label = make_phantom(4, shape=(8, 12, 10))
    path = tmp_path / "own.seg.nrrd"
    write_segmentation_file(path, label.array, label.geometry, LABELS)
    back = read_segmentation_labelmap(path, LABELS, reference=label.geometry)
    assert np.array_equal(back.array, label.array)
