"""Issue 15: a DICOM SEG uploaded as a label (``PUT /v1/cases/{id}/label``, over real HTTP) is recognised by its
content, mapped onto the case's series grid and stored like any other expert label; a SEG of another series or
with another geometry is refused with a 4xx naming what does not match, and the stored label is kept.

Uses the dcmqi liver SEG over its 3-slice CT series from ../shared/data (skipped, saying so, where it is absent).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from activeseg.io.dicom_seg import build_dicom_seg
from activeseg.io.dicom_series import scan_dicom_folder
from activeseg.io.seg_nrrd import read_segmentation_labelmap
from activeseg.store.datastore import Datastore
from activeseg.store.dicom_import import init_from_dicom_folder
from activeseg.store.dicom_index import label_from_dicom_seg

from ..dicom_support import DCMQI, write_ct_series
from .support import ServerProcess, label_path, make_store

pytestmark = pytest.mark.shared_data

LIVER_VOXELS = 107098  # foreground voxels of liver.dcm on the 3-slice series (as the folder import finds)


@dataclass
class SegServer:
    """A server over a datastore imported from the dcmqi 3-slice CT folder (label set: liver)."""

    client: httpx.Client
    store: Datastore
    case_id: str
    liver: bytes


@pytest.fixture(scope="module")
def seg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SegServer]:
    if not DCMQI.is_dir():
        pytest.skip(f"shared test data not found at {DCMQI} (it lives beside the project, never in it)")
    root = tmp_path_factory.mktemp("dcmqi")
    shutil.copytree(DCMQI / "ct-3slice", root / "dicom" / "ct")
    store, _ = init_from_dicom_folder(root / "store", root / "dicom", overrides=["labels=liver"])
    (record,) = store.cases()
    server = ServerProcess(store.root).start()
    client = server.client()
    try:
        yield SegServer(client, store, record.case_id, (DCMQI / "liver.dcm").read_bytes())
    finally:
        client.close()
        server.stop()


def _stored_label(client: httpx.Client, case_id: str, tmp_path: Path, labels: dict[int, str]) -> np.ndarray:
    response = client.get(f"/v1/cases/{case_id}/label")
    assert response.status_code == 200, response.text
    path = tmp_path / f"stored-{len(list(tmp_path.iterdir()))}.seg.nrrd"
    path.write_bytes(response.content)
    return read_segmentation_labelmap(path, labels).array


def _put(s: SegServer, body: bytes, **params: str) -> httpx.Response:
    return s.client.put(f"/v1/cases/{s.case_id}/label", params={"annotator": "alice", **params}, content=body)


def test_a_dicom_seg_is_stored_on_the_series_grid(seg_server: SegServer, tmp_path: Path) -> None:
    s = seg_server
    response = _put(s, s.liver)  # no format given (the default says .nii.gz): recognised by its DICM marker
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "labeled" and response.json()["label_source"] == "expert"
    labels = s.store.config.labels
    stored = _stored_label(s.client, s.case_id, tmp_path, labels)
    expected = label_from_dicom_seg(s.store.meta_dir, s.case_id, DCMQI / "liver.dcm", labels).array
    np.testing.assert_array_equal(stored, expected)
    assert int((stored == 1).sum()) == LIVER_VOXELS and set(np.unique(stored).tolist()) == {0, 1}
    again = _put(s, s.liver, format=".dcm")  # and when the client says what it sends
    assert again.status_code == 200, again.text


def _other_series_seg(folder: Path) -> bytes:
    """A valid SEG (segment "liver") over a synthetic CT series that is not in the datastore."""
    _, paths = write_ct_series(folder)
    (series,) = scan_dicom_folder(folder).series
    label = np.zeros(series.geometry.array_shape, dtype=np.uint8)
    label[1:3, 2:6, 3:9] = 1
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in series.files]
    seg = build_dicom_seg(label, headers, {1: "liver"}, series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    out = folder.parent / "other.dcm"
    seg.save_as(out)
    return out.read_bytes()


def _edited_liver(tmp_path: Path, edit: str) -> bytes:
    ds = pydicom.dcmread(DCMQI / "liver.dcm")
    if edit == "spacing":
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        measures.PixelSpacing = [f"{float(v) * 1.5:g}" for v in measures.PixelSpacing]
    elif edit == "frame_of_reference":
        del ds.ReferencedSeriesSequence
        ds.FrameOfReferenceUID = generate_uid()
    elif edit == "position":
        for frame in ds.PerFrameFunctionalGroupsSequence:
            position = frame.PlanePositionSequence[0]
            position.ImagePositionPatient = [*position.ImagePositionPatient[:2], float(position.ImagePositionPatient[2]) + 400]
    path = tmp_path / f"liver-{edit}.dcm"
    ds.save_as(path)
    return path.read_bytes()


@pytest.mark.parametrize(("edit", "named"), [
    ("other_series", "references series"),
    ("spacing", "pixel spacing"),
    ("frame_of_reference", "frame of reference"),
    ("position", "lies on no slice"),
])
def test_a_seg_that_does_not_fit_is_refused_and_the_label_is_kept(
    seg_server: SegServer, tmp_path: Path, edit: str, named: str
) -> None:
    s = seg_server
    assert _put(s, s.liver).status_code == 200
    labels = s.store.config.labels
    before = _stored_label(s.client, s.case_id, tmp_path, labels)
    body = _other_series_seg(tmp_path / "other") if edit == "other_series" else _edited_liver(tmp_path, edit)
    response = _put(s, body, format=".dcm")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "geometry_mismatch" and named in error["message"], error
    if edit == "other_series":
        other = pydicom.dcmread(tmp_path / "other.dcm", stop_before_pixels=True)
        assert other.ReferencedSeriesSequence[0].SeriesInstanceUID in error["message"]
    assert s.client.get(f"/v1/cases/{s.case_id}").json()["state"] == "labeled"
    np.testing.assert_array_equal(_stored_label(s.client, s.case_id, tmp_path, labels), before)


def test_other_dicom_objects_and_false_claims_are_refused(seg_server: SegServer, tmp_path: Path) -> None:
    s = seg_server
    image = _put(s, (DCMQI / "ct-3slice" / "01.dcm").read_bytes())
    assert image.status_code == 422 and "must be a Segmentation" in image.json()["error"]["message"]
    not_dicom = _put(s, b"\0" * 200, format=".dcm")
    assert not_dicom.status_code == 422 and "not a DICOM file" in not_dicom.json()["error"]["message"]
    truncated = _put(s, s.liver[: len(s.liver) // 2])
    assert truncated.status_code == 422, truncated.text
    ds = pydicom.dcmread(DCMQI / "liver.dcm")
    huge = copy.deepcopy(ds)
    huge.NumberOfFrames = 10**6  # a header that claims far more frames than any limit allows
    path = tmp_path / "huge.dcm"
    huge.save_as(path)
    refused = _put(s, path.read_bytes())
    assert refused.status_code == 422 and "above the limit" in refused.json()["error"]["message"]


def test_a_plain_datastore_refuses_a_dicom_seg(tmp_path: Path) -> None:
    if not DCMQI.is_dir():
        pytest.skip(f"shared test data not found at {DCMQI} (it lives beside the project, never in it)")
    store, source = make_store(tmp_path, count=3)
    with ServerProcess(store) as server, server.client() as client:
        refused = client.put("/v1/cases/phantom_001/label", params={"annotator": "alice"},
                             content=(DCMQI / "liver.dcm").read_bytes())
        assert refused.status_code == 400 and "not imported from DICOM" in refused.json()["error"]["message"]
        assert client.get("/v1/cases/phantom_001").json()["state"] == "unlabeled"
        plain = client.put("/v1/cases/phantom_001/label", params={"annotator": "alice"},
                           content=label_path(source, "phantom_001").read_bytes())
        assert plain.status_code == 200, plain.text  # the NIfTI path is unchanged
