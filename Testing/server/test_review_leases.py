"""Pseudo-label review respects leases and never lets two verdicts both win (issue 12, item 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activeseg.errors import CaseStateError, LeaseError
from activeseg.io.atomic import atomic_write
from activeseg.io.seg_nrrd import write_segmentation_file
from activeseg.io.volumes import read_volume
from activeseg.store.datastore import Datastore
from activeseg.store.labels import LabelStore

from .support import ServerProcess, label_path, make_store


def _with_pseudo(root: Path) -> tuple[Datastore, Path, str]:
    store_root, source = make_store(root, count=5)
    store = Datastore(store_root)
    case_id = store.cases(split="train")[0].case_id
    truth = read_volume(label_path(source, case_id), dtype=np.uint8)
    pseudo = store.meta_dir / "pseudo" / f"{case_id}.v1.seg.nrrd"
    atomic_write(pseudo, lambda p: write_segmentation_file(p, truth.array, truth.geometry, store.config.labels))
    store.set_pseudo_labels(1, {case_id: pseudo})
    assert store.case(case_id).state == "pseudo"
    return store, store_root, case_id


def test_accept_and_reject_refuse_a_case_leased_by_someone_else(tmp_path: Path) -> None:
    store, _, case_id = _with_pseudo(tmp_path)
    store.lease(case_id, "carol")
    for verdict in (store.accept_pseudo, store.reject_pseudo):
        with pytest.raises(LeaseError, match="carol"):
            verdict(case_id)
        with pytest.raises(LeaseError, match="carol"):
            verdict(case_id, annotator="dan")
    assert store.case(case_id).state == "pseudo"
    assert store.accept_pseudo(case_id, annotator="carol").state == "accepted"  # the holder may


def test_reject_during_accept_leaves_one_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: accept read the pseudo-label, reject committed, then accept committed too: both 200."""
    store, _, case_id = _with_pseudo(tmp_path)
    real_write = LabelStore._write_label_file

    def write_then_reject(self: LabelStore, *args: object) -> str:
        relative = real_write(self, *args)
        Datastore(store.root).reject_pseudo(case_id)  # another request wins the race meanwhile
        return relative

    monkeypatch.setattr(LabelStore, "_write_label_file", write_then_reject)
    with pytest.raises(CaseStateError, match="meanwhile"):
        store.accept_pseudo(case_id)
    record = store.case(case_id)
    assert record.state == "rejected" and record.label_path is None
    assert not list((store.meta_dir / "labels").iterdir())  # the accept's file was removed


def test_api_passes_the_annotator_to_review(tmp_path: Path) -> None:
    store, store_root, case_id = _with_pseudo(tmp_path)
    store.lease(case_id, "carol")
    with ServerProcess(store_root) as server, server.client() as client:
        refused = client.post(f"/v1/cases/{case_id}/pseudo/reject")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "leased"
        assert client.post(f"/v1/cases/{case_id}/pseudo/reject", params={"annotator": "dan"}).status_code == 409
        done = client.post(f"/v1/cases/{case_id}/pseudo/reject", params={"annotator": "carol"})
        assert done.status_code == 200 and done.json()["state"] == "rejected"
