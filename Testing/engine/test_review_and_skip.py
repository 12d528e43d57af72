"""Issue 14 items 4, 5 and 9 on the datastore: Reject is logged, Skip, re-opening a reviewed case."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from activeseg.io.atomic import atomic_write
from activeseg.io.seg_nrrd import write_segmentation_file
from activeseg.io.volumes import read_volume
from activeseg.store.datastore import Datastore

from ..tiny import make_store


@pytest.fixture()
def store_and_source(tmp_path: Path) -> tuple[Datastore, Path]:
    root, source = make_store(tmp_path, count=8)
    return Datastore(root), source


def _pseudo(store: Datastore, source: Path, case_ids: list[str], version: int = 1) -> None:
    written = {}
    for case_id in case_ids:
        label = read_volume(source / "labelsTr" / f"{case_id}.nii.gz")
        path = store.meta_dir / "pseudo" / f"{case_id}.v{version}.seg.nrrd"
        atomic_write(path, lambda p, label=label: write_segmentation_file(p, label.array.astype("uint8"), label.geometry,
                                                                         store.config.labels))
        written[case_id] = path
    store.set_pseudo_labels(version, written)


def test_reject_is_logged(store_and_source: tuple[Datastore, Path], caplog: pytest.LogCaptureFixture) -> None:
    store, source = store_and_source
    case_id = store.cases(split="train")[0].case_id
    _pseudo(store, source, [case_id])
    with caplog.at_level(logging.INFO, logger="activeseg.store.labels"):
        store.reject_pseudo(case_id, "dr_a")
    assert any(case_id in r.getMessage() and "rejected by dr_a" in r.getMessage() and "v1" in r.getMessage()
               for r in caplog.records), caplog.text


def test_skip_releases_and_is_not_served_straight_back(store_and_source: tuple[Datastore, Path]) -> None:
    """Issue 14 item 5: before the first model Next served the same case again after walking away."""
    from activeseg.errors import LeaseError

    store, source = store_and_source
    first = store.lease_next("dr_a")
    assert first is not None
    skipped = store.skip(first.case_id, "dr_a")
    assert skipped.lease_holder is None
    second = store.lease_next("dr_a")
    assert second is not None and second.case_id != first.case_id
    # another annotator is not affected by dr_a's skip: the skipped case is theirs first
    assert store.lease_next("dr_b").case_id == first.case_id
    with pytest.raises(LeaseError):
        store.skip(first.case_id, "dr_a")  # dr_b holds it now
    store.release(first.case_id, "dr_b")
    # once dr_a has everything else, the skipped case comes back (longest-skipped first)
    served = [second.case_id]
    store.skip(second.case_id, "dr_a")
    for _ in range(len(store.cases(state="unlabeled")) - 2):
        record = store.lease_next("dr_a")
        served.append(record.case_id)
        label = read_volume(source / "labelsTr" / f"{record.case_id}.nii.gz")
        store.submit_label(record.case_id, label, annotator="dr_a")
    assert store.lease_next("dr_a").case_id == first.case_id  # skipped before second


def test_skip_works_on_a_datastore_created_before_skips_existed(store_and_source: tuple[Datastore, Path]) -> None:
    import sqlite3

    store, _ = store_and_source
    with sqlite3.connect(store.db_path) as connection:
        connection.execute("DROP TABLE skips")
    first = store.lease_next("dr_a")  # reading works without the table
    store.skip(first.case_id, "dr_a")  # the first skip creates it
    assert store.case_queue.skipped("dr_a").keys() == {first.case_id}
    assert store.lease_next("dr_a").case_id != first.case_id


def test_a_labelled_case_is_leased_only_when_reopened(store_and_source: tuple[Datastore, Path]) -> None:
    """Issue 14 item 4: an accepted pseudo-label could not be opened again (409 on lease)."""
    from activeseg.errors import CaseStateError

    store, source = store_and_source
    case_id = store.cases(split="train")[0].case_id
    _pseudo(store, source, [case_id])
    store.accept_pseudo(case_id, "dr_a")
    with pytest.raises(CaseStateError, match="re-open"):
        store.lease(case_id, "dr_a")
    assert store.lease(case_id, "dr_a", reopen=True).lease_holder == "dr_a"
    served = store.lease_next("dr_b")
    assert served is None or served.case_id != case_id  # Next never serves a labelled case
