"""Segment colours and terminology as the module shows them (issue 14 item 9), through the Logic on a real
backend and the real MRML of the slicer-core wheel.

A datastore with eight classes, one configured colour and one configured code: the pseudo-label the backend
writes loads with eight distinct colours, the configured colour, and Slicer terminology on the coded classes;
an empty case (no starting segmentation) gets the very same colours from ``/v1/info``. Before, the seventh
class repeated the first, configured colours and codes never reached the file, and ``/v1/info`` gave colours
only for configured classes, so the module's own 6-colour palette disagreed with the files.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .backend_support import SHAPE, TINY_SETTINGS, ground_truth_path

pytest.importorskip("slicer")

LABELS = ("lung", "lesion", "liver", "spleen", "kidney", "aorta", "heart", "patch")
SETTINGS = (f"labels={','.join(LABELS)}", "label_colours.3=#00ff00", "label_codes.8=99LOCAL^P1^Patch")


@pytest.fixture()
def eight_class_logic(ctx: Any, tmp_path: Path) -> Iterator[tuple[Any, Path, Path]]:
    """A core logic with a local backend on 4 phantoms and eight classes: (logic, store, phantom folder)."""
    pytest.importorskip("activeseg")
    from activeseg.experiments.phantoms import write_phantom_dataset
    from ActiveSegLib.logic import ActiveSegCoreLogic

    dataset = write_phantom_dataset(tmp_path / "phantoms", count=4, shape=SHAPE)
    store = tmp_path / "store"
    overrides = [arg for item in (*TINY_SETTINGS, *SETTINGS) for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "activeseg", "init", str(store), "--from", str(dataset), *overrides],
                   check=True, timeout=120, capture_output=True)
    core = ActiveSegCoreLogic(ctx)
    core.session.start_local_backend(sys.executable, str(store), timeout_s=120)
    try:
        yield core, store, dataset.parent
    finally:
        core.shutdown()


def _segments(node: Any) -> dict[str, tuple[tuple[float, float, float], str]]:
    """Segment name -> (colour, TerminologyEntry tag) as MRML holds them."""
    segmentation = node.GetSegmentation()
    result = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        result[segment.GetName()] = (tuple(round(float(c), 4) for c in segment.GetColor()), segment.GetTerminology())
    return result


def test_module_shows_the_configured_and_distinct_colours_and_the_terms(
        eight_class_logic: tuple[Any, Path, Path]) -> None:
    from activeseg.io.atomic import atomic_write
    from activeseg.io.seg_nrrd import TERMINOLOGY_CONTEXT, segment_styles, write_segmentation_file
    from activeseg.io.volumes import read_volume
    from activeseg.store.datastore import Datastore, ScoreRecord

    core, store_root, source = eight_class_logic
    assert core.session.labels == dict(enumerate(LABELS, start=1))
    store = Datastore(store_root)
    styles = segment_styles(store.config)
    expected = {style.name: tuple(round(c, 4) for c in style.colour) for style in styles.values()}
    assert len(set(expected.values())) == 8 and expected["liver"] == (0.0, 1.0, 0.0)
    # /v1/info gives every class its colour (not only the configured one)
    assert {core.session.labels[v]: tuple(round(c, 4) for c in rgb) for v, rgb in core.session.label_colours.items()} \
        == expected

    # a case without a starting segmentation (before any model): empty segments in the same colours
    loaded = core.cases.load_next_case("alice")
    assert loaded is not None and not loaded.start_kind
    assert {name: colour for name, (colour, _) in _segments(loaded.segmentation_node).items()} == expected

    # a pseudo-label written as a ranking writes it (the datastore's settings), opened for review
    case_id = next(c.case_id for c in store.cases(split="train") if c.case_id != loaded.case_id)
    weights = store_root / "weights.pt"
    weights.write_bytes(b"not used by this test")
    store.add_model(weights, {"round": 1}, parent=None)
    truth = read_volume(ground_truth_path(source, case_id))
    path = store.meta_dir / "pseudo" / f"{case_id}.v1.seg.nrrd"
    atomic_write(path, lambda p: write_segmentation_file(p, truth.array.astype(np.uint8), truth.geometry, store.config))
    store.set_pseudo_labels(1, {case_id: path})
    store.store_scores([ScoreRecord(case_id=case_id, model_version=1, mdsc=0.9, confidence=0.8, foreground_ml=1.0,
                                    route="weak")])
    shown = _segments(core.review.load_pseudo_label(case_id))
    assert {name: colour for name, (colour, _) in shown.items()} == expected
    assert shown["liver"][1] == (f"{TERMINOLOGY_CONTEXT}~SCT^123037004^Anatomical Structure~SCT^10200004^Liver"
                                 "~^^~~^^~^^")
    assert "~SCT^49755003^Morphologically Altered Structure~SCT^52988006^Lesion~" in shown["lesion"][1]
    assert "~99LOCAL^P1^Patch~" in shown["patch"][1]
