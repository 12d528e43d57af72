"""ActiveSeg: active-learning CT segmentation in 3D Slicer (the Extension Wizard's scripted-module shape).

Module (metadata), ParameterNode (GUI state, saved with the scene), Widget (wiring only: every backend call runs
on a worker thread through :class:`ActiveSegLib.worker.BackgroundTasks`, MRML work on the main thread), Logic (a
thin adapter over :class:`ActiveSegLib.logic.ActiveSegCoreLogic`, which does the work and is tested under pytest
with the ``slicer-core`` wheel) and Test (the whole loop against a real local backend).

Outside the Slicer application (pytest with ``slicer-core``), ``slicer.ScriptedLoadableModule``, ``qt`` and
``slicer.parameterNodeWrapper`` do not exist; stand-ins keep ``import ActiveSeg`` working there.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from ActiveSegLib.errors import ActiveSegModuleError
from ActiveSegLib.logic import ActiveSegCoreLogic, describe_job
from ActiveSegLib.worker import BackgroundTasks

try:  # inside the Slicer application
    import qt
    from slicer.parameterNodeWrapper import parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.util import VTKObservationMixin
except ImportError:  # slicer-core wheel (pytest): no app, no Qt. Plain bases so the classes still define.
    qt = None

    def parameterNodeWrapper(cls: type) -> type:  # noqa: N802 - Slicer's spelling
        return cls

    class ScriptedLoadableModule:  # type: ignore[no-redef]
        def __init__(self, parent: Any) -> None:
            self.parent = parent

    class ScriptedLoadableModuleLogic:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            pass

    class ScriptedLoadableModuleWidget:  # type: ignore[no-redef]
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent

    class ScriptedLoadableModuleTest:  # type: ignore[no-redef]
        pass

    class VTKObservationMixin:  # type: ignore[no-redef]
        def __init__(self) -> None:
            pass

__all__ = ["ActiveSeg", "ActiveSegParameterNode", "ActiveSegWidget", "ActiveSegLogic", "ActiveSegTest"]

logger = logging.getLogger(__name__)


class ActiveSeg(ScriptedLoadableModule):
    """Module metadata (shown in Slicer's module list and Help & Acknowledgement)."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "ActiveSeg"
        self.parent.categories = ["Active Learning"]
        self.parent.dependencies = ["Segmentations", "Plots"]
        self.parent.contributors = ["ActiveSeg developers (https://github.com/activeseg/SlicerActiveSeg)"]
        self.parent.helpText = """
Active learning for CT segmentation. A backend (its own Python with PyTorch/MONAI, local or on a GPU server)
trains a 3D network and ranks the cases it is least sure about.
<ol>
<li><b>Backend</b>: enter a server URL (and token) and Connect, or pick a Python interpreter with
<code>activeseg</code> installed and a datastore folder (<code>activeseg init</code>) and Start local backend.</li>
<li><b>Queue</b>: Next leases and loads the most uncertain case (lowest M-DSC).</li>
<li><b>Segment</b>: correct or draw the segments; tick "No finding" for a case with nothing to label; Submit.</li>
<li><b>Train</b>: Retrain starts a new model version and re-ranks the cases; the learning curve is plotted.</li>
<li><b>Review</b>: load a pseudo-label, then Accept, Reject, or edit it and Submit.</li>
</ol>
See <a href="https://github.com/activeseg/SlicerActiveSeg">the project page</a>.
"""
        self.parent.acknowledgementText = """
ActiveSeg combines DSAL (Zhao et al., IEEE JBHI 2021) uncertainty ranking with ALNT gradient re-weighting, built on
3D Slicer, MONAI and PyTorch. The module's shape follows the Slicer Extension Wizard's scripted-module template.
"""


@parameterNodeWrapper
class ActiveSegParameterNode:
    """The module's GUI state, stored in the scene.

    serverUrl: backend base URL, e.g. ``http://127.0.0.1:8000``.
    token: bearer token for a remote backend (empty for a local one).
    pythonExecutable: the backend environment's Python, for "Start local backend".
    dataDirectory: the datastore folder the local backend serves.
    annotator: the user's name; a case is leased to one annotator at a time.
    currentVolume: the loaded case's image (RAS).
    currentSegmentation: the segmentation being edited (reference geometry = currentVolume).
    """

    serverUrl: str = ""
    token: str = ""
    pythonExecutable: str = ""
    dataDirectory: str = ""
    annotator: str = ""
    currentVolume: vtkMRMLScalarVolumeNode
    currentSegmentation: vtkMRMLSegmentationNode


class ActiveSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the UI to the Logic; shows results and the backend's error messages. Does no work itself."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: ActiveSegLogic | None = None
        self._parameterNode: Any = None
        self._parameterNodeGuiTag: Any = None
        self._jobId = ""
        self._jobPollInFlight = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ActiveSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ActiveSegLogic()
        self.tasks = BackgroundTasks(max_workers=3)
        self.pollTimer = qt.QTimer()  # delivers worker results on the main thread
        self.pollTimer.timeout.connect(self.tasks.poll)
        self.pollTimer.start(100)
        self.jobTimer = qt.QTimer()
        self.jobTimer.setInterval(1000)
        self.jobTimer.timeout.connect(self.onPollJob)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for table in (self.ui.queueTable, self.ui.reviewTable):
            table.horizontalHeader().setSectionResizeMode(qt.QHeaderView.Stretch)
        self.ui.connectButton.clicked.connect(self.onConnect)
        self.ui.startBackendButton.clicked.connect(self.onStartBackend)
        self.ui.stopBackendButton.clicked.connect(self.onStopBackend)
        self.ui.refreshQueueButton.clicked.connect(self.onRefreshQueue)
        self.ui.nextCaseButton.clicked.connect(self.onNextCase)
        self.ui.submitButton.clicked.connect(self.onSubmit)
        self.ui.retrainButton.clicked.connect(self.onRetrain)
        self.ui.cancelTrainingButton.clicked.connect(self.onCancelJob)
        self.ui.refreshReviewButton.clicked.connect(self.onRefreshReview)
        self.ui.loadPseudoButton.clicked.connect(self.onLoadPseudo)
        self.ui.acceptPseudoButton.clicked.connect(lambda: self.onReviewDecision(accept=True))
        self.ui.rejectPseudoButton.clicked.connect(lambda: self.onReviewDecision(accept=False))
        self.ui.cancelTrainingButton.enabled = False
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer closes the module (or quits): stop timers, threads and the local backend we started."""
        self.removeObservers()
        for timer in (getattr(self, "pollTimer", None), getattr(self, "jobTimer", None)):
            if timer is not None:
                timer.stop()
        if hasattr(self, "tasks"):
            self.tasks.shutdown()
        if self.logic is not None:
            self.logic.stop_local_backend()

    # ------------------------------------------------------------------ parameter node

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        editor = self.ui.segmentEditorWidget
        if editor.mrmlSegmentEditorNode() is None or not slicer.mrmlScene.IsNodePresent(editor.mrmlSegmentEditorNode()):
            # (again after a scene close, which removed the previous one)
            editor.setMRMLSegmentEditorNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
        if not self._parameterNode.annotator:
            self._parameterNode.annotator = os.environ.get("USER") or os.environ.get("USERNAME") or "annotator"

    def setParameterNode(self, parameterNode: ActiveSegParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # serverUrl, token, annotator bind through SlicerParameterName; the path edits are synced by hand
            # because their connector expects pathlib types while the node stores plain strings.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.ui.pythonPathLineEdit.currentPath = self._parameterNode.pythonExecutable
            self.ui.dataDirectoryLineEdit.currentPath = self._parameterNode.dataDirectory

    # ------------------------------------------------------------------ helpers

    def _run(self, fn: Any, *args: Any, onDone: Any = None, busy: str = "") -> None:
        """Run a Logic call on a worker thread; ``onDone`` gets its result on the main thread."""
        if busy:
            self.ui.backendStatusLabel.text = busy
        self.tasks.submit(fn, *args, on_done=onDone, on_error=self._showError, name=getattr(fn, "__name__", None))

    def _showError(self, exc: BaseException) -> None:
        """The backend's (or Logic's) message to the user; the traceback only to the log."""
        if isinstance(exc, (ActiveSegModuleError, ValueError)):
            logger.warning("ActiveSeg: %s", exc)
            message = str(exc)
        else:
            logger.error("ActiveSeg: unexpected error", exc_info=exc)
            message = f"Unexpected error ({type(exc).__name__}): {exc}"
        self.ui.backendStatusLabel.text = message.splitlines()[0] if message else ""
        slicer.util.errorDisplay(message, windowTitle="ActiveSeg")

    @staticmethod
    def _fillTable(table: Any, rows: list[Any]) -> None:
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row.cells()):
                table.setItem(r, c, qt.QTableWidgetItem(text))

    @staticmethod
    def _selectedCase(table: Any) -> str:
        row = table.currentRow()
        item = table.item(row, 0) if row >= 0 else None
        return item.text() if item is not None else ""

    def _show(self, volume: Any, segmentation: Any) -> None:
        self._parameterNode.currentVolume = volume
        self._parameterNode.currentSegmentation = segmentation
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        self.ui.segmentEditorWidget.setSegmentationNode(segmentation)
        self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
        self.ui.currentCaseLabel.text = f"Case {volume.GetAttribute('ActiveSeg.CaseId')}"

    # ------------------------------------------------------------------ backend

    def onConnect(self) -> None:
        p = self._parameterNode
        self._run(self.logic.connect, p.serverUrl.strip(), p.token.strip() or None, onDone=self._onConnected,
                  busy="Connecting...")

    def onStartBackend(self) -> None:
        p = self._parameterNode
        p.pythonExecutable = self.ui.pythonPathLineEdit.currentPath
        p.dataDirectory = self.ui.dataDirectoryLineEdit.currentPath
        self._run(self.logic.start_local_backend, p.pythonExecutable, p.dataDirectory, p.token.strip() or None,
                  onDone=self._onConnected, busy="Starting local backend (loading PyTorch takes a while)...")

    def onStopBackend(self) -> None:
        self._run(self.logic.stop_local_backend, onDone=lambda _: setattr(
            self.ui.backendStatusLabel, "text", "Local backend stopped"))

    def _onConnected(self, info: dict[str, Any]) -> None:
        self._parameterNode.serverUrl = self.logic.client.base_url
        counts = info.get("counts", {})
        model = info.get("active_model")
        self.ui.backendStatusLabel.text = (
            f"Connected: activeseg {info.get('version')} on {info.get('device')}; "
            f"model {'v%s' % model if model else 'none yet'}; "
            f"{counts.get('labeled', 0) + counts.get('accepted', 0)} of {counts.get('total', 0)} cases labelled")
        if info.get("running_job"):
            self._watchJob(info["running_job"])
        self.onRefreshQueue()
        self.onRefreshReview()

    # ------------------------------------------------------------------ queue and segmenting

    def onRefreshQueue(self) -> None:
        self._run(self.logic.refresh_queue, onDone=lambda rows: self._fillTable(self.ui.queueTable, rows))

    def onNextCase(self) -> None:
        self._run(self.logic.fetch_next_case, self._parameterNode.annotator, onDone=self._onCaseFetched,
                  busy="Loading the next case...")

    def _onCaseFetched(self, download: Any) -> None:
        if download is None:
            slicer.util.infoDisplay("No free case in the queue: retrain or wait for others.", windowTitle="ActiveSeg")
            return
        try:
            loaded = self.logic.build_case_nodes(download)
        except ActiveSegModuleError as exc:
            self._showError(exc)
            return
        self._show(loaded.volume_node, loaded.segmentation_node)
        start = {"pseudo": "the pseudo-label", "prediction": "the model's prediction"}.get(
            loaded.start_kind, "empty segments")
        self.ui.backendStatusLabel.text = f"Loaded {loaded.case_id} (starting from {start})"
        self.ui.noFindingCheckBox.checked = False

    def onSubmit(self) -> None:
        p = self._parameterNode
        volume, segmentation = p.currentVolume, p.currentSegmentation
        if volume is None or segmentation is None:
            slicer.util.errorDisplay("Load a case (Next) or a pseudo-label (Review) first.", windowTitle="ActiveSeg")
            return
        try:
            data = self.logic.encode_submission(segmentation, volume)  # MRML export: main thread
        except ActiveSegModuleError as exc:
            self._showError(exc)
            return
        caseId = volume.GetAttribute("ActiveSeg.CaseId")
        self._run(self.logic.upload_submission, caseId, data, p.annotator, self.ui.noFindingCheckBox.checked,
                  onDone=self._onSubmitted, busy=f"Submitting {caseId}...")

    def _onSubmitted(self, case: dict[str, Any]) -> None:
        self.ui.backendStatusLabel.text = f"Submitted {case['case_id']}: {case['state']}"
        self.onRefreshQueue()
        self.onRefreshReview()

    # ------------------------------------------------------------------ training

    def onRetrain(self) -> None:
        self.ui.trainErrorLabel.text = ""
        self._run(self.logic.retrain, onDone=self._watchJob, busy="Starting training...")

    def _watchJob(self, jobId: str) -> None:
        self._jobId = jobId
        self.ui.retrainButton.enabled = False
        self.ui.cancelTrainingButton.enabled = True
        self.ui.trainProgressBar.setRange(0, 100)
        self.ui.trainProgressBar.value = 0
        self.jobTimer.start()

    def onPollJob(self) -> None:
        if self._jobId and not self._jobPollInFlight:  # one status request at a time, however slow the network
            self._jobPollInFlight = True
            self.tasks.submit(self.logic.poll_job, self._jobId, on_done=self._onJobStatus, on_error=self._onPollError)

    def _onPollError(self, exc: BaseException) -> None:
        self._jobPollInFlight = False
        self.ui.trainStatusLabel.text = f"Cannot read the job's status: {exc}"

    def _onJobStatus(self, job: dict[str, Any]) -> None:
        self._jobPollInFlight = False
        fraction, summary = describe_job(job)
        if fraction is None and not job["done"]:
            self.ui.trainProgressBar.setRange(0, 0)  # busy indicator: phase without step counts
        else:
            self.ui.trainProgressBar.setRange(0, 100)
            self.ui.trainProgressBar.value = int(round(100 * (fraction or 0.0)))
        self.ui.trainStatusLabel.text = summary
        if not job["done"]:
            return
        self.jobTimer.stop()
        self._jobId = ""
        self.ui.retrainButton.enabled = True
        self.ui.cancelTrainingButton.enabled = False
        if job["status"] != "succeeded":
            self.ui.trainErrorLabel.text = job.get("error") or f"job {job['status']}"
        self._run(self.logic.learning_curve, onDone=self._showLearningCurve)
        self.onRefreshQueue()
        self.onRefreshReview()

    def _showLearningCurve(self, rows: list[Any]) -> None:
        chart = self.logic.update_learning_curve_plot(rows)
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onCancelJob(self) -> None:
        if self._jobId:
            self._run(self.logic.cancel_job, self._jobId, busy="Cancelling the job...")

    # ------------------------------------------------------------------ review

    def onRefreshReview(self) -> None:
        self._run(self.logic.pseudo_cases, onDone=lambda rows: self._fillTable(self.ui.reviewTable, rows))

    def onLoadPseudo(self) -> None:
        caseId = self._selectedCase(self.ui.reviewTable)
        if caseId:
            self._run(self.logic.fetch_pseudo, caseId, onDone=self._onPseudoFetched, busy=f"Loading {caseId}...")

    def _onPseudoFetched(self, download: Any) -> None:
        try:
            loaded = self.logic.build_pseudo_nodes(download)
        except ActiveSegModuleError as exc:
            self._showError(exc)
            return
        self._show(loaded.volume_node, loaded.segmentation_node)  # editable: Submit stores it as an expert label

    def onReviewDecision(self, accept: bool) -> None:
        caseId = self._selectedCase(self.ui.reviewTable)
        if caseId:
            action = self.logic.accept_pseudo if accept else self.logic.reject_pseudo
            self._run(action, caseId, onDone=self._onSubmitted)


class ActiveSegLogic(ScriptedLoadableModuleLogic, ActiveSegCoreLogic):
    """The module's Logic: :class:`ActiveSegCoreLogic` (all the work) plus Slicer's parameter node.

    Args:
        context: MRML scene and logics; default: Slicer's own (``MrmlContext.from_slicer()``, on first use).
    """

    def __init__(self, context: Any = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # The backend's Python must not inherit Slicer's PYTHONHOME/PYTHONPATH.
        startup = getattr(slicer.util, "startupEnvironment", None)
        env = startup() if qt is not None and startup is not None else None
        ActiveSegCoreLogic.__init__(self, context, env=env)

    def getParameterNode(self) -> ActiveSegParameterNode:
        return ActiveSegParameterNode(super().getParameterNode())


class ActiveSegTest(ScriptedLoadableModuleTest):
    """The whole loop inside Slicer against a real local backend on generated phantoms.

    Needs the backend's interpreter: ``$ACTIVESEG_PYTHON`` (a Python with ``activeseg`` installed); Slicer's own
    Python cannot run the backend (no torch). Without it the test is reported as skipped, not passed.
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ActiveLearningLoop()

    def test_ActiveLearningLoop(self) -> None:
        import subprocess
        import tempfile
        import unittest
        from pathlib import Path

        from ActiveSegLib import mrml

        python = os.environ.get("ACTIVESEG_PYTHON", "")
        if not python:
            raise unittest.SkipTest("set ACTIVESEG_PYTHON to a Python with 'activeseg' installed")
        tiny = ["network.channels=4,8,8,16", "training.patch_size=16,32,32", "training.epochs_first=1",
                "training.epochs_per_round=1", "training.steps_per_epoch=12", "training.learning_rate=0.01",
                "training.device=cpu", "dsal.strong_per_round=2", "dsal.weak_start_round=1", "dsal.weak_initial=2"]
        with tempfile.TemporaryDirectory(prefix="ActiveSegTest-") as folder:
            root = Path(folder)
            env = slicer.util.startupEnvironment()  # not Slicer's PYTHONHOME
            subprocess.run([python, "-m", "activeseg", "phantoms", str(root / "src"), "--count", "8",
                            "--shape", "16,32,32"], check=True, env=env)
            sets = [a for s in tiny for a in ("--set", s)]
            subprocess.run([python, "-m", "activeseg", "init", str(root / "store"), "--from",
                            str(root / "src" / "dataset.json"), *sets], check=True, env=env)
            logic = ActiveSegLogic()
            try:
                self.assertEqual(logic.start_local_backend(python, str(root / "store"))["counts"]["total"], 8)

                def labelNext() -> str:
                    volume, segmentation = logic.load_next_case("tester")
                    caseId = logic.current.case_id
                    truth = mrml.volume_node_from_file(logic.context, root / "src" / "labelsTr" / f"{caseId}.nii.gz",
                                                       labelmap=True)
                    logic.fill_segmentation(segmentation, volume, slicer.util.arrayFromVolume(truth).copy())
                    mrml.remove_node(slicer.mrmlScene, truth)
                    self.assertEqual(logic.submit(segmentation, volume)["state"], "labeled")
                    self.assertEqual(logic.case_state(caseId), "labeled")
                    return caseId

                labelNext(), labelNext()
                self.assertEqual(logic.wait_for_job(logic.retrain(), timeout_s=600)["status"], "succeeded")
                top = logic.refresh_queue()[0].case_id
                self.assertEqual(labelNext(), top)
                self.assertEqual(logic.wait_for_job(logic.retrain(), timeout_s=600)["status"], "succeeded")
                chart = logic.update_learning_curve_plot(logic.learning_curve())
                self.assertEqual(chart.GetNthPlotSeriesNode(0).GetTableNode().GetNumberOfRows(), 2)
                pending = logic.pseudo_cases()
                if not pending:  # this round routed nothing weak: roll back to v1 and rewrite its pseudo-labels
                    logic.client.activate_model(1)
                    logic.wait_for_job(logic.client.start_pseudo_label()["job_id"], timeout_s=600)
                    pending = logic.pseudo_cases()
                self.assertTrue(pending, "no pseudo-label to review")
                overlay = logic.load_pseudo_label(pending[0].case_id)
                self.assertGreater(overlay.GetSegmentation().GetNumberOfSegments(), 0)
                self.assertEqual(logic.accept_pseudo(pending[0].case_id)["state"], "accepted")
                self.assertEqual(logic.case_state(pending[0].case_id), "accepted")
            finally:
                logic.stop_local_backend()
        self.delayDisplay("ActiveSeg loop test passed")
