"""SIGKILL the server mid-submission and mid-training; after a restart nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from activeseg.store.datastore import Datastore
from activeseg.io.volumes import read_volume, write_volume

from .support import ServerProcess, label_path, make_store, tiny_config, wait_for_job


def _variants(source: Path, case_id: str, folder: Path) -> dict[str, tuple[bytes, np.ndarray]]:
    """Two different valid labels of one case: the truth, and the truth with lesions merged into lung."""
    truth = read_volume(label_path(source, case_id), dtype=np.uint8)
    out = {}
    for name, array in (("a", truth.array), ("b", np.where(truth.array == 2, 1, truth.array).astype(np.uint8))):
        if name == "b" and np.array_equal(array, truth.array):
            array = truth.array.copy()
            array[0, 0, 0] = 1  # phantom without lesion: still make the two labels differ
        path = folder / f"{case_id}-{name}.nii.gz"
        write_volume(array, truth.geometry, path)
        out[name] = (path.read_bytes(), array)
    return out


def test_kill_during_label_submission(tmp_path: Path) -> None:
    store_root, source = make_store(tmp_path, count=6)
    case_ids = [f"phantom_{n:03d}" for n in range(6)]
    variants = {case_id: _variants(source, case_id, tmp_path) for case_id in case_ids}
    acked: dict[str, str] = {}  # case -> variant of its last 200 response
    in_flight: dict[str, str] = {}
    server = ServerProcess(store_root).start()
    stop = threading.Event()

    def submit_forever(case_id: str) -> None:
        rng = random.Random(case_id)
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                name = rng.choice("ab")
                in_flight[case_id] = name
                try:
                    response = client.put(f"/v1/cases/{case_id}/label", params={"annotator": "x"}, content=variants[case_id][name][0])
                except httpx.HTTPError:
                    return  # the server died under us: this submission was not acknowledged
                if response.status_code == 200:
                    acked[case_id] = name
                    in_flight.pop(case_id, None)

    threads = [threading.Thread(target=submit_forever, args=(c,)) for c in case_ids]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    server.kill()
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert acked, "no submission was acknowledged before the kill; the test proved nothing"

    with ServerProcess(store_root) as restarted, restarted.client() as client:
        cases = {c["case_id"]: c for c in client.get("/v1/cases").json()["cases"]}
        store = Datastore(store_root)
        for case_id in case_ids:
            record = store.case(case_id)
            if record.label_path is not None:
                assert record.label_path.is_file(), f"{case_id} points at a missing label file"
            if case_id not in acked:
                continue
            assert cases[case_id]["state"] == "labeled", f"acknowledged label of {case_id} lost"
            stored = store.load_label(case_id).array
            allowed = {acked[case_id], in_flight.get(case_id, acked[case_id])}
            assert any(np.array_equal(stored, variants[case_id][name][1]) for name in allowed), case_id
        # Files on disk are exactly those the database references (plus young left-overs recover() keeps).
        referenced = {c.label_path.name for c in store.cases() if c.label_path}
        on_disk = {p.name for p in (store.meta_dir / "labels").iterdir() if not p.name.startswith(".tmp-")}
        assert referenced <= on_disk
        # The server still accepts new work after the crash.
        ok = client.put(f"/v1/cases/{case_ids[0]}/label", params={"annotator": "y"}, content=variants[case_ids[0]]["a"][0])
        assert ok.status_code == 200


def _worker_pids(job_id: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"activeseg.jobs.worker" in cmdline and job_id.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


def test_kill_during_training_job(tmp_path: Path) -> None:
    config = tiny_config()
    config.training.epochs_first = 200  # long enough to be killed mid-way
    store_root, source = make_store(tmp_path, count=6, config=config)
    server = ServerProcess(store_root).start()
    with server.client() as client:
        for case_id in ("phantom_000", "phantom_001"):
            response = client.put(f"/v1/cases/{case_id}/label", params={"annotator": "a"}, content=label_path(source, case_id).read_bytes())
            assert response.status_code == 200
        started = client.post("/v1/jobs/train")
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        assert started.headers["location"] == f"/v1/jobs/{job_id}"
        assert client.post("/v1/jobs/rank").status_code == 409  # one job at a time
        job: dict | None = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["progress"].get("phase") == "train" or job["status"] != "running":
                break
            time.sleep(0.2)
        assert job is not None and job["status"] == "running" and job["progress"]["phase"] == "train", job
        assert job["progress"]["epochs"] == 200 and job["progress"]["eta_s"] is not None
    assert _worker_pids(job_id), "worker process not found"
    server.kill()

    with ServerProcess(store_root) as restarted, restarted.client() as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "interrupted" and "server stopped" in job["error"]
        deadline = time.monotonic() + 10
        while _worker_pids(job_id) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _worker_pids(job_id), "orphaned worker still running after restart"
        assert client.get("/v1/models").json()["models"] == []
        labeled = [c for c in client.get("/v1/cases").json()["cases"] if c["state"] == "labeled"]
        assert len(labeled) == 2
        # A new job can start, and cancelling it ends its process tree.
        again = client.post("/v1/jobs/train")
        assert again.status_code == 202, again.text
        new_id = again.json()["job_id"]
        cancel = client.post(f"/v1/jobs/{new_id}/cancel")
        assert cancel.status_code == 202 and cancel.json()["cancel_requested"] is True
        final = wait_for_job(client, new_id, timeout=60)
        assert final["status"] == "cancelled", final
        assert not _worker_pids(new_id)
        assert client.post(f"/v1/jobs/{new_id}/cancel").status_code == 409
        assert os.path.exists(store_root / ".activeseg" / "jobs" / f"{new_id}.log")
        log = client.get(f"/v1/jobs/{new_id}/log")
        assert log.status_code == 200 and log.headers["content-type"].startswith("text/plain") and new_id in log.text
