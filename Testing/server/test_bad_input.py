"""Every class of bad input gets its documented 4xx JSON error and leaves the datastore byte-for-byte unchanged."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import SimpleITK as sitk

from activeseg.store.datastore import Datastore
from activeseg.io.volumes import Geometry, read_volume, write_volume

from .conftest import LiveServer
from .support import ServerProcess, label_path, make_store, store_fingerprint

MAX_UPLOAD = 64 * 1024  # small limit for this module's server, so 413 is cheap to provoke


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("bad")
    store, source = make_store(root)
    # One leased case (by someone else) so lease conflicts can be tested without changing state.
    Datastore(store).set_queue(["phantom_005"])
    Datastore(store).lease("phantom_005", "carol")
    server = ServerProcess(store, extra_args=("--max-upload-bytes", str(MAX_UPLOAD))).start()
    client = server.client()
    yield LiveServer(server, store, source, client)
    client.close()
    server.stop()


def _label_file(tmp: Path, source: Path, change: Callable[[np.ndarray, Geometry], tuple[np.ndarray, Geometry]]) -> bytes:
    truth = read_volume(label_path(source, "phantom_001"), dtype=np.uint8)
    array, geometry = change(truth.array.copy(), truth.geometry)
    path = tmp / "label.nii.gz"
    write_volume(array, geometry, path)
    return path.read_bytes()


def _2d_image(tmp: Path) -> bytes:
    path = tmp / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((32, 32), dtype=np.uint8)), str(path))
    return path.read_bytes()


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _put(client: httpx.Client, case_id: str, content: bytes, **params: str) -> httpx.Response:
    return client.put(f"/v1/cases/{case_id}/label", params={"annotator": "ann", **params}, content=content)


CASES: dict[str, tuple[int, str | None, Callable[[httpx.Client, Path, Path], httpx.Response]]] = {
    # name: (status, error code, request)
    "unknown case": (404, "unknown_case", lambda c, s, t: c.get("/v1/cases/phantom_999")),
    "unknown case image": (404, "unknown_case", lambda c, s, t: c.get("/v1/cases/nope/image")),
    "upload to unknown case": (404, "unknown_case", lambda c, s, t: _put(c, "nope", b"x")),
    "dot-dot id": (400, "invalid_case_id", lambda c, s, t: c.get("/v1/cases/%2E%2E")),
    "dot-dot inside id": (400, "invalid_case_id", lambda c, s, t: c.get("/v1/cases/a..b/image")),
    "hidden-file id": (400, "invalid_case_id", lambda c, s, t: c.get("/v1/cases/.activeseg/image")),
    "backslash id": (400, "invalid_case_id", lambda c, s, t: c.get("/v1/cases/..%5Cx/label")),
    # %2F is decoded before routing, so the path has one more segment and matches no route: 404, still JSON.
    "encoded slash id": (404, "not_found", lambda c, s, t: c.get("/v1/cases/..%2F..%2Fetc%2Fpasswd/image")),
    "upload with path id": (400, "invalid_case_id", lambda c, s, t: _put(c, "%2E%2E", b"x")),
    "corrupt upload": (422, "unreadable_image", lambda c, s, t: _put(c, "phantom_001", b"not an image at all" * 10)),
    "truncated upload": (422, "unreadable_image", lambda c, s, t: _put(
        c, "phantom_001", _half(label_path(s, "phantom_001").read_bytes()))),
    "truncated .nii": (422, "unreadable_image", lambda c, s, t: _put(
        c, "phantom_001", _half(gzip.decompress(label_path(s, "phantom_001").read_bytes())), format=".nii")),
    "gzip of garbage": (422, "unreadable_image", lambda c, s, t: _put(c, "phantom_001", gzip.compress(b"\0" * 500))),
    "empty body": (422, "unreadable_image", lambda c, s, t: _put(c, "phantom_001", b"")),
    "2D upload": (422, "not_3d", lambda c, s, t: _put(c, "phantom_001", _2d_image(t))),
    "corrupt seg.nrrd": (422, "unreadable_image", lambda c, s, t: _put(c, "phantom_001", b"NRRD0004\nbroken", format=".seg.nrrd")),
    "wrong size": (422, "geometry_mismatch", lambda c, s, t: _put(c, "phantom_001", _label_file(
        t, s, lambda a, g: (a[:8], Geometry((g.size[0], g.size[1], 8), g.spacing, g.origin, g.direction))))),
    "wrong spacing": (422, "geometry_mismatch", lambda c, s, t: _put(c, "phantom_001", _label_file(
        t, s, lambda a, g: (a, Geometry(g.size, (1.0, 1.0, 1.0), g.origin, g.direction))))),
    "wrong origin": (422, "geometry_mismatch", lambda c, s, t: _put(c, "phantom_001", _label_file(
        t, s, lambda a, g: (a, Geometry(g.size, g.spacing, (0.0, 0.0, 0.0), g.direction))))),
    "value outside label set": (422, "label_values", lambda c, s, t: _put(c, "phantom_001", _label_file(
        t, s, lambda a, g: (np.where(a > 0, 7, 0).astype(np.uint8), g)))),
    "non-integer values": (422, "label_values", lambda c, s, t: _put(c, "phantom_001", _label_file(
        t, s, lambda a, g: (a.astype(np.float32) * 0.5, g)))),
    "empty label without no_finding": (422, "empty_label", lambda c, s, t: _put(c, "phantom_001", _label_file(
        t, s, lambda a, g: (np.zeros_like(a), g)))),
    "unsupported format": (422, "invalid_request", lambda c, s, t: _put(c, "phantom_001", b"x", format=".png")),
    "missing annotator": (422, "invalid_request", lambda c, s, t: c.put("/v1/cases/phantom_001/label", content=b"x")),
    "oversize by Content-Length": (413, "too_large", lambda c, s, t: _put(c, "phantom_001", b"\0" * (MAX_UPLOAD + 1))),
    "oversize streamed": (413, "too_large", lambda c, s, t: _put(
        c, "phantom_001", iter([b"\0" * 16384] * (MAX_UPLOAD // 16384 + 2)))),  # chunked: no Content-Length
    "lease held by another": (409, "leased", lambda c, s, t: c.post("/v1/cases/phantom_005/lease", params={"annotator": "dan"})),
    "submit to a case leased by another": (409, "leased", lambda c, s, t: _put(
        c, "phantom_005", label_path(s, "phantom_005").read_bytes())),
    "release another's lease": (409, "leased", lambda c, s, t: c.delete("/v1/cases/phantom_005/lease", params={"annotator": "x"})),
    "accept without pseudo-label": (409, "invalid_state", lambda c, s, t: c.post("/v1/cases/phantom_001/pseudo/accept")),
    "reject without pseudo-label": (409, "invalid_state", lambda c, s, t: c.post("/v1/cases/phantom_001/pseudo/reject")),
    "unknown model version": (404, "model_version", lambda c, s, t: c.post("/v1/models/3/activate")),
    "model version not a number": (422, "invalid_request", lambda c, s, t: c.get("/v1/models/abc")),
    "malformed job id": (422, "invalid_request", lambda c, s, t: c.get("/v1/jobs/not-a-job-id")),
    "unknown job": (404, "unknown_job", lambda c, s, t: c.get("/v1/jobs/" + "0" * 32)),
    "cancel unknown job": (404, "unknown_job", lambda c, s, t: c.post("/v1/jobs/" + "f" * 32 + "/cancel")),
    "bad job body": (422, "invalid_request", lambda c, s, t: c.post("/v1/jobs/train", content=b"{not json",
                                                                      headers={"content-type": "application/json"})),
    "unknown route": (404, "not_found", lambda c, s, t: c.get("/v1/nothing")),
    "wrong method": (405, "method_not_allowed", lambda c, s, t: c.delete("/v1/cases")),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_changes_nothing(bad: LiveServer, tmp_path: Path, name: str) -> None:
    status, code, request = CASES[name]
    before = store_fingerprint(bad.store)
    response = request(bad.client, bad.source, tmp_path)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    assert store_fingerprint(bad.store) == before, "a refused request changed the datastore"


def test_good_upload_does_change_the_store(bad: LiveServer) -> None:
    """Guards the fingerprint itself: an accepted label must change it."""
    before = store_fingerprint(bad.store)
    response = _put(bad.client, "phantom_002", label_path(bad.source, "phantom_002").read_bytes())
    assert response.status_code == 200, response.text
    assert store_fingerprint(bad.store) != before
