"""Downloads of pseudo-labels and predictions while a ranking round replaces them (issue 12, item 7):
only committed files are served, never a 500 or an empty body."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from activeseg.api.server import create_app
from activeseg.io.atomic import atomic_write
from activeseg.io.seg_nrrd import write_segmentation_file
from activeseg.io.volumes import read_volume
from activeseg.store.datastore import Datastore

from .support import label_path, make_store


@pytest.fixture()
def pseudo_case(tmp_path: Path) -> tuple[Datastore, str, list[bytes]]:
    store_root, source = make_store(tmp_path, count=5)
    store = Datastore(store_root)
    case_id = store.cases(split="train")[0].case_id
    truth = read_volume(label_path(source, case_id), dtype=np.uint8)
    versions = []
    for version in (1, 2):
        pseudo = store.meta_dir / "pseudo" / f"{case_id}.v{version}.seg.nrrd"
        array = truth.array if version == 1 else np.where(truth.array == 2, 1, truth.array).astype(np.uint8)
        atomic_write(pseudo, lambda p, a=array: write_segmentation_file(p, a, truth.geometry, store.config.labels))
        versions.append(pseudo.read_bytes())
    store.set_pseudo_labels(1, {case_id: store.meta_dir / "pseudo" / f"{case_id}.v1.seg.nrrd"})
    return store, case_id, versions


def test_pseudo_label_replaced_between_lookup_and_send_is_served_from_the_new_pointer(
    pseudo_case: tuple[Datastore, str, list[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: FileResponse of the path read from the database, deleted by the round's commit meanwhile: 500."""
    store, case_id, versions = pseudo_case
    stale = store.case(case_id)
    store.set_pseudo_labels(2, {case_id: store.meta_dir / "pseudo" / f"{case_id}.v2.seg.nrrd"})  # v1 deleted
    assert not stale.pseudo_path.exists()
    real_case = Datastore.case
    calls = {"n": 0}

    def case_once_stale(self: Datastore, wanted: str):  # the request read the row just before the commit
        calls["n"] += 1
        return stale if calls["n"] == 1 else real_case(self, wanted)

    monkeypatch.setattr(Datastore, "case", case_once_stale)
    with TestClient(create_app(store.root, recover=False), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        response = client.get(f"/v1/cases/{case_id}/pseudo")
    assert response.status_code == 200, response.text
    assert response.content == versions[1]


def test_downloads_while_files_are_replaced_are_whole(pseudo_case: tuple[Datastore, str, list[bytes]]) -> None:
    store, case_id, versions = pseudo_case
    target = store.meta_dir / "pseudo" / f"{case_id}.v1.seg.nrrd"
    stop = threading.Event()

    def replace_forever() -> None:
        n = 0
        while not stop.is_set():
            atomic_write(target, lambda p, d=versions[n % 2]: Path(p).write_bytes(d), verify=False)
            n += 1

    writer = threading.Thread(target=replace_forever, daemon=True)
    with TestClient(create_app(store.root, recover=False), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        writer.start()
        try:
            answers = [client.get(f"/v1/cases/{case_id}/pseudo") for _ in range(200)]
        finally:
            stop.set()
            writer.join()
    assert [a.status_code for a in answers if a.status_code != 200] == []
    assert all(a.content in versions for a in answers)
