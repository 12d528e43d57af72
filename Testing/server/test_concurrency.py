"""Several annotators leasing and submitting at once: no case served twice while leased, no lost write."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from activeseg.store.datastore import Datastore
from activeseg.io.volumes import read_volume

from .support import ServerProcess, label_path, make_store

ANNOTATORS = 6
CASES = 16


def test_concurrent_leasing_and_submission(tmp_path: Path) -> None:
    store_root, source = make_store(tmp_path, count=CASES)
    store = Datastore(store_root)
    store.set_queue([c.case_id for c in store.cases()])
    holding: dict[str, str] = {}  # case id -> annotator, while leased
    served: list[tuple[str, str]] = []
    violations: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def annotate(name: str, server: ServerProcess) -> None:
        with server.client() as client:
            while True:
                response = client.post("/v1/queue/next", params={"annotator": name})
                if response.status_code != 200:
                    errors.append(f"{name}: next -> {response.status_code} {response.text}")
                    return
                case = response.json()["case"]
                if case is None:
                    return
                case_id = case["case_id"]
                with lock:
                    if holding.get(case_id) not in (None, name):
                        violations.append(f"{case_id} served to {name} while leased to {holding[case_id]}")
                    holding[case_id] = name
                    served.append((case_id, name))
                # A competing annotator may try to grab the same case: must be refused while leased.
                other = client.post(f"/v1/cases/{case_id}/lease", params={"annotator": name + "-rival"})
                if other.status_code != 409:
                    violations.append(f"{case_id}: rival lease got {other.status_code}")
                with lock:
                    del holding[case_id]  # the submit below ends the lease; clear first to avoid a false alarm
                submitted = client.put(
                    f"/v1/cases/{case_id}/label", params={"annotator": name},
                    content=label_path(source, case_id).read_bytes(),
                )
                if submitted.status_code != 200:
                    errors.append(f"{name}: submit {case_id} -> {submitted.status_code} {submitted.text}")

    with ServerProcess(store_root) as server:
        threads = [threading.Thread(target=annotate, args=(f"ann{n}", server)) for n in range(ANNOTATORS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        with server.client() as client:
            cases = client.get("/v1/cases").json()["cases"]
    assert not errors, errors
    assert not violations, violations
    served_ids = [case_id for case_id, _ in served]
    assert sorted(served_ids) == sorted(c["case_id"] for c in cases), "each case served exactly once"
    assert all(c["state"] == "labeled" and c["lease_holder"] is None for c in cases)
    for case in cases:  # no lost or mixed-up write
        stored = store.load_label(case["case_id"]).array
        assert np.array_equal(stored, read_volume(label_path(source, case["case_id"]), dtype=np.uint8).array)
