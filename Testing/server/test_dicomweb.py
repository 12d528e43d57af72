"""A datastore over a real Orthanc PACS (DICOMweb plugin): QIDO-RS/WADO-RS import, labels back as DICOM
SEG through STOW-RS, retried when the PACS is away, stored once when the backend dies mid-store.

Orthanc runs from Testing/orthanc_support.py on a free loopback port with its own storage; these tests
skip, saying so, where the Debian packages ``orthanc`` and ``orthanc-dicomweb`` are not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from activeseg.io.dicom_seg import read_dicom_seg
from activeseg.io.volumes import Volume
from activeseg.store.datastore import Datastore
from activeseg.store.dicom_index import DicomIndex
from activeseg.store.dicom_writeback import flush_outbox, resume_writeback, wait_for_background_flush
from activeseg.store.dicomweb_source import DicomwebError, DicomwebSource, RemoteSeries, init_from_dicomweb

from ..dicom_support import DCMQI, TOTALSEG_DICOM, repaired_totalsegmentator_series, write_ct_series
from ..orthanc_support import OrthancServer, orthanc_or_skip

PROJECT = Path(__file__).resolve().parents[2]


@dataclass
class Pacs:
    """A running Orthanc and what was loaded into it."""

    server: OrthancServer
    synthetic: dict[str, np.ndarray]  # SeriesInstanceUID -> HU array (k, j, i)
    shared: bool  # the shared CT series are loaded too


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """One Orthanc per module, loaded with two synthetic CT series and, where ../shared/data exists,
    the 20-slice TotalSegmentator CT (UIDs repaired), the 3-slice dcmqi CT and its liver DICOM SEG."""
    orthanc_or_skip()
    root = tmp_path_factory.mktemp("pacs")
    server = OrthancServer(root / "orthanc").start()
    try:
        synthetic = {}
        for seed in (1, 2):
            hu, paths = write_ct_series(root / f"synthetic{seed}", seed=seed, slices=5 + seed)
            synthetic[str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)] = hu
            server.upload(root / f"synthetic{seed}")
        shared = TOTALSEG_DICOM.is_dir() and DCMQI.is_dir()
        if shared:
            server.upload(repaired_totalsegmentator_series(root / "totalseg"))
            server.upload(DCMQI / "ct-3slice")
            server.upload(DCMQI / "liver.dcm")
        yield Pacs(server, synthetic, shared)
    finally:
        server.stop()


def _synthetic_only(pacs: Pacs) -> tuple[str, ...]:
    return tuple(pacs.synthetic)


def _seg_instances(pacs: Pacs, study_uid: str) -> list[pydicom.Dataset]:
    source = DicomwebSource(pacs.server.dicomweb_url)
    found = source.client.search_for_series(study_instance_uid=study_uid, search_filters={"Modality": "SEG"})
    out = []
    for item in found:
        out += source.client.retrieve_series(study_uid, item["0020000E"]["Value"][0])
    return out


def _label_for(store: Datastore, case_id: str) -> np.ndarray:
    geometry = store.image_geometry(case_id)
    label = np.zeros(geometry.array_shape, dtype=np.uint8)
    label[1:-1, 2:7, 3:9] = 1
    label[2, 3:5, 4:6] = 2
    return label


def test_init_fetches_verifies_and_matches_the_folder_import(pacs: Pacs, tmp_path: Path) -> None:
    store, problems = init_from_dicomweb(tmp_path / "store", pacs.server.dicomweb_url, series_uids=_synthetic_only(pacs))
    assert store.counts()["total"] == 2
    assert not (store.meta_dir / "dicomweb-cache").exists()  # the download cache is gone once the store exists
    index = DicomIndex(store.meta_dir)
    for record in store.cases():
        series = index.series(record.case_id)
        assert series is not None and series.series_uid in pacs.synthetic
        image = store.load_image(record.case_id)
        np.testing.assert_array_equal(image.array, pacs.synthetic[series.series_uid])
    assert set(index.display_names().values()) == {"Synthetic CT 2024-01-02"}
    assert index.source() == {"kind": "dicomweb", "url": pacs.server.dicomweb_url, "writeback": "on"}
    assert problems == []


def test_filters_and_unknown_series(pacs: Pacs, tmp_path: Path) -> None:
    one = next(iter(pacs.synthetic))
    store, _ = init_from_dicomweb(tmp_path / "one", pacs.server.dicomweb_url, series_uids=(one,))
    assert store.counts()["total"] == 1
    with pytest.raises(DicomwebError, match="not found on the server"):
        init_from_dicomweb(tmp_path / "none", pacs.server.dicomweb_url, series_uids=("1.2.3.4.5",))
    with pytest.raises(DicomwebError, match="could not be reached"):
        init_from_dicomweb(tmp_path / "dead", "http://127.0.0.1:9/dicom-web")
    assert not (tmp_path / "dead" / ".activeseg" / "activeseg.db").exists()


def test_fetch_refuses_an_incomplete_series(pacs: Pacs, tmp_path: Path) -> None:
    source = DicomwebSource(pacs.server.dicomweb_url)
    (remote, *_), _ = source.list_series(series_uids=(next(iter(pacs.synthetic)),))
    lying = RemoteSeries(remote.study_uid, remote.series_uid, remote.modality, remote.instances + 1)
    with pytest.raises(DicomwebError, match="instances"):
        source.fetch_series(lying, tmp_path / "cache")


def test_round_trip_label_to_dicom_seg_in_orthanc(pacs: Pacs, tmp_path: Path) -> None:
    store, _ = init_from_dicomweb(tmp_path / "store", pacs.server.dicomweb_url, series_uids=_synthetic_only(pacs))
    case_id = store.cases()[0].case_id
    label = _label_for(store, case_id)
    store.submit_label(case_id, Volume(label, store.image_geometry(case_id)))  # the datastore's hook sends it
    assert wait_for_background_flush(store.root)
    series = DicomIndex(store.meta_dir).series(case_id)
    assert series is not None
    (seg,) = [s for s in _seg_instances(pacs, series.study_uid) if s.SOPInstanceUID in _outbox_sop_uids(store)]
    # Read back with highdicom: the segments reference exactly the source instances ...
    import highdicom as hd

    segmentation = hd.seg.Segmentation.from_dataset(seg)
    referenced = {uid for _, _, uid in segmentation.get_source_image_uids()}
    assert referenced == set(series.sop_instance_uids)
    by_source = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=list(series.sop_instance_uids), combine_segments=True, relabel=False)
    np.testing.assert_array_equal(by_source, label)
    # ... and mapped onto the grid by position it is voxel-identical to the submitted label.
    np.testing.assert_array_equal(read_dicom_seg(seg, series, store.config.labels).array, label)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [store.config.labels[v] for v in sorted(store.config.labels)]
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "MANUAL"


def test_unreachable_pacs_keeps_the_label_and_retries(pacs: Pacs, tmp_path: Path) -> None:
    store, _ = init_from_dicomweb(tmp_path / "store", pacs.server.dicomweb_url, series_uids=_synthetic_only(pacs))
    index = DicomIndex(store.meta_dir)
    index.set_source(url="http://127.0.0.1:9/dicom-web")  # the PACS goes away
    case_id = store.cases()[1].case_id
    study_uid = index.series(case_id).study_uid  # type: ignore[union-attr]
    before = len(_seg_instances(pacs, study_uid))  # the PACS is shared by this module's tests
    label = _label_for(store, case_id)
    store.submit_label(case_id, Volume(label, store.image_geometry(case_id)))
    assert wait_for_background_flush(store.root)  # the hook's own try failed too
    report = flush_outbox(store, attempts=2, backoff_s=0.01)
    assert report.failed == [case_id]
    np.testing.assert_array_equal(store.load_label(case_id).array, label)  # nothing lost locally
    index.set_source(url=pacs.server.dicomweb_url)  # it is back
    assert flush_outbox(store).stored == [case_id]
    assert flush_outbox(store).stored == []  # sent once, not again
    assert len(_seg_instances(pacs, study_uid)) == before + 1


_KILL_SCRIPT = """
import os, signal, sys
import numpy as np
from activeseg.io.volumes import Volume
from activeseg.store import dicomweb_source
from activeseg.store.datastore import Datastore
from activeseg.store.dicom_writeback import wait_for_background_flush

when = sys.argv[3]
original = dicomweb_source.DicomwebSource.store_file
def store_then_die(self, path):
    if when == "after":
        original(self, path)  # the PACS has the SEG; the outbox has not recorded it yet
    os.kill(os.getpid(), signal.SIGKILL)
dicomweb_source.DicomwebSource.store_file = store_then_die
store = Datastore(sys.argv[1])
case_id = sys.argv[2]
geometry = store.image_geometry(case_id)
label = np.zeros(geometry.array_shape, dtype=np.uint8)
label[1:-1, 2:7, 3:9] = 1
store.submit_label(case_id, Volume(label, geometry))  # its hook starts the write-back in the background
wait_for_background_flush(store.root)
print("not killed")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_backend_killed_during_stow_stores_once_after_restart(pacs: Pacs, tmp_path: Path, when: str) -> None:
    store, _ = init_from_dicomweb(tmp_path / "store", pacs.server.dicomweb_url, series_uids=_synthetic_only(pacs))
    case_id = store.cases()[0].case_id
    study_uid = DicomIndex(store.meta_dir).series(case_id).study_uid  # type: ignore[union-attr]
    before = len(_seg_instances(pacs, study_uid))  # the PACS is shared by this module's tests
    env = {**os.environ, "PYTHONPATH": str(PROJECT / "ActiveSegExtension")}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILL_SCRIPT), str(store.root), case_id, when],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    restarted = Datastore(store.root)
    expected = _label_for(restarted, case_id)
    expected[2, 3:5, 4:6] = 1  # the script's label has no lesion
    np.testing.assert_array_equal(restarted.load_label(case_id).array, expected)  # not lost locally
    series = DicomIndex(restarted.meta_dir).series(case_id)
    assert series is not None
    assert len(_seg_instances(pacs, study_uid)) == before + (1 if when == "after" else 0)
    resume_writeback(restarted.root)  # what a restarted server does first
    assert wait_for_background_flush(restarted.root)
    assert [(e.case_id, e.state) for e in _outbox(restarted)] == [(case_id, "stored")]
    segs = _seg_instances(pacs, study_uid)
    assert len(segs) == before + 1  # stored once, also when the first store had reached the PACS
    (sop_uid,) = [row for row in _outbox_sop_uids(restarted)]
    (ours,) = [seg for seg in segs if seg.SOPInstanceUID == sop_uid]
    np.testing.assert_array_equal(read_dicom_seg(ours, series, restarted.config.labels).array, expected)


@dataclass
class _Entry:
    case_id: str
    state: str
    seg_sop_uid: str | None


def _outbox(store: Datastore) -> list[_Entry]:
    import sqlite3

    with sqlite3.connect(DicomIndex(store.meta_dir).path) as connection:
        return [_Entry(*row) for row in connection.execute("SELECT case_id, state, seg_sop_uid FROM outbox")]


def _outbox_sop_uids(store: Datastore) -> list[str]:
    return [entry.seg_sop_uid for entry in _outbox(store) if entry.state == "stored" and entry.seg_sop_uid]


def test_cli_init_from_orthanc(pacs: Pacs, tmp_path: Path) -> None:
    from activeseg.cli.main import main

    one = next(iter(pacs.synthetic))
    assert main(["init", str(tmp_path / "store"), "--dicomweb", pacs.server.dicomweb_url, "--series", one]) == 0
    assert Datastore(tmp_path / "store").counts()["total"] == 1
    assert main(["init", str(tmp_path / "bad"), "--from", str(tmp_path), "--series", one]) == 2
    assert main(["init", str(tmp_path / "dead"), "--dicomweb", "http://127.0.0.1:9/dicom-web"]) == 2


def test_seg_in_pacs_imports_as_label_and_shared_ct_matches_folder_import(pacs: Pacs, tmp_path: Path) -> None:
    if not pacs.shared:
        pytest.skip("shared test data not found at ../shared/data (it lives beside the project, never in it)")
    source = DicomwebSource(pacs.server.dicomweb_url)
    shared_series = tuple(s.series_uid for s in source.list_series()[0] if s.series_uid not in pacs.synthetic)
    store, problems = init_from_dicomweb(tmp_path / "store", pacs.server.dicomweb_url, series_uids=shared_series,
                                         with_labels=True)
    assert store.config.labels == {1: "Liver"}, problems
    index = DicomIndex(store.meta_dir)
    by_size = {index.series(r.case_id).geometry.size: r for r in store.cases()}  # type: ignore[union-attr]
    three = by_size[(512, 512, 3)]
    assert three.state == "labeled"
    reference = sitk.ReadImage(str(DCMQI / "liver_seg.nrrd"))
    np.testing.assert_array_equal(store.load_label(three.case_id).array > 0, sitk.GetArrayFromImage(reference) > 0)
    # The 20-slice CT through Orthanc has the same grid and voxels as SimpleITK reading the files.
    twenty = by_size[(512, 512, 20)]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(TOTALSEG_DICOM)))
    expected = reader.Execute()
    image = store.load_image(twenty.case_id)
    assert image.geometry.origin == pytest.approx(expected.GetOrigin(), abs=1e-6)
    assert image.geometry.spacing == pytest.approx(expected.GetSpacing(), abs=1e-6)
    assert image.geometry.direction == pytest.approx(expected.GetDirection(), abs=1e-9)
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(expected).astype(np.float32))
    # The imported label is not sent back; a new expert label is.
    assert flush_outbox(store).stored == []
    label = _label_for(store, twenty.case_id)
    store.submit_label(twenty.case_id, Volume((label > 0).astype(np.uint8), store.image_geometry(twenty.case_id)))
    assert wait_for_background_flush(store.root)
    assert [r.state for r in _outbox(store) if r.case_id == twenty.case_id] == ["stored"]
    assert not any("liver" in p.lower() and "not imported" in p for p in problems)

