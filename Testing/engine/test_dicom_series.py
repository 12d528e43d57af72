"""DICOM series in: grouping, slice order by position, refusals with reasons, and geometry equal to
SimpleITK's ImageSeriesReader (LPS) on synthetic and real CT series."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from activeseg.io.dicom_series import DicomSeriesError, read_series, scan_dicom_folder

from ..dicom_support import DCMQI, TOTALSEG_DICOM, write_ct_series


def _sitk_reference(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    (series_id,) = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_id))
    return reader.Execute()


def _assert_same_as_sitk(folder: Path, only_series_in: Path | None = None) -> None:
    scan = scan_dicom_folder(folder)
    assert len(scan.series) == 1, scan.skipped
    series = scan.series[0]
    volume = read_series(series)
    reference = _sitk_reference(only_series_in or folder)
    assert volume.geometry.size == reference.GetSize()
    assert volume.geometry.spacing == pytest.approx(reference.GetSpacing(), abs=1e-9)
    assert volume.geometry.origin == pytest.approx(reference.GetOrigin(), abs=1e-9)
    assert volume.geometry.direction == pytest.approx(reference.GetDirection(), abs=1e-9)
    # The header-only geometry (computed before any pixel is read) agrees too.
    assert series.geometry.origin == pytest.approx(reference.GetOrigin(), abs=1e-4)
    assert series.geometry.direction == pytest.approx(reference.GetDirection(), abs=1e-6)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference))


def test_slices_sorted_by_position_not_file_name(tmp_path: Path) -> None:
    hu, _ = write_ct_series(tmp_path / "s", slices=7, names=[f"{n}.dcm" for n in "gbfaecd"])
    scan = scan_dicom_folder(tmp_path)
    (series,) = scan.series
    volume = read_series(series)
    np.testing.assert_array_equal(volume.array, hu)
    assert volume.geometry.size == (16, 12, 7)
    assert volume.geometry.spacing == pytest.approx((0.8, 0.7, 2.5))
    assert volume.geometry.origin == pytest.approx((-100.0, -80.0, 40.0))
    assert series.case_id.startswith("ct-") and "Synthetic" not in series.case_id
    assert series.display_name == "Synthetic CT 2024-01-02"


def test_oblique_series_matches_sitk(tmp_path: Path) -> None:
    angle = np.deg2rad(20)
    write_ct_series(tmp_path / "s", row_cosine=(np.cos(angle), np.sin(angle), 0.0),
                    column_cosine=(0.0, 0.0, -1.0), origin=(10.0, -30.0, 55.0))
    _assert_same_as_sitk(tmp_path / "s")


def test_groups_series_and_reports_each_refusal(tmp_path: Path) -> None:
    write_ct_series(tmp_path / "good", seed=1)
    write_ct_series(tmp_path / "one", slices=1)
    steps = [0, 2.5, 5, 10, 12.5]  # one slice missing between 5 and 10
    write_ct_series(tmp_path / "gap", slices=5, positions=[(0, 0, z) for z in steps])
    write_ct_series(tmp_path / "tilt", slices=4, positions=[(0, 0.9 * k, 2.5 * k) for k in range(4)])
    write_ct_series(tmp_path / "dup", slices=4, positions=[(0, 0, z) for z in (0, 2.5, 2.5, 5)])
    mixed = [(1, 0, 0, 0, 1, 0)] * 3 + [(1, 0, 0, 0, 0, -1)]
    write_ct_series(tmp_path / "mixed", slices=4, orientations=mixed)
    write_ct_series(tmp_path / "mr", modality="MR")
    (tmp_path / "notes.txt").write_text("not DICOM")
    scan = scan_dicom_folder(tmp_path)
    assert len(scan.series) == 1 and scan.series[0].files[0].parent.name == "good"
    reasons = {s.folder.name: s.reason for s in scan.skipped}
    assert "single slice" in reasons["one"]
    assert "missing slices" in reasons["gap"]
    assert "gantry" in reasons["tilt"]
    assert "share a position" in reasons["dup"]
    assert "mixed slice orientations" in reasons["mixed"]
    assert "modality MR" in reasons["mr"]
    assert scan.ignored_files == 1
    for skipped in scan.skipped:  # the sentence names where, never the patient
        assert "Synthetic" not in skipped.sentence() and "SYNTH" not in skipped.sentence()


def test_undecodable_pixel_data_is_a_clear_error(tmp_path: Path) -> None:
    _, paths = write_ct_series(tmp_path / "s")
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) - 100])  # truncated pixel data
    (series,) = scan_dicom_folder(tmp_path).series
    with pytest.raises(DicomSeriesError, match="could not be decoded|disagrees"):
        read_series(series)


@pytest.mark.shared_data
def test_totalsegmentator_series_equals_image_series_reader(tmp_path: Path) -> None:
    if not TOTALSEG_DICOM.is_dir():
        pytest.skip(f"shared test data not found at {TOTALSEG_DICOM} (it lives beside the project, never in it)")
    # Shuffle the file names: order must come from the positions.
    folder = tmp_path / "ct"
    folder.mkdir()
    files = sorted(TOTALSEG_DICOM.iterdir())
    for index, path in enumerate(files):
        shutil.copyfile(path, folder / f"{(index * 7) % len(files):02d}.dcm")
    _assert_same_as_sitk(folder)
    (series,) = scan_dicom_folder(folder).series
    assert series.geometry.size == (512, 512, 20)
    assert series.uids_derived  # these anonymised files carry no SeriesInstanceUID


@pytest.mark.shared_data
def test_dcmqi_series_equals_image_series_reader_and_finds_its_seg() -> None:
    if not DCMQI.is_dir():
        pytest.skip(f"shared test data not found at {DCMQI} (it lives beside the project, never in it)")
    _assert_same_as_sitk(DCMQI, only_series_in=DCMQI / "ct-3slice")
    scan = scan_dicom_folder(DCMQI)
    assert [p.name for p in scan.segmentations] == ["liver.dcm"]
