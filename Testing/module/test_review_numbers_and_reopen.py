"""Issue 14 item 4 through the module's Logic on a real backend: the review table and panel give the model's
confidence and the volume of each class (ml); an accepted pseudo-label can be re-opened, edited and submitted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ActiveSegLib import BackendRequestError

from .backend_support import ground_truth_path
from .test_logic_loop import ANNOTATOR, logic  # noqa: F401  (the fixture: a Logic with a local backend)


def _pseudo_label_from_ground_truth(store_root: Path, source: Path) -> tuple[str, np.ndarray, float]:
    """Give one training case a pseudo-label (its ground truth) and scores under a model v1, as a ranking would.
    Returns (case id, ground truth (k, j, i), voxel volume in ml)."""
    from activeseg.io.atomic import atomic_write
    from activeseg.io.seg_nrrd import write_segmentation_file
    from activeseg.io.volumes import read_volume
    from activeseg.store.datastore import Datastore, ScoreRecord

    store = Datastore(store_root)
    case_id = store.cases(split="train")[0].case_id
    weights = store_root / "weights.pt"
    weights.write_bytes(b"not used by this test")
    store.add_model(weights, {"round": 1}, parent=None)
    truth = read_volume(ground_truth_path(source, case_id))
    array = truth.array.astype(np.uint8)
    path = store.meta_dir / "pseudo" / f"{case_id}.v1.seg.nrrd"
    atomic_write(path, lambda p: write_segmentation_file(p, array, truth.geometry, store.config.labels))
    store.set_pseudo_labels(1, {case_id: path})
    store.store_scores([ScoreRecord(case_id=case_id, model_version=1, mdsc=0.91, confidence=0.87, foreground_ml=12.5,
                                    route="weak")])
    return case_id, array, float(np.prod(truth.geometry.spacing)) / 1000.0


def test_review_shows_confidence_and_volume_per_class(logic: tuple[Any, Path]) -> None:  # noqa: F811
    core, source = logic
    case_id, truth, voxel_ml = _pseudo_label_from_ground_truth(core.store, source)
    rows = core.review.rows()
    assert [r.case_id for r in rows] == [case_id]
    assert rows[0].cells() == (case_id, "0.910", "0.870", "12.5", "pseudo")
    core.review.load_pseudo_label(case_id)
    volumes = core.review.class_volumes_ml()
    assert set(volumes) == {"lung", "lesion"}
    for value, name in core.session.labels.items():
        assert volumes[name] == pytest.approx(float((truth == value).sum()) * voxel_ml, rel=1e-6)
        assert volumes[name] > 0
    text = core.review.summary(core.session.client.case(case_id))
    assert f"lung {volumes['lung']:.1f} ml" in text and "confidence 0.87" in text


def test_an_accepted_pseudo_label_can_be_reopened_and_edited(logic: tuple[Any, Path]) -> None:  # noqa: F811
    from ActiveSegLib import mrml

    core, source = logic
    case_id, truth, _ = _pseudo_label_from_ground_truth(core.store, source)
    assert core.review.accept(case_id).state == "accepted"
    assert [(r.case_id, r.state) for r in core.review.rows()] == [(case_id, "accepted")]  # still listed, re-openable
    with pytest.raises(BackendRequestError):  # a plain lease (a stale queue entry) does not re-open it
        core.session.client.lease(case_id, ANNOTATOR)
    loaded = core.cases.reopen_case(case_id, ANNOTATOR)
    assert loaded.start_kind == "label" and core.session.client.case(case_id).lease_holder == ANNOTATOR
    shown = mrml.labelmap_array_from_segmentation(core.session.context, loaded.segmentation_node, loaded.volume_node,
                                                  core.session.labels)
    assert np.array_equal(shown, truth)  # the accepted label, to edit
    case = core.cases.submit()  # (an edit would happen in the Segment Editor here)
    assert case.state == "labeled" and case.label_source == "expert" and case.lease_holder is None
