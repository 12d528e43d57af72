"""ActiveSeg: active-learning CT segmentation in 3D Slicer (the Extension Wizard's scripted-module shape).

Module (metadata), ParameterNode (GUI state, saved with the scene: never the token), Widget (wiring only: every
backend call runs on a worker thread through :class:`ActiveSegLib.worker.BackgroundTasks`, case files in helper
processes it polls (:mod:`ActiveSegLib.transfer`), MRML work on the main thread), Logic (Slicer's parameter node over :class:`ActiveSegLib.logic.ActiveSegCoreLogic`, whose sections do the
work and are tested under pytest with the ``slicer-core`` wheel) and Test (the whole loop against a real local
backend).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from ActiveSegLib.credentials import TokenStore
from ActiveSegLib.editor import enter_editor, leave_editor
from ActiveSegLib.errors import ActiveSegModuleError
from ActiveSegLib.logic import ActiveSegCoreLogic
from ActiveSegLib.training import JobWatch
from ActiveSegLib.worker import BackgroundTasks

__all__ = ["ActiveSeg", "ActiveSegParameterNode", "ActiveSegWidget", "ActiveSegLogic", "ActiveSegTest"]

logger = logging.getLogger(__name__)

#: What the in-file test prints when it cannot run; CMakeLists.txt makes ctest report "Skipped" on this text.
SKIP_MESSAGE = "ActiveSeg loop test SKIPPED"


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
<li><b>Train</b>: Retrain starts a new model version and re-ranks the cases; the learning curve is plotted. Roll back
makes a chosen version (listed with its validation Dice) active and re-ranks with it; Rank re-ranks with the active one.</li>
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
    """The module's GUI state, stored in the scene (so never the bearer token: see ``ActiveSegLib.credentials``).

    serverUrl: backend base URL, e.g. ``http://127.0.0.1:8000``.
    pythonExecutable: the backend environment's Python, for "Start local backend".
    dataDirectory: the datastore folder the local backend serves.
    annotator: the user's name; a case is leased to one annotator at a time.
    currentVolume: the loaded case's image (RAS).
    currentSegmentation: the segmentation being edited (reference geometry = currentVolume).
    """

    serverUrl: str = ""
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
        self._jobWatch: JobWatch | None = None
        self._jobPollInFlight = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ActiveSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ActiveSegLogic()
        self.tokens = TokenStore.default(slicer.app.userSettings())
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
        self.ui.serverUrlLineEdit.editingFinished.connect(self.onServerUrlChanged)
        self.ui.refreshQueueButton.clicked.connect(self.onRefreshQueue)
        self.ui.nextCaseButton.clicked.connect(self.onNextCase)
        self.ui.skipCaseButton.clicked.connect(self.onSkipCase)
        self.ui.queueTable.cellDoubleClicked.connect(self.onQueueDoubleClicked)
        self.ui.uncertaintyCheckBox.toggled.connect(self.onToggleUncertainty)
        self.ui.jumpToUncertainButton.clicked.connect(self.onJumpToUncertain)
        self.ui.submitButton.clicked.connect(self.onSubmit)
        self.ui.retrainButton.clicked.connect(self.onRetrain)
        self.ui.cancelTrainingButton.clicked.connect(self.onCancelJob)
        self.ui.rollbackButton.clicked.connect(self.onRollback)
        self.ui.rankButton.clicked.connect(self.onRank)
        self.ui.refreshReviewButton.clicked.connect(self.onRefreshReview)
        self.ui.loadPseudoButton.clicked.connect(self.onLoadPseudo)
        self.ui.acceptPseudoButton.clicked.connect(lambda: self.onReviewDecision(accept=True))
        self.ui.rejectPseudoButton.clicked.connect(lambda: self.onReviewDecision(accept=False))
        self.ui.reopenCaseButton.clicked.connect(self.onReopenCase)
        self.ui.cancelTrainingButton.enabled = False
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Slicer closes the module (or quits): stop timers, drop pending work, stop the local backend we started."""
        self.removeObservers()
        for timer in (getattr(self, "pollTimer", None), getattr(self, "jobTimer", None)):
            if timer is not None:
                timer.stop()
        if hasattr(self, "tasks"):
            self.tasks.shutdown()  # daemon threads: quitting Slicer never waits for a slow request
        if self.logic is not None:
            self.logic.shutdown()

    # ------------------------------------------------------------------ parameter node, enter / exit

    def enter(self) -> None:
        self.initializeParameterNode()
        enter_editor(self.ui.segmentEditorWidget)

    def exit(self) -> None:
        leave_editor(self.ui.segmentEditorWidget)  # no painting into the case from other modules
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        self.setParameterNode(None)
        self.logic.forget_scene()  # its nodes are being removed
        self.ui.currentCaseLabel.text = "No case loaded"

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
        self.onServerUrlChanged()

    def setParameterNode(self, parameterNode: ActiveSegParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        if self._parameterNode:
            # serverUrl and annotator bind through SlicerParameterName; the path edits are synced by hand
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

    def _confirmDiscard(self, what: str) -> bool:
        """Ask before unsubmitted edits are discarded; ``True`` to go on."""
        return slicer.util.confirmYesNoDisplay(
            f"{what} has edits that were not submitted. Discard them?\n\n(Choose No, then Submit to keep them.)",
            windowTitle="ActiveSeg")

    @staticmethod
    def _fillTable(table: Any, rows: list[Any]) -> None:
        # Column 0 shows the row's name (a display name may be shared by two series); the case id rides along.
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row.cells()):
                item = qt.QTableWidgetItem(text)
                if c == 0:
                    item.setData(qt.Qt.UserRole, row.case_id)
                    item.setToolTip(row.case_id)
                table.setItem(r, c, item)

    @staticmethod
    def _caseOfRow(table: Any, row: int) -> str:
        item = table.item(row, 0) if row >= 0 else None
        return str(item.data(qt.Qt.UserRole) or "") if item is not None else ""

    @classmethod
    def _selectedCase(cls, table: Any) -> str:
        return cls._caseOfRow(table, table.currentRow())

    def _show(self, volume: Any, segmentation: Any) -> None:
        self._parameterNode.currentVolume = volume
        self._parameterNode.currentSegmentation = segmentation
        slicer.util.setSliceViewerLayers(background=volume, fit=True)
        self.ui.segmentEditorWidget.setSegmentationNode(segmentation)
        self.ui.segmentEditorWidget.setSourceVolumeNode(volume)
        self.ui.currentCaseLabel.text = f"Case {volume.GetAttribute('ActiveSeg.CaseId')}"

    def _token(self) -> str | None:
        return self.ui.tokenLineEdit.text.strip() or None

    # ------------------------------------------------------------------ backend

    def onServerUrlChanged(self) -> None:
        """Fill the token field with the token saved for this server (Slicer settings or OS keyring)."""
        url = self._parameterNode.serverUrl.strip() if self._parameterNode else ""
        if url and not self.ui.tokenLineEdit.text:
            self.ui.tokenLineEdit.text = self.tokens.load(url)

    def onConnect(self) -> None:
        url = self._parameterNode.serverUrl.strip()
        self._run(self.logic.session.connect, url, self._token(), onDone=self._onConnected, busy="Connecting...")

    def onStartBackend(self) -> None:
        p = self._parameterNode
        p.pythonExecutable = self.ui.pythonPathLineEdit.currentPath
        p.dataDirectory = self.ui.dataDirectoryLineEdit.currentPath
        # Idempotent: a second click joins the backend already starting.
        self._run(self.logic.session.start_local_backend, p.pythonExecutable, p.dataDirectory, self._token(),
                  onDone=self._onConnected, busy="Starting local backend (loading PyTorch takes a while)...")

    def onStopBackend(self) -> None:
        # Also ends a backend that is still starting (the Logic tracks it from the moment it is spawned).
        self._run(self.logic.session.stop_local_backend, onDone=lambda _: setattr(
            self.ui.backendStatusLabel, "text", "Local backend stopped"))

    def _onConnected(self, info: Any) -> None:
        url = self.logic.session.client.base_url
        self._parameterNode.serverUrl = url
        token = self._token()
        if token:
            self.tokens.save(url, token)
        counts = info.counts
        self.ui.backendStatusLabel.text = (
            f"Connected: activeseg {info.version} on {info.device}; "
            f"model {'v%s' % info.active_model if info.active_model else 'none yet'}; "
            f"{counts.get('labeled', 0) + counts.get('accepted', 0)} of {counts.get('total', 0)} cases labelled")
        if info.running_job:
            self._watchJob(info.running_job)
        self.onRefreshModels()
        self.onRefreshQueue()
        self.onRefreshReview()

    # ------------------------------------------------------------------ queue and segmenting

    def onRefreshQueue(self) -> None:
        self._run(self.logic.cases.refresh_queue, onDone=lambda rows: self._fillTable(self.ui.queueTable, rows))

    def onNextCase(self) -> None:
        cases = self.logic.cases
        if cases.has_unsaved_edits() and not self._confirmDiscard(f"Case {cases.current.case_id}"):
            return
        # The case walked away from gives its lease back (on the worker thread, before the next lease).
        previous = cases.current.case_id if cases.current is not None and cases.current.annotator else None
        self._run(cases.fetch_next_case, self._parameterNode.annotator, previous, onDone=self._onCaseFetched,
                  busy="Loading the next case...")

    def onSkipCase(self) -> None:
        cases = self.logic.cases
        if cases.current is None or not cases.current.annotator:
            slicer.util.infoDisplay("No leased case is shown: press Next first.", windowTitle="ActiveSeg")
            return
        if cases.has_unsaved_edits() and not self._confirmDiscard(f"Case {cases.current.case_id}"):
            return
        self._run(cases.fetch_after_skip, cases.current.case_id, self._parameterNode.annotator,
                  onDone=self._onCaseFetched, busy=f"Skipping {cases.current.case_id}...")

    def onQueueDoubleClicked(self, row: int, column: int) -> None:
        caseId = self._caseOfRow(self.ui.queueTable, row)
        if not caseId:
            return
        cases = self.logic.cases
        if cases.has_unsaved_edits() and not self._confirmDiscard(f"Case {cases.current.case_id}"):
            return
        previous = cases.current.case_id if cases.current is not None and cases.current.annotator else None
        self._run(cases.fetch_chosen_case, caseId, self._parameterNode.annotator, previous,
                  onDone=self._onCaseFetched, busy=f"Loading {caseId}...")

    def _onCaseFetched(self, download: Any) -> None:
        if download is None:
            slicer.util.infoDisplay("No free case in the queue: retrain or wait for others.", windowTitle="ActiveSeg")
            return
        cases = self.logic.cases
        if cases.has_unsaved_edits() and not self._confirmDiscard(f"Case {cases.current.case_id}"):
            # edited while the download ran: keep the edits, give the new lease back
            self._run(cases.release_lease, download.case_id, download.annotator)
            return
        try:
            loaded = cases.build_case_nodes(download)
        except ActiveSegModuleError as exc:
            self._showError(exc)
            return
        self._show(loaded.volume_node, loaded.segmentation_node)
        cases.uncertainty.set_visible(self.ui.uncertaintyCheckBox.checked)
        if cases.uncertainty.jump_to_hotspot() is not None:  # Next shows where the model is least sure
            start = "views centred on the most uncertain region"
        else:
            start = "no uncertainty map yet"
        kinds = {"pseudo": "the pseudo-label", "prediction": "the model's prediction",
                 "label": "its stored label, re-opened to edit"}
        kind = kinds.get(loaded.start_kind, "empty segments")
        self.ui.backendStatusLabel.text = f"Loaded {loaded.case_id} (starting from {kind}; {start})"
        self.ui.noFindingCheckBox.checked = False

    def onToggleUncertainty(self, checked: bool) -> None:
        self.logic.cases.uncertainty.set_visible(checked)

    def onJumpToUncertain(self) -> None:
        if self.logic.cases.uncertainty.jump_to_hotspot() is None:
            self.ui.backendStatusLabel.text = "This case has no uncertainty map (it is written when cases are ranked)"

    def onSubmit(self) -> None:
        p = self._parameterNode
        volume, segmentation = p.currentVolume, p.currentSegmentation
        if volume is None or segmentation is None:
            slicer.util.errorDisplay("Load a case (Next) or a pseudo-label (Review) first.", windowTitle="ActiveSeg")
            return
        try:
            data = self.logic.cases.encode_submission(segmentation, volume)  # MRML export: main thread
        except ActiveSegModuleError as exc:
            self._showError(exc)
            return
        caseId = volume.GetAttribute("ActiveSeg.CaseId")
        self._run(self.logic.cases.upload_submission, caseId, data, p.annotator, self.ui.noFindingCheckBox.checked,
                  onDone=self._onSubmitted, busy=f"Submitting {caseId}...")

    def _onSubmitted(self, case: Any) -> None:
        self.logic.cases.mark_submitted(case.case_id)
        review = self.logic.review.review
        if review is not None and review.case_id == case.case_id and review.watch is not None:
            review.watch.edited = False
        self.ui.backendStatusLabel.text = f"Submitted {case.case_id}: {case.state}"
        self.onRefreshQueue()
        self.onRefreshReview()

    # ------------------------------------------------------------------ training

    def onRetrain(self) -> None:
        self.ui.trainErrorLabel.text = ""
        self._run(self.logic.training.retrain, onDone=self._watchJob, busy="Starting training...")

    def onRank(self) -> None:
        self.ui.trainErrorLabel.text = ""
        self._run(self.logic.training.rank, onDone=self._watchJob, busy="Starting ranking...")

    def onRollback(self) -> None:
        version = self.ui.modelComboBox.currentData
        if version is None:
            return
        self.ui.trainErrorLabel.text = ""
        self._run(self.logic.training.rollback, int(version), onDone=self._onRolledBack, busy="Rolling back...")

    def _onRolledBack(self, activation: Any) -> None:
        self.ui.trainStatusLabel.text = activation.message
        if activation.rank_job is not None:
            self._watchJob(activation.rank_job.job_id)
        self.onRefreshModels()
        self.onRefreshQueue()

    def onRefreshModels(self) -> None:
        self._run(self.logic.training.models, onDone=self._showModels)

    def _showModels(self, models: Any) -> None:
        combo = self.ui.modelComboBox
        combo.clear()
        for version, text in self.logic.training.model_choices(models):
            combo.addItem(text, version)
        note = self.logic.training.queue_note(models)
        if note and self._jobWatch is None:
            self.ui.trainStatusLabel.text = note

    def _watchJob(self, jobId: str) -> None:
        self._jobWatch = JobWatch(jobId)
        self.ui.retrainButton.enabled = False
        self.ui.rankButton.enabled = False
        self.ui.rollbackButton.enabled = False
        self.ui.cancelTrainingButton.enabled = True
        self.ui.trainProgressBar.setRange(0, 100)
        self.ui.trainProgressBar.value = 0
        self.jobTimer.start()

    def _stopWatching(self, message: str = "") -> None:
        self.jobTimer.stop()
        self._jobWatch = None
        self.ui.retrainButton.enabled = True
        self.ui.rankButton.enabled = True
        self.ui.rollbackButton.enabled = True
        self.ui.cancelTrainingButton.enabled = False
        if message:
            self.ui.trainErrorLabel.text = message

    def onPollJob(self) -> None:
        watch = self._jobWatch
        if watch is not None and not self._jobPollInFlight:  # one status request at a time
            self._jobPollInFlight = True
            self.tasks.submit(self.logic.training.poll_job, watch.job_id, on_done=self._onJobStatus,
                              on_error=self._onPollError)

    def _onPollError(self, exc: BaseException) -> None:
        self._jobPollInFlight = False
        watch = self._jobWatch
        self.ui.trainStatusLabel.text = f"Cannot read the job's status: {exc}"
        if watch is not None and not watch.failed(exc):  # the backend died or forgot the job: stop polling
            self._stopWatching(f"Stopped following the job: {watch.stopped_because}")

    def _onJobStatus(self, job: Any) -> None:
        self._jobPollInFlight = False
        watch = self._jobWatch
        if watch is None:
            return
        fraction, summary = job.describe()
        if fraction is None and not job.done:
            self.ui.trainProgressBar.setRange(0, 0)  # busy indicator: phase without step counts
        else:
            self.ui.trainProgressBar.setRange(0, 100)
            self.ui.trainProgressBar.value = int(round(100 * (fraction or 0.0)))
        self.ui.trainStatusLabel.text = summary
        if watch.answered(job):
            return
        self._stopWatching("" if job.status == "succeeded" else (job.error or f"job {job.status}"))
        self._run(self.logic.training.learning_curve, onDone=self._showLearningCurve)
        self.onRefreshModels()
        self.onRefreshQueue()
        self.onRefreshReview()

    def _showLearningCurve(self, points: list[Any]) -> None:
        chart = self.logic.training.update_learning_curve_plot(points)
        slicer.modules.plots.logic().ShowChartInLayout(chart)

    def onCancelJob(self) -> None:
        if self._jobWatch is not None:
            self._run(self.logic.training.cancel_job, self._jobWatch.job_id, busy="Cancelling the job...")

    # ------------------------------------------------------------------ review

    def onRefreshReview(self) -> None:
        self._run(self.logic.review.rows, onDone=lambda rows: self._fillTable(self.ui.reviewTable, rows))

    def onLoadPseudo(self) -> None:
        caseId = self._selectedCase(self.ui.reviewTable)
        review = self.logic.review
        if not caseId or (review.has_unsaved_edits() and not self._confirmDiscard(
                f"The pseudo-label of {review.review.case_id}")):
            return
        current = self.logic.cases.current
        self._run(review.fetch_pseudo, caseId, current.case_id if current is not None else None,
                  onDone=self._onPseudoFetched, busy=f"Loading {caseId}...")

    def _onPseudoFetched(self, download: Any) -> None:
        try:
            loaded = self.logic.review.build_pseudo_nodes(download)
        except (ActiveSegModuleError, ValueError) as exc:
            self._showError(exc)
            return
        self._show(loaded.volume_node, loaded.segmentation_node)  # editable: Submit stores it as an expert label
        try:
            self.ui.reviewSummaryLabel.text = self.logic.review.summary(download.case)
        except (ActiveSegModuleError, ValueError) as exc:
            self.ui.reviewSummaryLabel.text = f"volumes not available: {exc}"

    def onReopenCase(self) -> None:
        caseId = self._selectedCase(self.ui.reviewTable)
        cases = self.logic.cases
        if not caseId or (cases.has_unsaved_edits() and not self._confirmDiscard(f"Case {cases.current.case_id}")):
            return
        previous = cases.current.case_id if cases.current is not None and cases.current.annotator else None
        self._run(cases.fetch_reopened_case, caseId, self._parameterNode.annotator, previous,
                  onDone=self._onCaseFetched, busy=f"Re-opening {caseId}...")

    def onReviewDecision(self, accept: bool) -> None:
        caseId = self._selectedCase(self.ui.reviewTable)
        if caseId:
            action = self.logic.review.accept if accept else self.logic.review.reject
            self._run(action, caseId, onDone=self._onSubmitted)


class ActiveSegLogic(ScriptedLoadableModuleLogic, ActiveSegCoreLogic):
    """The module's Logic: :class:`ActiveSegCoreLogic` (its sections do the work) plus Slicer's parameter node.

    Args:
        context: MRML scene and logics; default: Slicer's own (``MrmlContext.from_slicer()``, on first use).
    """

    def __init__(self, context: Any = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # The backend's Python must not inherit Slicer's PYTHONHOME/PYTHONPATH. Case files move in helper
        # processes: Slicer's main thread holds the GIL while idle, so worker threads would crawl.
        ActiveSegCoreLogic.__init__(self, context, env=slicer.util.startupEnvironment(), bulk_transfers="process")

    def getParameterNode(self) -> ActiveSegParameterNode:
        return ActiveSegParameterNode(super().getParameterNode())


class ActiveSegTest(ScriptedLoadableModuleTest):
    """The whole loop inside Slicer against a real local backend on generated phantoms.

    Needs the backend's interpreter: ``$ACTIVESEG_PYTHON`` (a Python with ``activeseg`` installed); Slicer's own
    Python cannot run the backend (no torch). Without it the test reports :data:`SKIP_MESSAGE`: on screen in
    "Reload and Test" (not an error dialog), and as "Skipped" in ctest (CMakeLists.txt's SKIP_REGULAR_EXPRESSION).
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        python = os.environ.get("ACTIVESEG_PYTHON", "")
        if not python:
            message = f"{SKIP_MESSAGE}: set ACTIVESEG_PYTHON to a Python with 'activeseg' installed"
            logger.warning(message)
            print(message)  # noqa: T201 - ctest reads the test's output for the skip marker
            self.delayDisplay(message, 3000)
            return
        self.setUp()
        self.test_ActiveLearningLoop(python)

    def test_ActiveLearningLoop(self, python: str) -> None:
        import subprocess
        import tempfile
        from pathlib import Path

        from ActiveSegLib import mrml

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
                info = logic.session.start_local_backend(python, str(root / "store"))
                self.assertEqual(info.counts["total"], 8)

                def labelNext() -> str:
                    loaded = logic.cases.load_next_case("tester")
                    truth = mrml.volume_node_from_file(logic.context,
                                                       root / "src" / "labelsTr" / f"{loaded.case_id}.nii.gz",
                                                       labelmap=True)
                    logic.cases.fill_segmentation(loaded.segmentation_node, loaded.volume_node,
                                                  slicer.util.arrayFromVolume(truth).copy())
                    mrml.remove_node(slicer.mrmlScene, truth)
                    self.assertEqual(logic.cases.submit().state, "labeled")
                    self.assertEqual(logic.cases.case_state(loaded.case_id), "labeled")
                    return loaded.case_id

                labelNext(), labelNext()
                training = logic.training
                self.assertEqual(training.wait_for_job(training.retrain(), timeout_s=600).status, "succeeded")
                top = logic.cases.refresh_queue()[0].case_id
                self.assertEqual(labelNext(), top)
                self.assertEqual(training.wait_for_job(training.retrain(), timeout_s=600).status, "succeeded")
                chart = training.update_learning_curve_plot(training.learning_curve())
                # one point per registered version (a round that kept the previous model adds none)
                self.assertEqual(chart.GetNthPlotSeriesNode(0).GetTableNode().GetNumberOfRows(),
                                 len(logic.session.client.models().models))
                pending = logic.review.pending()
                if not pending:  # this round routed nothing weak: roll back to v1 and rewrite its pseudo-labels
                    rolled = training.rollback(1)  # the backend re-ranks with v1, rewriting its pseudo-labels
                    if rolled.rank_job is not None:
                        training.wait_for_job(rolled.rank_job.job_id, timeout_s=600)
                    pending = logic.review.pending()
                self.assertTrue(pending, "no pseudo-label to review")
                overlay = logic.review.load_pseudo_label(pending[0].case_id)
                self.assertGreater(overlay.GetSegmentation().GetNumberOfSegments(), 0)
                self.assertEqual(logic.review.accept(pending[0].case_id).state, "accepted")
                self.assertEqual(logic.cases.case_state(pending[0].case_id), "accepted")
            finally:
                logic.shutdown()
        self.delayDisplay("ActiveSeg loop test passed")
