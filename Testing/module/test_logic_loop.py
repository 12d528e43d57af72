"""The module's Logic drives the whole active-learning loop against a real backend, with real MRML nodes.

Phantoms -> ``activeseg init`` (tiny settings) -> Start local backend (BackendLauncher, this interpreter) ->
label two cases (cold start) -> Retrain, poll to completion -> queue -> Next (with its uncertainty overlay, views
centred on the most uncertain region) -> "segment" with ground truth -> Submit (backend: labeled) -> Retrain ->
learning-curve plot -> review a pseudo-label -> Accept (backend: accepted). The same loop as
``ActiveSegTest.runTest`` inside Slicer.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .backend_support import SHAPE, fixture, ground_truth_path, make_store

ANNOTATOR = "alice"


@pytest.fixture()
def logic(ctx: Any, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A core logic on a headless scene, with a local backend on 8 phantoms: (logic, phantom folder)."""
    pytest.importorskip("activeseg")
    from ActiveSegLib.logic import ActiveSegCoreLogic

    store, source = make_store(tmp_path, count=8)
    core = ActiveSegCoreLogic(ctx)
    info = core.session.start_local_backend(sys.executable, str(store), timeout_s=120)
    assert info.counts["total"] == 8 and core.session.labels == {1: "lung", 2: "lesion"}
    core.store = store  # where the backend keeps its files (the test writes uncertainty maps there)
    try:
        yield core, source
    finally:
        launcher = core.session.launcher
        core.shutdown()
        assert core.session.launcher is None and launcher is not None and not launcher.running


def _segment_with_ground_truth(core: Any, ctx: Any, source: Path, volume: Any, segmentation: Any) -> np.ndarray:
    """What the radiologist does in the Segment Editor: here, paint the phantom's true labelmap."""
    from ActiveSegLib import mrml

    import slicer

    case_id = volume.GetAttribute("ActiveSeg.CaseId")
    labels = core.session.labels
    start = mrml.labelmap_array_from_segmentation(ctx, segmentation, volume, labels)
    assert not start.any() or core.cases.current.start_kind == "prediction"
    truth_node = mrml.volume_node_from_file(ctx, ground_truth_path(source, case_id), "truth", labelmap=True)
    # The downloaded image and the ground-truth file describe the same RAS grid (LPS in both files).
    assert np.allclose(mrml.ijk_to_ras_matrix(truth_node), mrml.ijk_to_ras_matrix(volume), atol=1e-4)
    array = slicer.util.arrayFromVolume(truth_node).copy()
    mrml.remove_node(ctx.scene, truth_node)
    assert set(np.unique(array)) <= {0, 1, 2} and array.any()
    assert not core.has_unsaved_edits() or core.cases.current.start_kind
    core.cases.fill_segmentation(segmentation, volume, array)
    assert core.has_unsaved_edits()  # painting counts as an edit
    painted = mrml.labelmap_array_from_segmentation(ctx, segmentation, volume, labels)
    assert np.array_equal(painted, array)
    return array


def _label_next(core: Any, ctx: Any, source: Path) -> str:
    loaded = core.cases.load_next_case(ANNOTATOR)
    assert loaded is not None
    return _segment_and_submit(core, ctx, source, loaded)


def _check_uncertainty_and_label(core: Any, ctx: Any, source: Path, block: tuple[slice, slice, slice],
                                 slice_node: Any, composite: Any) -> str:
    """Next shows the case's uncertainty map: image geometry, legend, toggle, views centred on the hot block."""
    import slicer

    from ActiveSegLib import mrml

    loaded = core.cases.load_next_case(ANNOTATOR)
    assert loaded is not None
    overlay = core.cases.uncertainty
    node = overlay.volume_node
    assert node is not None and overlay.case_id == loaded.case_id and overlay.visible
    assert mrml.grid_shape_kji(node) == mrml.grid_shape_kji(loaded.volume_node)
    assert np.allclose(mrml.ijk_to_ras_matrix(node), mrml.ijk_to_ras_matrix(loaded.volume_node), atol=1e-4)
    values = slicer.util.arrayFromVolume(node)
    assert values.dtype == np.uint8 and values.max() == 100
    peak = np.unravel_index(int(np.argmax(values)), values.shape)
    assert all(s.start <= p < s.stop for p, s in zip(peak, block))
    assert overlay.legend_node.GetTitleText() == "Uncertainty (%)" and overlay.legend_node.GetVisibility()
    assert composite.GetForegroundVolumeID() == node.GetID() and composite.GetForegroundOpacity() > 0
    ras = overlay.jump_to_hotspot()
    ijk = np.linalg.inv(mrml.ijk_to_ras_matrix(loaded.volume_node)) @ np.array([*ras, 1.0])
    assert all(s.start - 0.5 <= c <= s.stop - 0.5 for c, s in zip(ijk[2::-1], block)), (ijk, block)
    centre = slice_node.GetSliceToRAS()
    assert np.allclose([centre.GetElement(r, 3) for r in range(3)], ras, atol=1e-3)
    overlay.set_visible(False)
    assert composite.GetForegroundOpacity() == 0.0 and not overlay.legend_node.GetVisibility()
    overlay.set_visible(True)
    return _segment_and_submit(core, ctx, source, loaded)


def _segment_and_submit(core: Any, ctx: Any, source: Path, loaded: Any) -> str:
    volume, segmentation = loaded.volume_node, loaded.segmentation_node
    case_id = loaded.case_id
    assert volume.GetName() == case_id and volume.IsA("vtkMRMLScalarVolumeNode")
    assert tuple(int(d) for d in reversed(volume.GetImageData().GetDimensions())) == SHAPE
    names = [segmentation.GetSegmentation().GetNthSegment(n).GetName()
             for n in range(segmentation.GetSegmentation().GetNumberOfSegments())]
    assert names == ["lung", "lesion"]
    assert core.session.client.case(case_id).lease_holder == ANNOTATOR
    _segment_with_ground_truth(core, ctx, source, volume, segmentation)
    answer = core.cases.submit(no_finding=False)
    assert answer.state == "labeled" and answer.lease_holder is None
    assert core.cases.case_state(case_id) == "labeled"
    assert not core.has_unsaved_edits()
    return case_id


def _train(core: Any) -> Any:
    seen: list[Any] = []
    job_id = core.training.retrain(then_rank=True)
    job = core.training.wait_for_job(job_id, timeout_s=240, interval_s=0.25, progress=seen.append)
    assert job.status == "succeeded", job.error or job.log_tail
    fraction, text = job.describe()
    assert fraction == 1.0 and (text.startswith("registered model v") or text.startswith("kept the previous model v"))
    assert "ranked the pool" in text
    # Issue 14 item 2: one progress over the whole job (training, validation, comparison, ranking, writing)
    running = [s for s in seen if not s.done and s.progress.fraction is not None]
    assert running, "the backend reports the whole job's fraction"
    fractions = [s.progress.fraction for s in running]
    assert fractions == sorted(fractions) and all(f < 1.0 for f in fractions), \
        [(a.progress.phase, a.progress.fraction, b.progress.phase, b.progress.fraction)
         for a, b in zip(running, running[1:]) if b.progress.fraction < a.progress.fraction or b.progress.fraction >= 1]
    assert all(s.progress.phase_label for s in running)
    assert set(job.result["timing"]) >= {"step_s", "rank_case_s"}  # measured, for the next job's estimate
    assert all(0.0 <= (s.describe()[0] or 0.0) <= 1.0 and s.describe()[1].startswith("train") for s in seen)
    return job


def _write_constructed_uncertainty(store: Path, case_id: str) -> tuple[slice, slice, slice]:
    """What the ranking round writes for a case, from constructed heads: they disagree only in one block.

    Returns:
        the block (k, j, i) where the heads disagree.
    """
    from activeseg.io.volumes import read_geometry
    from activeseg.method.uncertainty_map import write_uncertainty_map
    from activeseg.store.datastore import Datastore

    record = Datastore(store).case(case_id)
    geometry = read_geometry(record.image_path)
    shape = geometry.array_shape
    main = np.zeros((3, *shape), np.float32)
    main[0] = 1.0
    aux = main.copy()
    block = (slice(9, 13), slice(4, 10), slice(20, 28))
    aux[(slice(None), *block)] = np.array([0.0, 0.0, 1.0], np.float32)[:, None, None, None]
    write_uncertainty_map(Datastore(store).meta_dir, case_id, main, aux, aux, geometry)
    return block


@pytest.mark.slow
def test_the_logic_runs_the_active_learning_loop(logic: tuple[Any, Path], ctx: Any) -> None:
    core, source = logic
    # --- cold start: nothing ranked yet, Next still hands out unlabelled (training) cases
    assert core.cases.refresh_queue() == []
    first = [_label_next(core, ctx, source) for _ in range(2)]
    assert len(set(first)) == 2
    assert core.session.refresh_info().counts["labeled"] == 2
    # Loading a new case replaced the previous case's nodes instead of piling them up.
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1

    # --- first round: train + rank
    job = _train(core)
    assert job.model_version == 1
    rows = core.cases.refresh_queue()
    assert rows and [r.rank for r in rows] == list(range(1, len(rows) + 1))
    assert all(r.state == "queued" for r in rows)
    assert len(rows[0].cells()) == 4

    # --- Next gives the top of the queue with its uncertainty overlay; segment; submit
    top = rows[0].case_id
    block = _write_constructed_uncertainty(core.store, top)
    slice_node = ctx.scene.AddNewNodeByClass("vtkMRMLSliceNode")  # a slice view (Slicer's layout has three)
    composite = ctx.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    case_id = _check_uncertainty_and_label(core, ctx, source, block, slice_node, composite)
    assert case_id == top

    # --- second round, learning curve as a Slicer plot
    job = _train(core)
    assert job.model_version == 2
    curve = core.training.learning_curve()
    assert [r.version for r in curve] == [1, 2] and curve[-1].active
    assert curve[1].n_expert is not None and curve[1].n_expert >= 2
    if rows[0].case.split == "val":  # the queue serves unlabelled validation cases first: now Dice can be measured
        assert curve[0].val_dice is None and curve[1].val_dice is not None and 0.0 <= curve[1].val_dice <= 1.0
    chart = core.training.update_learning_curve_plot(curve)
    assert chart.IsA("vtkMRMLPlotChartNode") and chart.GetNumberOfPlotSeriesNodes() == 1
    table = chart.GetNthPlotSeriesNode(0).GetTableNode()
    assert table.GetNumberOfRows() == 2 and table.GetTable().GetColumnByName("version").GetValue(1) == 2.0
    assert core.training.update_learning_curve_plot(curve) is chart  # reused, not duplicated
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 2  # Dice, loss

    # --- review: a pseudo-label overlaid on its volume, accepted
    pending = core.review.pending()
    if not pending:
        # This round's ranking routed no case "weak" (tiny network, confidence spread): roll back to version 1,
        # whose ranking did; the rollback re-ranks with it, which rewrites its pseudo-labels.
        rolled = core.training.rollback(1)
        assert rolled.model.active is True and rolled.rank_job is not None
        assert core.training.wait_for_job(rolled.rank_job.job_id, timeout_s=120).status == "succeeded"
        pending = core.review.pending()
    assert pending and all(r.state == "pseudo" for r in pending)
    review_id = pending[0].case_id
    overlay = core.review.load_pseudo_label(review_id)
    assert overlay.IsA("vtkMRMLSegmentationNode") and overlay.GetName() == f"{review_id} pseudo-label"
    assert core.review.review.volume_node.GetAttribute("ActiveSeg.CaseId") == review_id
    names = {overlay.GetSegmentation().GetNthSegment(n).GetName()
             for n in range(overlay.GetSegmentation().GetNumberOfSegments())}
    assert names <= {"lung", "lesion"} and names
    assert not core.review.has_unsaved_edits()
    assert core.review.accept(review_id).state == "accepted"
    assert core.cases.case_state(review_id) == "accepted"
    counts = core.session.refresh_info().counts
    assert counts["accepted"] == 1 and counts["labeled"] == 3
    # --- closing the scene drops every reference to its nodes
    ctx.scene.Clear(0)
    core.forget_scene()
    assert core.cases.current is None and core.review.review is None and core.cases.uncertainty.volume_node is None


def test_queue_rows_and_job_summaries_from_fixtures() -> None:
    from ActiveSegLib.cases import QueueRow
    from ActiveSegLib.responses import Case, Job, Queue

    rows = [QueueRow(item.case, item.rank) for item in Queue.from_json(fixture("queue")).items]
    assert rows[0].case_id == "phantom_006" and rows[0].cells() == ("phantom_006", "\u2014", "\u2014", "queued")
    scored = QueueRow(Case.from_json(fixture("case")))
    case = fixture("case")
    assert scored.cells() == ("phantom_003", f"{case['mdsc']:.3f}", case["route"], case["state"])
    assert Job.from_json(fixture("job_running")).describe()[1].startswith("train: ")
    assert Job.from_json(fixture("job_succeeded")).describe()[1].startswith("registered model v1 (")
    # Issue 14 item 1: a round that kept the previous model says so, with both scores; it is not a new version.
    kept = Job.from_json({"job_id": "j", "kind": "train", "status": "succeeded", "progress": {"phase": "done"},
                          "result": {"model_version": 1, "registered": False, "message":
                                     "kept the previous model v1: the new weights scored 0.039 against 0.127 "
                                     "(mean validation Dice on the source grids)"}})
    assert kept.describe() == (1.0, "kept the previous model v1: the new weights scored 0.039 against 0.127 "
                                    "(mean validation Dice on the source grids)")
    assert not kept.registered_new_model and Job.from_json(fixture("job_succeeded")).registered_new_model
    fraction, text = Job.from_json({"job_id": "j", "kind": "train", "status": "running", "progress": {
        "phase": "train", "epoch": 2, "epochs": 4, "step": 5, "steps": 10, "loss": 0.41234, "eta_s": 65.2}}).describe()
    assert fraction == pytest.approx(15 / 40)
    assert text == "train: train, epoch 2/4, step 5/10, loss 0.412, ETA 1 min 5 s"
    failed = Job.from_json({"job_id": "j", "kind": "rank", "status": "failed", "error": "CUDA out of memory",
                            "progress": {}})
    assert failed.describe() == (None, "rank failed: CUDA out of memory")


def test_logic_without_backend_says_so(ctx: Any) -> None:
    from ActiveSegLib import BackendUnavailableError, ClientError
    from ActiveSegLib.logic import ActiveSegCoreLogic

    core = ActiveSegCoreLogic(ctx)
    with pytest.raises(ClientError, match="not connected"):
        core.cases.refresh_queue()
    with pytest.raises(BackendUnavailableError):
        core.session.connect("http://127.0.0.1:9")  # discard port: nothing listens
    assert not core.session.connected
    with pytest.raises(ClientError, match="no case loaded"):
        core.cases.submit()
    # MRML-side calls never fetch the label set on the main thread: they say what is missing instead.
    with pytest.raises(ClientError, match="label set is not known"):
        core.cases.encode_submission(None, None)
