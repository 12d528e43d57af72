"""DICOM SEG out and in: highdicom-written SEGs reference the right instances, carry names, colours and
codes, read back voxel-identical; foreign SEGs map onto their series' grid or are refused by name."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from activeseg.errors import GeometryMismatchError, ImageReadError, LabelValueError
from activeseg.io.dicom_seg import PRIVATE_SCHEME, build_dicom_seg, read_dicom_seg
from activeseg.io.dicom_series import DicomSeries, DicomSeriesError, scan_dicom_folder

from ..dicom_support import DCMQI, write_ct_series

LABELS = {1: "liver", 2: "lesion", 3: "my organ"}


def _series(folder: Path, **kwargs: object) -> DicomSeries:
    write_ct_series(folder, **kwargs)  # type: ignore[arg-type]
    (series,) = scan_dicom_folder(folder).series
    return series


def _headers(series: DicomSeries) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]


def _roundtrip(ds: pydicom.Dataset) -> pydicom.Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _label(series: DicomSeries) -> np.ndarray:
    label = np.zeros(series.geometry.array_shape, dtype=np.uint8)
    label[1:4, 2:9, 3:12] = 1
    label[2, 4:6, 5:7] = 2
    label[5, 0:3, 0:4] = 3
    return label


def test_write_then_read_is_voxel_identical_and_references_each_instance(tmp_path: Path) -> None:
    angle = np.deg2rad(15)
    series = _series(tmp_path / "s", row_cosine=(np.cos(angle), np.sin(angle), 0), column_cosine=(0, 0, -1))
    label = _label(series)
    seg = _roundtrip(build_dicom_seg(label, _headers(series), LABELS, series_instance_uid=generate_uid(),
                                     sop_instance_uid=generate_uid(), software_version="test"))
    back = read_dicom_seg(seg, series, LABELS)
    np.testing.assert_array_equal(back.array, label)
    assert back.geometry == series.geometry
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(series.sop_instance_uids)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.series_uid
    assert seg.StudyInstanceUID == series.study_uid
    for frame in seg.PerFrameFunctionalGroupsSequence:  # each frame's source is the slice at its position
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = series.sop_instance_uids.index(source)
        expected = np.asarray(series.geometry.origin) + k * series.geometry.spacing[2] * np.asarray(series.geometry.direction).reshape(3, 3)[:, 2]
        assert np.allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient], expected, atol=1e-3)
    segments = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert [segments[n].SegmentLabel for n in (1, 2, 3)] == ["liver", "lesion", "my organ"]
    assert segments[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SCT liver
    assert segments[2].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"  # abnormal structure
    assert segments[3].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
    assert all("RecommendedDisplayCIELabValue" in s for s in segments.values())
    assert len({tuple(s.RecommendedDisplayCIELabValue) for s in segments.values()}) == 3


def test_no_finding_label_is_a_valid_empty_seg(tmp_path: Path) -> None:
    series = _series(tmp_path / "s")
    empty = np.zeros(series.geometry.array_shape, dtype=np.uint8)
    seg = _roundtrip(build_dicom_seg(empty, _headers(series), LABELS, series_instance_uid=generate_uid(),
                                     sop_instance_uid=generate_uid(), algorithm_type="SEMIAUTOMATIC"))
    assert not read_dicom_seg(seg, series, LABELS).array.any()
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"


def test_bad_label_input_is_refused(tmp_path: Path) -> None:
    series = _series(tmp_path / "s")
    uids = {"series_instance_uid": generate_uid(), "sop_instance_uid": generate_uid()}
    with pytest.raises(LabelValueError, match="outside the label set"):
        build_dicom_seg(np.full(series.geometry.array_shape, 7, np.uint8), _headers(series), LABELS, **uids)
    with pytest.raises(LabelValueError, match="source slices"):
        build_dicom_seg(np.zeros((2, 12, 16), np.uint8), _headers(series), LABELS, **uids)
    headers = _headers(series)
    for ds in headers:
        ds.SeriesInstanceUID = ""
    with pytest.raises(DicomSeriesError, match="SeriesInstanceUID"):
        build_dicom_seg(np.zeros(series.geometry.array_shape, np.uint8), headers, LABELS, **uids)


def test_seg_of_another_series_or_grid_is_refused_by_name(tmp_path: Path) -> None:
    series = _series(tmp_path / "a")
    seg = _roundtrip(build_dicom_seg(_label(series), _headers(series), LABELS, series_instance_uid=generate_uid(),
                                     sop_instance_uid=generate_uid()))
    other = _series(tmp_path / "b", seed=4)
    with pytest.raises(GeometryMismatchError, match=f"not series {other.series_uid}"):
        read_dicom_seg(seg, other, LABELS)
    # Same series UID but a grid shifted by half a slice: the frames lie on no slice.
    shifted = _series(tmp_path / "c", series_uid=series.series_uid, study_uid=series.study_uid, origin=(-100.0, -80.0, 41.25))
    shifted = dataclasses.replace(shifted, frame_of_reference_uid=series.frame_of_reference_uid)
    with pytest.raises(GeometryMismatchError, match="lies on no slice"):
        read_dicom_seg(seg, shifted, LABELS)
    with pytest.raises(LabelValueError, match="'lesion' matches no label"):
        read_dicom_seg(seg, series, {1: "liver"})
    with pytest.raises(ImageReadError, match="not a DICOM Segmentation"):
        read_dicom_seg(series.files[0], series, LABELS)


def test_overlapping_segments_are_refused(tmp_path: Path) -> None:
    series = _series(tmp_path / "s")
    seg = _roundtrip(build_dicom_seg(_label(series), _headers(series), LABELS, series_instance_uid=generate_uid(),
                                     sop_instance_uid=generate_uid()))
    frames = seg.pixel_array.copy()
    numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in seg.PerFrameFunctionalGroupsSequence]
    frames[numbers.index(2)][:] = 1  # segment 2 now covers a whole slice, over segment 1's voxels
    seg.PixelData = pydicom.pixels.pack_bits(frames.ravel())
    with pytest.raises(LabelValueError, match="overlap"):
        read_dicom_seg(seg, series, LABELS)


@pytest.mark.shared_data
def test_dcmqi_liver_seg_maps_onto_its_series(tmp_path: Path) -> None:
    if not DCMQI.is_dir():
        pytest.skip(f"shared test data not found at {DCMQI} (it lives beside the project, never in it)")
    (series,) = scan_dicom_folder(DCMQI / "ct-3slice").series
    label = read_dicom_seg(DCMQI / "liver.dcm", series, {1: "Liver"})
    reference = sitk.ReadImage(str(DCMQI / "liver_seg.nrrd"))
    np.testing.assert_array_equal(label.array > 0, sitk.GetArrayFromImage(reference) > 0)
    assert label.array.sum() == 107098
    assert label.geometry.origin == pytest.approx(reference.GetOrigin(), abs=1e-3)
    # The same SEG against another series is refused, naming both.
    write_ct_series(tmp_path / "x")
    (other,) = scan_dicom_folder(tmp_path / "x").series
    with pytest.raises(GeometryMismatchError, match=f"references series .* not series {other.series_uid}"):
        read_dicom_seg(DCMQI / "liver.dcm", other, {1: "Liver"})
