"""The queue, the case list and one case are served from memory, and never stale (issue 12 item 15).

Served from memory: repeated reads with no change in between read the database once (counted on the store's
methods). Never stale: a write by another connection (another process's, as a job worker's commit), the server's
own writes, and a lease that merely expires are all seen by the next request; the bytes equal what the store
says.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from activeseg.api.hot_reads import DICOM_INDEX_FILE
from activeseg.api.schemas import case_out
from activeseg.api.server import create_app
from activeseg.io.volumes import read_volume
from activeseg.store.datastore import Datastore
from activeseg.store.dicom_index import DICOM_DB

from .support import ServerProcess, label_path, make_store, tiny_config

HOT_ROUTES = ("/v1/queue", "/v1/cases", "/v1/cases?state=queued", "/v1/cases?split=train", "/v1/cases/phantom_001")


@pytest.fixture()
def store_and_source(tmp_path: Path) -> tuple[Datastore, Path]:
    config = tiny_config()
    config.lease_seconds = 1.5
    root, source = make_store(tmp_path, count=6, config=config)
    store = Datastore(root)
    store.set_queue(["phantom_001", "phantom_002", "phantom_003"])
    return store, source


@pytest.fixture()
def app_client(store_and_source: tuple[Datastore, Path]) -> Iterator[TestClient]:
    store, _ = store_and_source
    with TestClient(create_app(store.root, recover=False), base_url="http://127.0.0.1") as client:
        yield client


def _expected_cases(store: Datastore) -> list[dict]:
    scores = store.scores()
    return [case_out(record, scores.get(record.case_id)).model_dump() for record in store.cases()]


def test_repeated_reads_query_the_database_once(
        app_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    context = app_client.app.state.context  # type: ignore[attr-defined]
    calls = {"queue": 0, "cases": 0}
    for name in calls:
        original = getattr(context.store, name)

        def counted(*args: object, _name: str = name, _original: object = original, **kwargs: object) -> object:
            calls[_name] += 1
            return _original(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(context.store, name, counted)
    for _ in range(5):
        for route in HOT_ROUTES:
            assert app_client.get(route).status_code == 200
    assert calls == {"queue": 1, "cases": 1}


def test_a_write_by_another_connection_is_seen_at_once(
        app_client: TestClient, store_and_source: tuple[Datastore, Path]) -> None:
    store, source = store_and_source
    other = Datastore(store.root)  # its own connections, as a job worker's or the command line's
    def queue_ids() -> list[str]:
        return [item["case"]["case_id"] for item in app_client.get("/v1/queue").json()["items"]]

    assert queue_ids() == [record.case_id for record, _ in other.queue()]
    assert sorted(queue_ids()) == ["phantom_001", "phantom_002", "phantom_003"]
    other.set_queue(["phantom_003"])
    assert queue_ids() == ["phantom_003"]
    other.submit_label("phantom_000", read_volume(label_path(source, "phantom_000")), annotator="worker")
    assert app_client.get("/v1/cases/phantom_000").json()["has_label"] is True
    assert app_client.get("/v1/cases").json()["cases"] == _expected_cases(other)


def test_the_servers_own_writes_and_expired_leases_are_seen(store_and_source: tuple[Datastore, Path]) -> None:
    """Over HTTP against the real server: a lease shows at once and is gone once it expired (no write between)."""
    store, _ = store_and_source
    with ServerProcess(store.root) as server, server.client() as client:
        assert client.get("/v1/queue").json()["items"][0]["case"]["lease_holder"] is None
        leased = client.post("/v1/queue/next", params={"annotator": "ann"}).json()["case"]
        case_id = leased["case_id"]

        def holders() -> list[str | None]:
            queue = {item["case"]["case_id"]: item["case"] for item in client.get("/v1/queue").json()["items"]}
            cases = {case["case_id"]: case for case in client.get("/v1/cases").json()["cases"]}
            return [queue[case_id]["lease_holder"], cases[case_id]["lease_holder"],
                    client.get(f"/v1/cases/{case_id}").json()["lease_holder"]]

        assert holders() == ["ann"] * 3
        while time.time() <= leased["lease_expires"]:
            time.sleep(0.1)
        assert holders() == [None] * 3
        assert client.get("/v1/cases").json()["cases"] == _expected_cases(store)
        filtered = client.get("/v1/cases", params={"state": "queued", "split": "train"}).json()["cases"]
        assert filtered == [case for case in _expected_cases(store)
                            if case["state"] == "queued" and case["split"] == "train"]
        assert client.get("/v1/cases/nope").status_code == 404
        assert client.get("/v1/cases", params={"state": "nope"}).status_code == 409


def test_the_dicom_index_file_name_agrees() -> None:
    assert DICOM_INDEX_FILE == DICOM_DB
