"""The Logic's sections without a backend: the uncertainty overlay on real MRML nodes (slicer-core), unsaved-edit
tracking, lease release when walking away, job polling that gives up on a dead backend, the token store and the
Segment Editor hand-over on leaving the module."""

from __future__ import annotations

import ast
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ActiveSegLib import BackendRequestError, BackendUnavailableError
from ActiveSegLib.client import Download
from ActiveSegLib.credentials import TokenStore, server_key
from ActiveSegLib.editor import enter_editor, leave_editor
from ActiveSegLib.responses import Job
from ActiveSegLib.training import JobWatch

from .backend_support import fixture
from .conftest import MODULE_DIR

SHAPE = (12, 20, 24)  # (k, j, i)
HOT = (slice(2, 6), slice(12, 18), slice(3, 9))  # where the constructed heads disagree
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)  # rotated in-plane, LPS


def _geometry() -> Any:
    from activeseg.io.volumes import Geometry

    return Geometry(size=(SHAPE[2], SHAPE[1], SHAPE[0]), spacing=(0.7, 0.8, 2.5), origin=(-12.0, 30.5, 7.25),
                    direction=DIRECTION)


def _files(tmp_path: Path, geometry: Any) -> tuple[bytes, bytes]:
    """(image .nii.gz bytes, uncertainty map .nrrd bytes written by the engine's own function)."""
    from activeseg.io.volumes import write_volume
    from activeseg.method.uncertainty_map import write_uncertainty_map

    tmp_path.mkdir(parents=True, exist_ok=True)
    image = tmp_path / "image.nii.gz"
    write_volume(np.random.default_rng(0).normal(0, 100, SHAPE).astype(np.int16), geometry, image)
    main = np.zeros((3, *SHAPE), np.float32)
    main[0] = 1.0
    aux = main.copy()
    aux[(slice(None), *HOT)] = np.array([0.0, 1.0, 0.0], np.float32)[:, None, None, None]
    path = write_uncertainty_map(tmp_path / ".activeseg", "case_1", main, aux, aux, geometry)
    return image.read_bytes(), path.read_bytes()


@pytest.fixture()
def core(ctx: Any) -> Any:
    pytest.importorskip("activeseg")
    from ActiveSegLib.logic import ActiveSegCoreLogic
    from ActiveSegLib.responses import Info

    logic = ActiveSegCoreLogic(ctx)
    logic.session._set_info(Info.from_json(fixture("info")))  # as after connect()
    return logic


def _download(image: bytes, uncertainty: bytes | None, case_id: str = "case_1") -> Any:
    from ActiveSegLib.cases import CaseDownload
    from ActiveSegLib.responses import Case

    return CaseDownload(case=Case(case_id=case_id, state="queued"), annotator="alice",
                        image=Download(image, f"{case_id}.nii.gz"),
                        uncertainty=Download(uncertainty, f"{case_id}.uncertainty.nrrd") if uncertainty else None)


def test_uncertainty_overlay_has_the_image_geometry_and_points_at_the_disagreement(core: Any, ctx: Any,
                                                                                   tmp_path: Path) -> None:
    import slicer

    from ActiveSegLib import mrml
    from ActiveSegLib.uncertainty import LEGEND_TITLE, SHOW_FROM_PERCENT

    image, uncertainty = _files(tmp_path, _geometry())
    slice_nodes = [ctx.scene.AddNewNodeByClass("vtkMRMLSliceNode") for _ in range(3)]
    composite = ctx.scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    loaded = core.cases.build_case_nodes(_download(image, uncertainty))
    overlay = core.cases.uncertainty
    node = overlay.volume_node
    assert node is not None and node.GetAttribute("ActiveSeg.Role") == "uncertainty"
    # the map's geometry equals the image's (RAS, rotated, anisotropic)
    assert mrml.grid_shape_kji(node) == mrml.grid_shape_kji(loaded.volume_node) == SHAPE
    assert np.allclose(mrml.ijk_to_ras_matrix(node), mrml.ijk_to_ras_matrix(loaded.volume_node), atol=1e-6)
    # its maximum lies where the heads disagree
    values = slicer.util.arrayFromVolume(node)
    peak = np.unravel_index(int(np.argmax(values)), SHAPE)
    assert all(s.start <= p < s.stop for p, s in zip(peak, HOT)) and values[HOT].min() == 100
    # colour overlay with a legend, voxels the model is sure about transparent
    display = node.GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == SHOW_FROM_PERCENT
    assert display.GetColorNode() is not None and display.GetColorNode().GetName() in ("Inferno", "Plasma",
                                                                                      "ColdToHotRainbow", "Rainbow")
    assert overlay.legend_node.GetTitleText() == LEGEND_TITLE
    assert composite.GetForegroundVolumeID() == node.GetID() and composite.GetForegroundOpacity() > 0
    # Next jumps the slice views to the most uncertain region
    ras = overlay.jump_to_hotspot()
    ijk = np.linalg.inv(mrml.ijk_to_ras_matrix(loaded.volume_node)) @ np.array([*ras, 1.0])
    assert all(s.start - 0.5 <= c <= s.stop - 0.5 for c, s in zip(ijk[2::-1], HOT))
    for slice_node in slice_nodes:
        matrix = slice_node.GetSliceToRAS()
        assert np.allclose([matrix.GetElement(r, 3) for r in range(3)], ras)
    # the toggle
    overlay.set_visible(False)
    assert composite.GetForegroundOpacity() == 0.0 and not overlay.legend_node.GetVisibility()
    # the next case replaces the overlay instead of piling it up
    core.cases.build_case_nodes(_download(image, None, "case_2"))
    assert overlay.volume_node is None
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 0
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1


def test_a_map_on_another_grid_is_not_shown(core: Any, ctx: Any, tmp_path: Path) -> None:
    from dataclasses import replace

    image, _ = _files(tmp_path, _geometry())
    _, shifted = _files(tmp_path / "other", replace(_geometry(), origin=(0.0, 0.0, 0.0)))
    loaded = core.cases.build_case_nodes(_download(image, shifted))
    assert loaded.volume_node is not None and core.cases.uncertainty.volume_node is None  # labelling still works
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1  # no misplaced overlay left behind


def test_hotspot_is_a_region_not_a_noisy_voxel() -> None:
    from ActiveSegLib.uncertainty import hotspot_ijk

    volume = np.zeros((40, 40, 40), np.uint8)
    volume[30:38, 2:10, 20:28] = 80  # a region
    volume[5, 35, 5] = 100  # one hot voxel
    i, j, k = hotspot_ijk(volume, blocks_per_axis=5)
    assert 30 <= k < 38 and 2 <= j < 10 and 20 <= i < 28


def test_edits_are_tracked_and_cleared_by_submission(core: Any, ctx: Any, tmp_path: Path) -> None:
    image, _ = _files(tmp_path, _geometry())
    loaded = core.cases.build_case_nodes(_download(image, None))
    assert not core.has_unsaved_edits()
    labelmap = np.zeros(SHAPE, np.uint8)
    labelmap[HOT] = 1
    core.cases.fill_segmentation(loaded.segmentation_node, loaded.volume_node, labelmap)
    assert core.has_unsaved_edits()
    core.cases.mark_submitted("case_1")
    assert not core.has_unsaved_edits()
    loaded.segmentation_node.GetSegmentation().AddEmptySegment("", "extra")
    assert core.has_unsaved_edits()
    ctx.scene.Clear(0)
    core.forget_scene()  # scene closed: no references to removed nodes remain
    assert core.cases.current is None and not core.has_unsaved_edits()


# ----------------------------------------------------------------------------------------- leases (stub backend)


class _Stub(http.server.BaseHTTPRequestHandler):
    seen: list[str] = []

    def _answer(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        if self.command == "DELETE":
            body = {**fixture("case"), "lease_holder": None}
        elif self.path.startswith("/v1/queue/next"):
            body = {"case": None}
        else:
            body = fixture("info")
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def stub_url() -> Iterator[str]:
    _Stub.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_next_releases_the_lease_of_the_case_walked_away_from(stub_url: str) -> None:
    from ActiveSegLib.logic import ActiveSegCoreLogic

    core = ActiveSegCoreLogic(context=SimpleNamespace())
    core.session.connect(stub_url)
    assert core.cases.fetch_next_case("alice", release="phantom_003") is None
    assert _Stub.seen[-2:] == ["DELETE /v1/cases/phantom_003/lease?annotator=alice",
                               "POST /v1/queue/next?annotator=alice"]


def test_release_failure_is_logged_not_raised() -> None:
    from ActiveSegLib.logic import ActiveSegCoreLogic

    core = ActiveSegCoreLogic(context=SimpleNamespace())
    core.session._client = SimpleNamespace(release=lambda *a: (_ for _ in ()).throw(
        BackendRequestError(409, "invalid_state", "already labelled")))
    assert core.cases.release_lease("phantom_003", "alice") is False


# ----------------------------------------------------------------------------------------- job polling


def test_job_polling_stops_after_the_backend_dies() -> None:
    watch = JobWatch("j1", max_unreachable=3)
    gone = BackendUnavailableError("cannot reach the backend at http://127.0.0.1:1: refused")
    assert watch.failed(gone) and watch.failed(gone)
    assert watch.answered(Job(job_id="j1", kind="train", status="running"))  # an answer resets the count
    assert watch.failed(gone) and watch.failed(gone) and not watch.failed(gone)
    assert "unreachable" in watch.stopped_because


def test_job_polling_stops_on_an_unknown_job_or_a_finished_one() -> None:
    assert not JobWatch("j1").failed(BackendRequestError(404, "unknown_job", "no job j1"))
    watch = JobWatch("j1")
    assert not watch.answered(Job.from_json(fixture("job_succeeded")))
    assert watch.stopped_because == "succeeded"


def test_wait_for_job_gives_up_when_the_backend_is_gone() -> None:
    from ActiveSegLib import ClientError
    from ActiveSegLib.logic import ActiveSegCoreLogic

    core = ActiveSegCoreLogic(context=SimpleNamespace())
    core.session._client = SimpleNamespace(job=lambda *a, **k: (_ for _ in ()).throw(
        BackendUnavailableError("cannot reach the backend")))
    with pytest.raises(ClientError, match="stopped following job j1: backend unreachable"):
        core.training.wait_for_job("j1", timeout_s=30, interval_s=0.01)


# ----------------------------------------------------------------------------------------- token, editor


class _Settings(dict):
    def value(self, key: str, default: Any = None) -> Any:
        return self.get(key, default)

    def setValue(self, key: str, value: Any) -> None:  # noqa: N802
        self[key] = value

    def remove(self, key: str) -> None:
        self.pop(key, None)


def test_tokens_are_kept_per_server_outside_the_scene() -> None:
    settings = _Settings()
    store = TokenStore(settings)
    store.save("http://gpu:8000/v1", "s3cret")
    assert store.load("http://GPU:8000") == "s3cret" and store.load("http://other:8000") == ""
    assert list(settings.values()) == ["s3cret"] and server_key("http://gpu:8000/v1") == "http://gpu:8000"
    store.save("http://gpu:8000", "")
    assert store.load("http://gpu:8000") == "" and not settings


def test_tokens_go_to_the_keyring_when_there_is_one() -> None:
    vault: dict[tuple[str, str], str] = {}
    keyring = SimpleNamespace(set_password=lambda s, k, v: vault.__setitem__((s, k), v),
                              get_password=lambda s, k: vault.get((s, k)),
                              delete_password=lambda s, k: vault.pop((s, k)))
    settings = _Settings()
    store = TokenStore(settings, keyring)
    store.save("http://gpu:8000", "s3cret")
    assert vault == {("ActiveSeg", "http://gpu:8000"): "s3cret"} and not settings
    assert store.load("http://gpu:8000") == "s3cret"
    store.forget("http://gpu:8000")
    assert not vault


class _Editor:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.calls.append((name, args))


def test_leaving_the_module_deactivates_the_segment_editor() -> None:
    editor = _Editor()
    leave_editor(editor)
    assert editor.calls == [("setActiveEffect", (None,)), ("uninstallKeyboardShortcuts", ()),
                            ("removeViewObservations", ())]
    editor = _Editor()
    enter_editor(editor)
    assert [name for name, _ in editor.calls] == ["installKeyboardShortcuts", "setupViewObservations",
                                                   "updateWidgetFromMRML"]
    # ...and the widget really calls them on exit/enter.
    tree = ast.parse((MODULE_DIR / "ActiveSeg.py").read_text(encoding="utf-8"))
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ActiveSegWidget")
    methods = {n.name: ast.unparse(n) for n in widget.body if isinstance(n, ast.FunctionDef)}
    assert "leave_editor(self.ui.segmentEditorWidget)" in methods["exit"]
    assert "enter_editor(self.ui.segmentEditorWidget)" in methods["enter"]


def test_learning_curve_puts_dice_and_loss_on_separate_axes(core: Any, ctx: Any) -> None:
    """Issue 14 item 9: Dice (0-1) and a loss of ~2 shared one axis, which flattened the Dice curve."""
    from ActiveSegLib.responses import CurvePoint
    from ActiveSegLib.training import PLOT_LOSS_CHART

    points = [CurvePoint(version=v, active=v == 2, round=v, n_expert=2 * v, n_pseudo=0, val_dice=d, final_loss=loss)
              for v, d, loss in ((1, 0.31, 2.2), (2, 0.55, 1.7))]
    dice_chart = core.training.update_learning_curve_plot(points)
    charts = {ctx.scene.GetNthNodeByClass(i, "vtkMRMLPlotChartNode").GetName(): ctx.scene.GetNthNodeByClass(i, "vtkMRMLPlotChartNode")
              for i in range(ctx.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode"))}
    assert set(charts) == {dice_chart.GetName(), PLOT_LOSS_CHART}
    columns = {name: [chart.GetNthPlotSeriesNode(i).GetYColumnName() for i in range(chart.GetNumberOfPlotSeriesNodes())]
               for name, chart in charts.items()}
    assert columns == {dice_chart.GetName(): ["validation Dice"], PLOT_LOSS_CHART: ["final loss"]}
    assert not dice_chart.GetYAxisRangeAuto() and tuple(dice_chart.GetYAxisRange()) == (0.0, 1.0)
    core.training.update_learning_curve_plot(points)
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 2  # reused, not duplicated
