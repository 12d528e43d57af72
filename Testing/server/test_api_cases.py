"""Cases, queue, leases, downloads, label submission and pseudo-label review over real HTTP."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.store.datastore import Datastore
from activeseg.io.volumes import read_volume, volume_from_bytes
from activeseg.io.seg_nrrd import read_segmentation_labelmap, write_segmentation_file

from .conftest import LiveServer
from .support import label_path


def test_health_and_info(live: LiveServer) -> None:
    assert live.client.get("/v1/health").json() == {"status": "ok"}
    info = live.client.get("/v1/info").json()
    assert info["api_version"] == "v1"
    assert info["labels"] == {"1": "lung", "2": "lesion"}
    assert info["counts"]["total"] == 8 and info["active_model"] is None
    assert info["device"] == "cpu" and info["auth_required"] is False
    assert live.client.get("/v1/openapi.json").json()["info"]["title"] == "ActiveSeg backend"


def test_case_list_and_detail(live: LiveServer) -> None:
    cases = live.client.get("/v1/cases").json()["cases"]
    assert [c["case_id"] for c in cases] == [f"phantom_{n:03d}" for n in range(8)]
    val = live.client.get("/v1/cases", params={"split": "val"}).json()["cases"]
    assert len(val) == 2 and all(c["split"] == "val" for c in val)
    one = live.client.get("/v1/cases/phantom_003").json()
    assert one["case_id"] == "phantom_003" and one["mdsc"] is None
    assert live.client.get("/v1/cases", params={"state": "nonsense"}).status_code == 409


def test_image_download_is_the_stored_file(live: LiveServer) -> None:
    response = live.client.get("/v1/cases/phantom_001/image")
    assert response.status_code == 200
    assert response.content == (live.store / "images" / "phantom_001.nii.gz").read_bytes()
    assert "phantom_001.nii.gz" in response.headers["content-disposition"]
    volume = volume_from_bytes(response.content, ".nii.gz")
    assert volume.array.shape == (16, 32, 32)


def test_submit_then_download_label_as_seg_nrrd(live: LiveServer, tmp_path) -> None:
    data = label_path(live.source, "phantom_002").read_bytes()
    response = live.client.put("/v1/cases/phantom_002/label", params={"annotator": "ann"}, content=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "labeled" and body["label_source"] == "expert"
    seg = live.client.get("/v1/cases/phantom_002/label")
    assert seg.status_code == 200 and 'phantom_002.seg.nrrd' in seg.headers["content-disposition"]
    (tmp_path / "x.seg.nrrd").write_bytes(seg.content)
    labelmap = read_segmentation_labelmap(tmp_path / "x.seg.nrrd", {1: "lung", 2: "lesion"})
    truth = read_volume(label_path(live.source, "phantom_002"), dtype=np.uint8)
    assert np.array_equal(labelmap.array, truth.array)
    # Re-submitting the downloaded .seg.nrrd is accepted (Slicer round trip).
    again = live.client.put(
        "/v1/cases/phantom_002/label", params={"annotator": "ann", "format": ".seg.nrrd"}, content=seg.content
    )
    assert again.status_code == 200, again.text
    assert live.client.get("/v1/cases/phantom_005/label").json()["error"]["code"] == "invalid_state"


def test_no_finding_label(live: LiveServer) -> None:
    truth = read_volume(label_path(live.source, "phantom_004"), dtype=np.uint8)
    from activeseg.io.volumes import write_volume

    empty = live.store.parent / "empty.nii.gz"
    write_volume(np.zeros_like(truth.array), truth.geometry, empty)
    refused = live.client.put("/v1/cases/phantom_004/label", params={"annotator": "a"}, content=empty.read_bytes())
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "empty_label"
    ok = live.client.put(
        "/v1/cases/phantom_004/label", params={"annotator": "a", "no_finding": "true"}, content=empty.read_bytes()
    )
    assert ok.status_code == 200 and ok.json()["no_finding"] is True


def test_queue_leases_and_release(fresh: LiveServer) -> None:
    Datastore(fresh.store).set_queue(["phantom_001", "phantom_003"])
    queue = fresh.client.get("/v1/queue").json()["items"]
    assert [item["rank"] for item in queue] == list(range(1, len(queue) + 1))
    queued_ids = {item["case"]["case_id"] for item in queue}
    assert {"phantom_001", "phantom_003"} <= queued_ids
    first = fresh.client.post("/v1/queue/next", params={"annotator": "alice"}).json()["case"]
    assert first["lease_holder"] == "alice" and first["lease_expires"] > 0
    # Alice asking again gets her own lease back, Bob gets a different case.
    assert fresh.client.post("/v1/queue/next", params={"annotator": "alice"}).json()["case"]["case_id"] == first["case_id"]
    second = fresh.client.post("/v1/queue/next", params={"annotator": "bob"}).json()["case"]
    assert second["case_id"] != first["case_id"]
    taken = fresh.client.post(f"/v1/cases/{first['case_id']}/lease", params={"annotator": "bob"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "leased"
    submit = fresh.client.put(
        f"/v1/cases/{first['case_id']}/label", params={"annotator": "bob"},
        content=label_path(fresh.source, first["case_id"]).read_bytes(),
    )
    assert submit.status_code == 409
    released = fresh.client.delete(f"/v1/cases/{first['case_id']}/lease", params={"annotator": "alice"})
    assert released.status_code == 200 and released.json()["lease_holder"] is None
    assert fresh.client.post(f"/v1/cases/{first['case_id']}/lease", params={"annotator": "bob"}).status_code == 200
    assert fresh.client.post("/v1/queue/next").status_code == 422  # annotator is required


def _write_pseudo(store_root, case_id: str, source) -> None:
    store = Datastore(store_root)
    truth = read_volume(label_path(source, case_id), dtype=np.uint8)
    target = store.meta_dir / "pseudo" / f"{case_id}.test.seg.nrrd"
    write_segmentation_file(target, truth.array, truth.geometry, store.config.labels)
    store.set_pseudo_labels(1, {case_id: target})


@pytest.mark.parametrize("action", ["accept", "reject", "edit"])
def test_pseudo_label_review(fresh: LiveServer, action: str) -> None:
    _write_pseudo(fresh.store, "phantom_001", fresh.source)
    case = fresh.client.get("/v1/cases/phantom_001").json()
    assert case["state"] == "pseudo" and case["has_pseudo"]
    pseudo = fresh.client.get("/v1/cases/phantom_001/pseudo")
    assert pseudo.status_code == 200 and pseudo.content.startswith(b"NRRD")
    if action == "edit":
        response = fresh.client.put(
            "/v1/cases/phantom_001/label", params={"annotator": "a", "format": ".seg.nrrd"}, content=pseudo.content
        )
        expected = "labeled"
    else:
        response = fresh.client.post(f"/v1/cases/phantom_001/pseudo/{action}")
        expected = "accepted" if action == "accept" else "rejected"
    assert response.status_code == 200, response.text
    assert response.json()["state"] == expected
    again = fresh.client.post("/v1/cases/phantom_001/pseudo/accept")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"
    assert fresh.client.get("/v1/cases/phantom_001/pseudo").status_code == 409


def test_models_empty_and_unknown(live: LiveServer) -> None:
    assert live.client.get("/v1/models").json() == {"active": None, "queue_model": None, "queue_stale": False,
                                                     "models": []}
    assert live.client.get("/v1/learning-curve").json() == {"points": []}
    missing = live.client.post("/v1/models/7/activate")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_version"
