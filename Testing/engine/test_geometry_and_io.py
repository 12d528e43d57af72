"""Geometry survives every write: pseudo-labels (.seg.nrrd) and labels carry exactly the image's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from activeseg.errors import ImageReadError, NotThreeDimensionalError
from activeseg.io.volumes import Geometry, read_volume, volume_from_bytes, write_volume
from activeseg.experiments.phantoms import make_phantom
from activeseg.io.seg_nrrd import read_segmentation_labelmap, segmentation_bytes, write_segmentation_file

LABELS = {1: "lung", 2: "lesion"}


def rotated_direction(angle_deg: float = 25.0) -> tuple[float, ...]:
    """A rotation about an oblique axis (LPS), row-major."""
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    return tuple(float(v) for v in (rz @ rx).ravel())


@pytest.fixture()
def oblique_phantom(tmp_path: Path) -> tuple[Path, np.ndarray]:
    image, label = make_phantom(11, shape=(12, 24, 20), spacing=(0.7, 1.3, 3.1), direction=rotated_direction())
    path = tmp_path / "image.nrrd"
    write_volume(image.array, image.geometry, path)
    return path, label.array


@pytest.mark.parametrize("suffix", [".seg.nrrd"])
def test_pseudo_label_has_exactly_the_image_geometry(oblique_phantom: tuple[Path, np.ndarray], tmp_path: Path, suffix: str) -> None:
    image_path, labelmap = oblique_phantom
    image = sitk.ReadImage(str(image_path))
    geometry = Geometry.of(image)
    target = tmp_path / f"pseudo{suffix}"
    write_segmentation_file(target, labelmap, geometry, LABELS)
    written = sitk.ReadImage(str(target))
    assert written.GetSize() == image.GetSize()
    assert np.allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-6)
    assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-6)
    assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-6)
    back = read_segmentation_labelmap(target, LABELS)
    assert np.array_equal(back.array, labelmap)


def test_seg_nrrd_has_named_coloured_segments(oblique_phantom: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    import slicerio

    image_path, labelmap = oblique_phantom
    target = tmp_path / "x.seg.nrrd"
    write_segmentation_file(target, labelmap, Geometry.of(sitk.ReadImage(str(image_path))), LABELS)
    segmentation = slicerio.read_segmentation(str(target))
    names = {s["name"]: s for s in segmentation["segments"]}
    assert set(names) == {"lung", "lesion"}
    assert names["lung"]["labelValue"] == 1 and names["lesion"]["labelValue"] == 2
    assert all(len(s["color"]) == 3 for s in names.values())


def test_segmentation_bytes_round_trip(oblique_phantom: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    image_path, labelmap = oblique_phantom
    geometry = Geometry.of(sitk.ReadImage(str(image_path)))
    data = segmentation_bytes(labelmap, geometry, LABELS)
    volume = volume_from_bytes(data, ".seg.nrrd", dtype=np.uint8)
    assert volume.geometry.size == geometry.size
    assert np.allclose(volume.geometry.origin, geometry.origin)


def test_a_label_downloads_as_the_same_bytes_whenever_it_is_asked_for(
        oblique_phantom: tuple[Path, np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    """GET .../label renders the stored label per request; pynrrd stamped each file with the current second, so two
    downloads of one label differed when a second boundary fell between them (a clean-clone run of
    test_full_disk_answers_507_and_keeps_the_acknowledged_label failed on exactly that)."""
    import datetime as real_datetime

    import nrrd.writer

    image_path, labelmap = oblique_phantom
    geometry = Geometry.of(sitk.ReadImage(str(image_path)))
    downloads = []
    for second in (1, 2):
        class Clock(real_datetime.datetime):
            @classmethod
            def utcnow(cls) -> real_datetime.datetime:  # type: ignore[override]
                return real_datetime.datetime(2026, 1, 1, 0, 0, second)

        monkeypatch.setattr(nrrd.writer, "datetime", Clock)
        downloads.append(segmentation_bytes(labelmap, geometry, LABELS))
    assert downloads[0] == downloads[1]
    assert volume_from_bytes(downloads[0], ".seg.nrrd", dtype=np.uint8).geometry.size == geometry.size


def test_corrupt_and_2d_images_are_named_in_the_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "broken.nii.gz"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="broken.nii.gz"):
        read_volume(corrupt)
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkFloat32), str(flat))
    with pytest.raises(NotThreeDimensionalError, match="flat.nrrd"):
        read_volume(flat)
    with pytest.raises(ImageReadError, match="unsupported"):
        volume_from_bytes(b"x", ".png")


def test_phantoms_are_deterministic_and_ct_like() -> None:
    a_image, a_label = make_phantom(5)
    b_image, b_label = make_phantom(5)
    c_image, _ = make_phantom(6)
    assert np.array_equal(a_image.array, b_image.array) and np.array_equal(a_label.array, b_label.array)
    assert not np.array_equal(a_image.array, c_image.array)
    hu = a_image.array
    assert hu.min() < -900 and hu.max() > 500  # air and bone
    lungs = hu[a_label.array == 1]
    assert -950 < float(np.median(lungs)) < -750
    assert set(np.unique(a_label.array)) <= {0, 1, 2}
    assert a_image.geometry.spacing[2] > a_image.geometry.spacing[0]  # anisotropic
    assert any(abs(o) > 1 for o in a_image.geometry.origin)  # non-identity origin


def test_phantoms_vary_in_lesion_count() -> None:
    from activeseg.experiments.phantoms import draw_parameters

    counts = {len(draw_parameters(np.random.default_rng(seed)).lesions) for seed in range(40)}
    assert counts == {0, 1, 2, 3, 4}
    with_lesion = [seed for seed in range(10) if draw_parameters(np.random.default_rng(seed)).lesions]
    _, label = make_phantom(with_lesion[0])
    assert (label.array == 2).any()


def test_truncated_nifti_with_a_complete_header_is_refused(tmp_path: Path) -> None:
    """SimpleITK would zero-fill the missing voxels; the integrity check refuses the file instead."""
    import gzip

    image, _ = make_phantom(2, shape=(12, 24, 20))
    whole = tmp_path / "whole.nii"
    write_volume(image.array, image.geometry, whole, compress=False)
    raw = whole.read_bytes()
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: len(raw) - 500])
    with pytest.raises(ImageReadError, match="cut.nii.*truncated"):
        read_volume(cut)
    cut_gz = tmp_path / "cut.nii.gz"
    cut_gz.write_bytes(gzip.compress(raw)[:-40])
    with pytest.raises(ImageReadError, match="cut.nii.gz"):
        read_volume(cut_gz)
    assert read_volume(whole).array.shape == image.array.shape
