"""Issue 15: the queue and case listings carry a patient-meaningful ``display_name`` (series description and study
date) for cases imported from DICOM, over real HTTP; never patient name, id or birth date, and never in a log.

The datastore is imported from a DICOM folder holding the shared 20-slice TotalSegmentator series (skipped, saying
so, where ../shared/data is absent) and two synthetic series whose headers carry PHI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from activeseg.store.dicom_import import init_from_dicom_folder
from activeseg.store.dicom_index import DicomIndex

from ..dicom_support import PHI_VALUES, TOTALSEG_DICOM, named_series_folder
from .support import ServerProcess, make_store


@pytest.mark.shared_data
def test_listings_of_a_dicom_datastore_carry_display_names_and_no_phi(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not TOTALSEG_DICOM.is_dir():
        pytest.skip(f"shared test data not found at {TOTALSEG_DICOM} (it lives beside the project, never in it)")
    expected = named_series_folder(tmp_path / "dicom")
    with caplog.at_level(logging.DEBUG):
        store, problems = init_from_dicom_folder(tmp_path / "store", tmp_path / "dicom")
    assert store.counts()["total"] == 3, problems
    names = DicomIndex(store.meta_dir).display_names()
    assert set(names.values()) | {None} == expected  # the nameless case has no entry: clients show its id
    ids = sorted(record.case_id for record in store.cases())
    store.set_queue(ids)  # what a ranking round does; /v1/queue lists only queued cases
    server = ServerProcess(store.root).start()
    try:
        with server.client() as client:
            listed = client.get("/v1/cases").json()["cases"]
            assert {c["case_id"]: c["display_name"] for c in listed} == {i: names.get(i) for i in ids}
            assert {c["display_name"] for c in listed} == expected
            queue = client.get("/v1/queue").json()["items"]
            assert {item["case"]["case_id"]: item["case"]["display_name"] for item in queue} == {i: names.get(i) for i in ids}
            for case_id in ids:
                assert client.get(f"/v1/cases/{case_id}").json()["display_name"] == names.get(case_id)
            leased = client.post("/v1/queue/next", params={"annotator": "alice"}).json()["case"]
            assert leased["display_name"] == names.get(leased["case_id"])
            released = client.delete(f"/v1/cases/{leased['case_id']}/lease", params={"annotator": "alice"}).json()
            assert released["display_name"] == names.get(leased["case_id"])
            bodies = [client.get("/v1/cases").text, client.get("/v1/queue").text]
    finally:
        server.stop()
    for phi in PHI_VALUES:
        assert all(phi not in body for body in bodies)
        assert all(phi not in name for name in names.values())
    server_log = server.log_path.read_text()
    for secret in (*PHI_VALUES, *names.values()):  # the names may identify a visit: shown, never logged
        assert secret not in server_log and secret not in caplog.text


def test_a_plain_datastore_sends_no_display_name(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, count=3)
    with ServerProcess(store) as server, server.client() as client:
        cases = client.get("/v1/cases").json()["cases"]
        assert [c["display_name"] for c in cases] == [None, None, None]
        assert client.post("/v1/queue/next", params={"annotator": "alice"}).json()["case"]["display_name"] is None
