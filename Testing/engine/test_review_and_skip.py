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
