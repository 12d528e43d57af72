"""``init`` from a folder of DICOM files: one case per series, reasons for the rest, DICOM SEG labels in,
and labels out as DICOM SEG files (folder datastores) without re-exporting what was imported."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from activeseg.errors import DatastoreError
from activeseg.io.dicom_seg import build_dicom_seg, read_dicom_seg
from activeseg.io.dicom_series import scan_dicom_folder
from activeseg.io.volumes import Volume
from activeseg.store.dicom_import import init_from_dicom_folder, looks_like_dicom_folder
from activeseg.store.dicom_index import DicomIndex, label_from_dicom_seg
from activeseg.store.dicom_writeback import flush_outbox, on_label_committed, wait_for_background_flush

from ..dicom_support import DCMQI, write_ct_series


def _folder(root: Path) -> dict[str, np.ndarray]:
    """Three good synthetic series, one single-slice series and a text file; SeriesInstanceUID -> HU."""
    series = {}
    for seed in range(3):
        hu, paths = write_ct_series(root / f"patient{seed}" / "series", seed=seed)
        series[str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)] = hu
    write_ct_series(root / "scout", slices=1)
    (root / "README.txt").write_text("export notes")
    return series


def _seg_file(folder: Path, series_folder: Path, labels: dict[int, str], value: int, when: str) -> Path:
    (series,) = scan_dicom_folder(series_folder).series
    label = np.zeros(series.geometry.array_shape, dtype=np.uint8)
    label[1:3, 2:6, 3:9] = value
    ds = build_dicom_seg(label, [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files], labels,
                         series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    ds.ContentDate, ds.ContentTime = when[:8], when[8:]
    path = folder / f"seg-{when}.dcm"
    ds.save_as(path)
    return path


def test_init_makes_one_case_per_series_and_reports_the_rest(tmp_path: Path) -> None:
    source = tmp_path / "dicom"
    expected = _folder(source)
    assert looks_like_dicom_folder(source)
    store, problems = init_from_dicom_folder(tmp_path / "store", source)
    assert store.counts()["total"] == 3
    assert len(problems) == 1 and "single slice" in problems[0] and "scout" in problems[0]
    index = DicomIndex(store.meta_dir)
    for record in store.cases():
        series = index.series(record.case_id)
        assert series is not None
        np.testing.assert_array_equal(store.load_image(record.case_id).array, expected[series.series_uid])
        geometry = store.image_geometry(record.case_id)
        assert geometry.size == series.geometry.size
        assert geometry.spacing == pytest.approx(series.geometry.spacing, abs=1e-5)
        assert geometry.origin == pytest.approx(series.geometry.origin, abs=1e-4)
        assert len(index.headers(record.case_id)) == 6
    assert not (store.meta_dir / "dicom-staging").exists()
    with pytest.raises(DatastoreError, match="already"):
        init_from_dicom_folder(tmp_path / "store", source)
    with pytest.raises(DatastoreError, match="no importable DICOM series"):
        init_from_dicom_folder(tmp_path / "empty-store", source / "scout")


def test_seg_labels_import_newest_wins_and_are_not_exported_again(tmp_path: Path) -> None:
    source = tmp_path / "dicom"
    _folder(source)
    target = source / "patient0" / "series"
    older = _seg_file(source, target, {1: "Liver"}, 1, "20240101120000")
    newer = _seg_file(source, target, {1: "Liver", 2: "Tumor"}, 2, "20240301120000")
    store, problems = init_from_dicom_folder(tmp_path / "store", source, with_labels=True)
    assert store.config.labels == {1: "Liver", 2: "Tumor"}
    assert any(older.name in p and "newer" in p for p in problems)
    (labelled,) = store.cases(state="labeled")
    label = store.load_label(labelled.case_id).array
    assert set(np.unique(label).tolist()) == {0, 2}  # the newer SEG's tumour
    assert flush_outbox(store).written == []  # imported labels are not exported back
    # A SEG given later for the same case maps onto its grid through the index.
    again = label_from_dicom_seg(store.meta_dir, labelled.case_id, newer, store.config.labels)
    np.testing.assert_array_equal(again.array, label)


def test_folder_datastore_exports_new_labels_as_dicom_seg(tmp_path: Path) -> None:
    source = tmp_path / "dicom"
    _folder(source)
    store, _ = init_from_dicom_folder(tmp_path / "store", source)
    case_id = store.cases()[0].case_id
    geometry = store.image_geometry(case_id)
    first = np.zeros(geometry.array_shape, dtype=np.uint8)
    first[2:4, 1:5, 2:10] = 2
    store.submit_label(case_id, Volume(first, geometry))
    second = first.copy()
    second[0, 0, 0] = 1
    store.submit_label(case_id, Volume(second, geometry))  # replaces the first (sent or superseded)
    assert wait_for_background_flush(store.root)  # the datastore's hook wrote the SEG in the background
    exported = store.root / "dicom-seg" / f"{case_id}.dcm"
    series = DicomIndex(store.meta_dir).series(case_id)
    assert series is not None
    np.testing.assert_array_equal(read_dicom_seg(exported, series, store.config.labels).array, second)
    report = flush_outbox(store)
    assert report.written == [] and report.failed == []  # nothing left to do


def test_cli_init_from_a_dicom_folder(tmp_path: Path) -> None:
    from activeseg.cli.main import main

    _folder(tmp_path / "dicom")
    assert main(["init", str(tmp_path / "store"), "--from", str(tmp_path / "dicom")]) == 0
    assert DicomIndex(tmp_path / "store" / ".activeseg").exists()
    assert main(["init", str(tmp_path / "none"), "--from", str(tmp_path / "dicom" / "scout")]) == 2


def test_plain_datastore_ignores_the_hook(tmp_path: Path) -> None:
    from .conftest import tiny_config

    write_ct_series(tmp_path / "dicom")
    store, _ = init_from_dicom_folder(tmp_path / "store", tmp_path / "dicom", config=tiny_config())
    DicomIndex(store.meta_dir).path.unlink()  # now a plain datastore: no DICOM side-table
    case_id = store.cases()[0].case_id
    geometry = store.image_geometry(case_id)
    label = np.zeros(geometry.array_shape, dtype=np.uint8)
    label[1, 1, 1] = 1
    store.submit_label(case_id, Volume(label, geometry))
    on_label_committed(store.root, case_id, background=False)
    assert not (store.root / "dicom-seg").exists()
    assert not DicomIndex(store.meta_dir).exists()


@pytest.mark.shared_data
def test_dcmqi_folder_with_its_seg(tmp_path: Path) -> None:
    if not DCMQI.is_dir():
        pytest.skip(f"shared test data not found at {DCMQI} (it lives beside the project, never in it)")
    source = tmp_path / "dcmqi"
    shutil.copytree(DCMQI / "ct-3slice", source / "ct")
    shutil.copyfile(DCMQI / "liver.dcm", source / "liver.dcm")
    store, problems = init_from_dicom_folder(tmp_path / "store", source, with_labels=True)
    assert problems == [] and store.config.labels == {1: "Liver"}
    (record,) = store.cases(state="labeled")
    assert int(store.load_label(record.case_id).array.sum()) == 107098
