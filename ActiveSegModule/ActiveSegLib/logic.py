"""The ActiveSeg module's Logic without any GUI: backend connection, queue, cases, submission, training, review.

It depends on MRML (through :mod:`ActiveSegLib.mrml`), the stdlib client and the launcher, never on Qt, so it runs
inside Slicer (``ActiveSeg.ActiveSegLogic`` adapts it to ``ScriptedLoadableModuleLogic``) and under pytest with the
``slicer-core`` wheel and a headless :class:`~ActiveSegLib.mrml.MrmlContext`.

Threading contract (Slicer's Qt and MRML objects belong to the main thread):
    * ``fetch_*``, ``upload_*``, :meth:`~ActiveSegCoreLogic.refresh_queue`, :meth:`~ActiveSegCoreLogic.retrain`,
      :meth:`~ActiveSegCoreLogic.poll_job`, :meth:`~ActiveSegCoreLogic.learning_curve`, accept/reject and
      :meth:`~ActiveSegCoreLogic.connect` only talk to the backend: run them on a worker thread.
    * ``build_*``, :meth:`~ActiveSegCoreLogic.encode_submission` and
      :meth:`~ActiveSegCoreLogic.update_learning_curve_plot` touch MRML: call them on the main thread.
    * The one-call conveniences (:meth:`~ActiveSegCoreLogic.load_next_case`, :meth:`~ActiveSegCoreLogic.submit`,
      :meth:`~ActiveSegCoreLogic.load_pseudo_label`) do both, for scripts, tests and ``runTest``.

Geometry: volumes and segmentations are RAS MRML nodes; the files exchanged with the backend are LPS (ITK). The
conversion happens in the storage nodes (:mod:`ActiveSegLib.mrml`), never here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import vtk

from . import mrml
from .client import ActiveSegClient, Download
from .errors import BackendRequestError, ClientError, MrmlBridgeError
from .launcher import BackendLauncher

__all__ = [
    "ActiveSegCoreLogic",
    "CaseDownload",
    "CurveRow",
    "LoadedCase",
    "QueueRow",
    "describe_job",
    "FINISHED_JOB_STATES",
]

logger = logging.getLogger(__name__)

#: Job statuses after which nothing changes any more.
FINISHED_JOB_STATES = ("succeeded", "failed", "cancelled", "interrupted")

# Node attribute marking what ActiveSeg created, so a later case replaces them instead of piling up.
_ROLE_ATTRIBUTE = "ActiveSeg.Role"
_CASE_ATTRIBUTE = "ActiveSeg.CaseId"
_PLOT_TABLE = "ActiveSeg learning curve table"
_PLOT_CHART = "ActiveSeg learning curve"


@dataclass(frozen=True)
class QueueRow:
    """One row of the queue (or review) table.

    Attributes:
        case_id: the case.
        mdsc: mean Dice between the network's side outputs under the active model (low = uncertain), or ``None``.
        route: ``strong`` (expert queue), ``weak`` (pseudo-label) or ``None`` before ranking.
        state: unlabeled, queued, labeled, pseudo, accepted or rejected.
        rank: 1-based position in the queue (0 outside the queue).
        lease_holder: the annotator holding the case, if anyone.
        split: ``train`` or ``val`` (validation cases come first in the queue).
    """

    case_id: str
    mdsc: float | None
    route: str | None
    state: str
    rank: int = 0
    lease_holder: str | None = None
    split: str = "train"

    @classmethod
    def from_case(cls, case: Mapping[str, Any], rank: int = 0) -> QueueRow:
        """Build a row from a ``/v1`` case object."""
        return cls(case_id=str(case["case_id"]), mdsc=case.get("mdsc"), route=case.get("route"),
                   state=str(case.get("state", "")), rank=rank, lease_holder=case.get("lease_holder"),
                   split=str(case.get("split") or "train"))

    def cells(self) -> tuple[str, str, str, str]:
        """The table's text cells: case, M-DSC (3 decimals or an em dash), route, state."""
        mdsc = "\u2014" if self.mdsc is None else f"{self.mdsc:.3f}"
        return self.case_id, mdsc, self.route or "\u2014", self.state


@dataclass(frozen=True)
class CurveRow:
    """One point of the learning curve (one model version).

    Attributes:
        version: model version.
        n_expert: expert (and accepted) labels it was trained on, if known.
        n_pseudo: pseudo-labels it was trained on, if known.
        val_dice: mean Dice on the fixed validation split in [0, 1], or ``None`` (no validation labels yet).
        final_loss: the last epoch's mean training loss, or ``None``.
        active: whether it is the active version.
    """

    version: int
    n_expert: int | None
    n_pseudo: int | None
    val_dice: float | None
    final_loss: float | None
    active: bool


@dataclass
class CaseDownload:
    """What :meth:`ActiveSegCoreLogic.fetch_case` brought back (bytes only: no MRML yet).

    Attributes:
        case: the leased ``/v1`` case object.
        annotator: who leased it.
        image: the image file.
        start: a segmentation to start editing from (pseudo-label or prediction, ``.seg.nrrd``), or ``None``.
        start_kind: ``"pseudo"``, ``"prediction"`` or ``""``.
    """

    case: dict[str, Any]
    annotator: str
    image: Download
    start: Download | None = None
    start_kind: str = ""

    @property
    def case_id(self) -> str:
        """The case's id."""
        return str(self.case["case_id"])


@dataclass
class LoadedCase:
    """A case shown in the scene.

    Attributes:
        case_id: the case.
        annotator: who holds its lease (empty for a review-only load).
        volume_node: its ``vtkMRMLScalarVolumeNode`` (RAS).
        segmentation_node: the ``vtkMRMLSegmentationNode`` being edited or reviewed (reference geometry = volume).
        start_kind: what the segmentation started from: ``"pseudo"``, ``"prediction"`` or ``""`` (empty segments).
    """

    case_id: str
    annotator: str
    volume_node: Any
    segmentation_node: Any
    start_kind: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def describe_job(job: Mapping[str, Any]) -> tuple[float | None, str]:
    """A job's completed fraction and a one-line summary for a progress bar and label.

    Args:
        job: a ``/v1/jobs/{id}`` object.

    Returns:
        (fraction in [0, 1] or ``None`` when unknown, text such as ``"train: epoch 2/5, step 3/10, loss 0.412,
        ETA 1 min 5 s"``).
    """
    status = str(job.get("status", ""))
    progress = job.get("progress") or {}
    phase = progress.get("phase") or status
    kind = job.get("kind", "job")
    if status in FINISHED_JOB_STATES:
        text = f"{kind} {status}"
        if status != "succeeded" and job.get("error"):
            text += f": {job['error']}"
        return (1.0 if status == "succeeded" else None), text
    fraction: float | None = None
    parts = [f"{kind}: {phase}"]
    epoch, epochs, step, steps = (progress.get(k) for k in ("epoch", "epochs", "step", "steps"))
    if epoch and epochs:
        parts.append(f"epoch {epoch}/{epochs}")
        per_epoch = steps or 1
        within = per_epoch if phase == "validate" else (step or 0)  # validation follows a finished epoch
        fraction = min(1.0, max(0.0, ((epoch - 1) * per_epoch + within) / (epochs * per_epoch)))
    if step and steps:
        parts.append(f"step {step}/{steps}")
    if isinstance(progress.get("loss"), (int, float)):
        parts.append(f"loss {progress['loss']:.3f}")
    if isinstance(progress.get("val_dice"), (int, float)):
        parts.append(f"val Dice {progress['val_dice']:.3f}")
    eta = progress.get("eta_s")
    if isinstance(eta, (int, float)) and math.isfinite(eta):
        minutes, seconds = divmod(int(round(eta)), 60)
        parts.append(f"ETA {minutes} min {seconds} s" if minutes else f"ETA {seconds} s")
    return fraction, ", ".join(parts)


class ActiveSegCoreLogic:
    """The active-learning loop on one backend, with MRML nodes for cases and labels.

    Args:
        context: scene and segmentations logic; ``None``: :meth:`MrmlContext.from_slicer` on first use (Slicer).
        env: environment for a local backend process (inside Slicer pass ``slicer.util.startupEnvironment()``,
            so the backend's Python does not inherit Slicer's ``PYTHONHOME``); ``None``: this process's, cleaned.
        timeout_s: HTTP timeout of the client made by :meth:`connect`.
    """

    def __init__(self, context: mrml.MrmlContext | None = None, *, env: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0) -> None:
        self._context = context
        self.env = dict(env) if env is not None else None
        self.timeout_s = float(timeout_s)
        self._client: ActiveSegClient | None = None
        self.launcher: BackendLauncher | None = None
        self.info: dict[str, Any] = {}
        self.labels: dict[int, str] = {}
        self.current: LoadedCase | None = None
        self.review: LoadedCase | None = None

    # ------------------------------------------------------------------ connection

    @property
    def context(self) -> mrml.MrmlContext:
        """The MRML scene and logics (Slicer's own when none was given)."""
        if self._context is None:
            self._context = mrml.MrmlContext.from_slicer()
        return self._context

    @property
    def client(self) -> ActiveSegClient:
        """The connected backend's client.

        Raises:
            ClientError: :meth:`connect` or :meth:`start_local_backend` was not called.
        """
        if self._client is None:
            raise ClientError("not connected to a backend: connect to a URL or start a local backend first")
        return self._client

    @property
    def connected(self) -> bool:
        """Whether a backend was connected (it may have stopped since)."""
        return self._client is not None

    def connect(self, url: str, token: str | None = None) -> dict[str, Any]:
        """Connect to a running backend and read its ``/v1/info`` (labels, counts, active model).

        Network; worker thread.

        Args:
            url: e.g. ``http://gpu-server:8000`` or the local backend's URL.
            token: bearer token, if the backend requires one.

        Returns:
            the backend's info.

        Raises:
            ValueError: a malformed URL. BackendUnavailableError: nothing answers. AuthenticationError: 401.
        """
        client = ActiveSegClient(url, token=token or None, timeout_s=self.timeout_s)
        info = client.info()
        self._client = client
        self._set_info(info)
        logger.info("connected to ActiveSeg backend %s at %s (%s)", info.get("version"), client.base_url,
                    info.get("device"))
        return info

    def _set_info(self, info: dict[str, Any]) -> None:
        self.info = info
        self.labels = {int(k): str(v) for k, v in (info.get("labels") or {}).items() if int(k) != 0}

    def refresh_info(self) -> dict[str, Any]:
        """Re-read ``/v1/info`` (counts, active model, running job). Network; worker thread."""
        info = self.client.info()
        self._set_info(info)
        return info

    def start_local_backend(self, python: str, data_dir: str, token: str | None = None,
                            timeout_s: float = 120.0) -> dict[str, Any]:
        """Start ``python -m activeseg serve --data data_dir`` on loopback (free port) and connect to it.

        Blocks until the backend announces its URL (torch import: seconds); worker thread.

        Args:
            python: the backend environment's interpreter.
            data_dir: an initialised datastore folder (``activeseg init``).
            token: optional bearer token for the local backend.
            timeout_s: how long to wait for start-up.

        Returns:
            the backend's info.

        Raises:
            BackendStartError: the process could not start or exited (the message carries its last output).
        """
        self.stop_local_backend()
        launcher = BackendLauncher(python, data_dir, token=token or None, env=self.env)
        url = launcher.start(timeout_s=timeout_s)
        self.launcher = launcher
        try:
            return self.connect(url, token)
        except ClientError:
            launcher.stop()
            self.launcher = None
            raise

    def stop_local_backend(self) -> None:
        """Stop the local backend's process tree, if this logic started one (safe to call repeatedly)."""
        launcher, self.launcher = self.launcher, None
        if launcher is None:
            return
        if self._client is not None and launcher.url and self._client.base_url == launcher.url.rstrip("/"):
            self._client = None
        launcher.stop()

    # ------------------------------------------------------------------ queue

    def refresh_queue(self) -> list[QueueRow]:
        """The strong queue, most uncertain first. Network; worker thread."""
        items = self.client.queue().get("items", [])
        return [QueueRow.from_case(item["case"], rank=int(item.get("rank", n))) for n, item in enumerate(items, 1)]

    def pseudo_cases(self) -> list[QueueRow]:
        """Cases with a pseudo-label awaiting review (state ``pseudo``). Network; worker thread."""
        return [QueueRow.from_case(case) for case in self.client.cases(state="pseudo").get("cases", [])]

    def case_state(self, case_id: str) -> str:
        """The backend's state of one case. Network."""
        return str(self.client.case(case_id)["state"])

    # ------------------------------------------------------------------ next case

    def fetch_case(self, case: Mapping[str, Any], annotator: str) -> CaseDownload:
        """Download a (leased) case's image and a starting segmentation. Network; worker thread.

        The starting segmentation is the case's pseudo-label when it has one, else the active model's
        prediction when the backend serves it (:meth:`ActiveSegClient.download_prediction`), else none.
        """
        case_id = str(case["case_id"])
        image = self.client.download_image(case_id)
        start: Download | None = None
        kind = ""
        if case.get("has_pseudo"):
            start, kind = self.client.download_pseudo(case_id), "pseudo"
        elif case.get("mdsc") is not None or self.info.get("active_model") is not None:
            start = self.client.download_prediction(case_id)
            kind = "prediction" if start is not None else ""
        return CaseDownload(case=dict(case), annotator=annotator, image=image, start=start, start_kind=kind)

    def fetch_next_case(self, annotator: str) -> CaseDownload | None:
        """Lease the most uncertain free case to ``annotator`` and download it. Network; worker thread.

        Before the first ranking the backend serves unlabelled cases (its cold start), so Next works on a
        fresh datastore too.

        Returns:
            the download, or ``None`` when the queue has no free case.

        Raises:
            ValueError: empty annotator name.
        """
        if not annotator or not annotator.strip():
            raise ValueError("an annotator name is needed to lease a case")
        annotator = annotator.strip()
        case = self.client.lease_next(annotator)
        if case is None:
            return None
        return self.fetch_case(case, annotator)

    def fetch_case_by_id(self, case_id: str, annotator: str) -> CaseDownload:
        """Lease a chosen case (e.g. double-clicked in the queue table) and download it. Network; worker thread.

        Raises:
            BackendRequestError: 409 ``leased`` by someone else or already labelled, 404 unknown case.
        """
        if not annotator or not annotator.strip():
            raise ValueError("an annotator name is needed to lease a case")
        return self.fetch_case(self.client.lease(case_id, annotator.strip()), annotator.strip())

    def _labels_or_fetch(self) -> dict[int, str]:
        if not self.labels:
            self.refresh_info()
        return self.labels

    def build_case_nodes(self, download: CaseDownload, *, replace_previous: bool = True) -> LoadedCase:
        """Turn a :class:`CaseDownload` into a volume node and a segmentation node to edit. MRML; main thread.

        Args:
            download: from :meth:`fetch_case` / :meth:`fetch_next_case`.
            replace_previous: remove the nodes of the previously loaded case first (keeps the scene small).

        Returns:
            the loaded case (also kept as :attr:`current`). Its segmentation has one segment per class, named
            after the class; it holds the starting segmentation when there was one, else it is empty.

        Raises:
            MrmlBridgeError: the image or segmentation bytes are unreadable.
        """
        labels = self._labels_or_fetch()
        ctx = self.context
        if replace_previous and self.current is not None:
            self._remove_case_nodes(self.current)
        case_id = download.case_id
        volume = mrml.volume_node_from_bytes(ctx, download.image.data, download.image.suffix or ".nii.gz", case_id)
        volume.SetAttribute(_ROLE_ATTRIBUTE, "image")
        volume.SetAttribute(_CASE_ATTRIBUTE, case_id)
        segmentation = None
        if download.start is not None:
            try:
                segmentation = mrml.segmentation_node_from_bytes(ctx, download.start.data, f"{case_id} label", volume)
                self._complete_segments(segmentation, labels)
            except MrmlBridgeError as exc:  # a bad starting point must not block labelling
                logger.warning("starting segmentation of %s unusable (%s); starting empty", case_id, exc)
                segmentation = None
        if segmentation is None:
            empty = np.zeros(mrml.grid_shape_kji(volume), dtype=np.uint8)
            segmentation = mrml.segmentation_from_labelmap_array(ctx, empty, volume, labels, f"{case_id} label")
        segmentation.SetAttribute(_ROLE_ATTRIBUTE, "label")
        segmentation.SetAttribute(_CASE_ATTRIBUTE, case_id)
        self.current = LoadedCase(case_id, download.annotator, volume, segmentation,
                                  download.start_kind if download.start is not None else "")
        return self.current

    @staticmethod
    def _complete_segments(segmentation_node: Any, labels: Mapping[int, str]) -> None:
        """Add an empty segment for every class the starting segmentation lacks (the editor lists all classes)."""
        present = {info["name"].strip().lower() for info in mrml.segments_info(segmentation_node)}
        order = sorted(labels)
        for index, value in enumerate(order):
            if labels[value].strip().lower() not in present:
                color = mrml.DEFAULT_SEGMENT_COLORS[index % len(mrml.DEFAULT_SEGMENT_COLORS)]
                segmentation_node.GetSegmentation().AddEmptySegment("", labels[value], list(color))

    def _remove_case_nodes(self, loaded: LoadedCase) -> None:
        scene = self.context.scene
        for node in (loaded.segmentation_node, loaded.volume_node):
            if node is not None and scene.IsNodePresent(node):
                mrml.remove_node(scene, node)

    def load_next_case(self, annotator: str) -> tuple[Any, Any] | None:
        """Lease and load the most uncertain case (network + MRML; for scripts and tests).

        Returns:
            (volume node, segmentation node), or ``None`` when no case is free.
        """
        download = self.fetch_next_case(annotator)
        if download is None:
            return None
        loaded = self.build_case_nodes(download)
        return loaded.volume_node, loaded.segmentation_node

    def fill_segmentation(self, segmentation_node: Any, volume_node: Any, array_kji: np.ndarray) -> None:
        """Overwrite the class segments with a labelmap, in place (the node, its IDs and colours are kept).

        What the Segment Editor does by hand; used by ``runTest`` and the tests to "segment" a case with ground
        truth, and handy to reset a case to a known labelmap. MRML; main thread.

        Args:
            segmentation_node: the case's segmentation (segments named after classes).
            volume_node: the case's volume; ``array_kji`` lies on its grid.
            array_kji: integer ``(k, j, i)`` labelmap of class values (0 = background).

        Raises:
            MrmlBridgeError: a shape other than the volume's grid, or segments that map to no class.
        """
        import slicer  # MRML classes and array helpers (slicer-core or Slicer)

        array = np.asarray(array_kji)
        shape = mrml.grid_shape_kji(volume_node)
        if array.shape != shape:
            raise MrmlBridgeError(f"labelmap shape {array.shape} != volume grid {shape} (k, j, i)")
        mapping = mrml.segment_class_values(segmentation_node, self._labels_or_fetch())
        ctx = self.context
        scene = ctx.scene
        scratch = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("ActiveSegFill"))
        try:
            scratch.CopyOrientation(volume_node)
            for segment_id, value in mapping.items():
                slicer.util.updateVolumeFromArray(scratch, np.ascontiguousarray(array == value, dtype=np.uint8))
                ids = vtk.vtkStringArray()
                ids.InsertNextValue(segment_id)
                if not ctx.segmentations_logic.ImportLabelmapToSegmentationNode(scratch, segmentation_node, ids):
                    raise MrmlBridgeError(f"writing class {value} into segment {segment_id!r} failed")
        finally:
            mrml.remove_node(scene, scratch)

    # ------------------------------------------------------------------ submit

    def encode_submission(self, segmentation_node: Any, volume_node: Any) -> bytes:
        """The segmentation as a labelmap file (``.nii.gz``, LPS, exactly the volume's grid). MRML; main thread.

        Segments map to classes by name (:func:`ActiveSegLib.mrml.segment_class_values`).

        Raises:
            MrmlBridgeError: segments that match no class, or a bad reference volume.
        """
        return mrml.labelmap_bytes_from_segmentation(self.context, segmentation_node, volume_node,
                                                     self._labels_or_fetch(), suffix=".nii.gz")

    def upload_submission(self, case_id: str, data: bytes, annotator: str, no_finding: bool = False) -> dict[str, Any]:
        """Send an encoded label. Network; worker thread.

        Returns:
            the case after submission (state ``labeled``).

        Raises:
            BackendRequestError: e.g. 422 an empty label without ``no_finding``, 409 leased by someone else.
        """
        return self.client.submit_label(case_id, data, annotator, no_finding=no_finding, file_format=".nii.gz",
                                        timeout_s=max(self.timeout_s, 120.0))

    def submit(self, segmentation_node: Any | None = None, volume_node: Any | None = None, no_finding: bool = False,
               *, case_id: str | None = None, annotator: str | None = None) -> dict[str, Any]:
        """Encode and submit a label (network + MRML; for scripts and tests).

        Args:
            segmentation_node: default: the current case's.
            volume_node: default: the current case's.
            no_finding: the case has nothing to segment (an empty label is intended).
            case_id: default: the current case's (or the volume's ``ActiveSeg.CaseId`` attribute).
            annotator: default: who leased the current case.

        Returns:
            the case after submission.

        Raises:
            ClientError: no case to submit. MrmlBridgeError / BackendRequestError: see the two steps.
        """
        loaded = self.current
        segmentation_node = segmentation_node or (loaded.segmentation_node if loaded else None)
        volume_node = volume_node or (loaded.volume_node if loaded else None)
        if segmentation_node is None or volume_node is None:
            raise ClientError("no case loaded: load the next case before submitting")
        case_id = case_id or volume_node.GetAttribute(_CASE_ATTRIBUTE) or (loaded.case_id if loaded else None)
        annotator = annotator or (loaded.annotator if loaded else "")
        if not case_id or not annotator:
            raise ClientError("which case and annotator to submit for is unknown; load the case through ActiveSeg")
        data = self.encode_submission(segmentation_node, volume_node)
        return self.upload_submission(case_id, data, annotator, no_finding=no_finding)

    # ------------------------------------------------------------------ jobs

    def retrain(self, then_rank: bool = True) -> str:
        """Start a training round (then re-rank: new queue and pseudo-labels). Network; worker thread.

        Returns:
            the job id.

        Raises:
            BackendRequestError: 409 ``job_running`` when a job already runs, 422 without labelled cases.
        """
        return str(self.client.start_train(then_rank=then_rank, write_pseudo=True)["job_id"])

    def rank(self) -> str:
        """Start a ranking round with the active model. Network. Returns the job id."""
        return str(self.client.start_rank(write_pseudo=True)["job_id"])

    def poll_job(self, job_id: str) -> dict[str, Any]:
        """The job's status dict (``status``, ``progress``, ``error``, ``log_tail``...) plus ``fraction`` and
        ``summary`` from :func:`describe_job` and ``done`` (no further change will come). Network; worker thread."""
        job = self.client.job(job_id, log_lines=5)
        job["fraction"], job["summary"] = describe_job(job)
        job["done"] = job.get("status") in FINISHED_JOB_STATES  # ("finished" is the backend's timestamp)
        return job

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Ask the backend to stop a job (its process tree). Network. Poll until ``cancelled``."""
        return self.client.cancel_job(job_id)

    def wait_for_job(self, job_id: str, timeout_s: float = 600.0, interval_s: float = 0.5,
                     progress: Callable[[dict[str, Any]], bool | None] | None = None) -> dict[str, Any]:
        """Poll a job until it finishes (blocking; for scripts, tests and ``runTest``).

        Args:
            job_id: the job.
            timeout_s: give up (and cancel the job) after this many seconds.
            interval_s: seconds between polls.
            progress: called with every polled status; returning ``False`` cancels the job.

        Returns:
            the final status dict.

        Raises:
            ClientError: the job did not finish within ``timeout_s`` (it is cancelled).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.poll_job(job_id)
            if job["done"]:
                return job
            if progress is not None and progress(job) is False:
                self.cancel_job(job_id)
                deadline = min(deadline, time.monotonic() + 60.0)
            if time.monotonic() > deadline:
                self.cancel_job(job_id)
                raise ClientError(f"job {job_id} did not finish within {timeout_s:g} s; cancelled it")
            time.sleep(interval_s)

    # ------------------------------------------------------------------ learning curve

    def learning_curve(self) -> list[CurveRow]:
        """Validation Dice and final loss per model version, oldest first. Network; worker thread."""
        return [CurveRow(version=int(p["version"]), n_expert=p.get("n_expert"), n_pseudo=p.get("n_pseudo"),
                         val_dice=p.get("val_dice"), final_loss=p.get("final_loss"), active=bool(p.get("active")))
                for p in self.client.learning_curve()]

    def update_learning_curve_plot(self, rows: list[CurveRow]) -> Any:
        """Show the learning curve as a Slicer plot: a table node, two series, one chart. MRML; main thread.

        The nodes are created once and reused (found by name), so repeated updates do not pile up.

        Args:
            rows: from :meth:`learning_curve`. Missing values are plotted as gaps (NaN).

        Returns:
            the ``vtkMRMLPlotChartNode`` (show it with the Plots module's ``ShowChartInLayout``).
        """
        table = self._named_node("vtkMRMLTableNode", _PLOT_TABLE)
        columns = {
            "version": [float(r.version) for r in rows],
            "validation Dice": [math.nan if r.val_dice is None else float(r.val_dice) for r in rows],
            "final loss": [math.nan if r.final_loss is None else float(r.final_loss) for r in rows],
            "expert labels": [math.nan if r.n_expert is None else float(r.n_expert) for r in rows],
        }
        vtk_table = vtk.vtkTable()
        for name, values in columns.items():
            array = vtk.vtkDoubleArray()
            array.SetName(name)
            for value in values:
                array.InsertNextValue(value)
            vtk_table.AddColumn(array)
        table.SetAndObserveTable(vtk_table)
        table.Modified()
        chart = self._named_node("vtkMRMLPlotChartNode", _PLOT_CHART)
        chart.SetTitle("ActiveSeg learning curve")
        chart.SetXAxisTitle("model version")
        chart.SetYAxisTitle("Dice / loss")
        for y_column, color in (("validation Dice", (0.2, 0.6, 0.2)), ("final loss", (0.8, 0.3, 0.2))):
            series = self._named_node("vtkMRMLPlotSeriesNode", f"ActiveSeg {y_column}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("version")
            series.SetYColumnName(y_column)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleCircle)
            series.SetColor(*color)
            if not chart.HasPlotSeriesNodeID(series.GetID()):
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
        logger.debug("learning curve plot updated with %d points", len(rows))
        return chart

    def _named_node(self, class_name: str, name: str) -> Any:
        scene = self.context.scene
        for index in range(scene.GetNumberOfNodesByClass(class_name)):
            node = scene.GetNthNodeByClass(index, class_name)
            if node.GetName() == name and node.GetAttribute(_ROLE_ATTRIBUTE) == "plot":
                return node
        node = scene.AddNewNodeByClass(class_name, name)
        node.SetAttribute(_ROLE_ATTRIBUTE, "plot")
        return node

    # ------------------------------------------------------------------ review

    def fetch_pseudo(self, case_id: str) -> CaseDownload:
        """Download a pseudo-label and (unless the case is already shown) its image. Network; worker thread."""
        case = self.client.case(case_id)
        shown = self.current is not None and self.current.case_id == case_id
        image = Download(b"", "") if shown else self.client.download_image(case_id)
        pseudo = self.client.download_pseudo(case_id)
        return CaseDownload(case=case, annotator="", image=image, start=pseudo, start_kind="pseudo")

    def build_pseudo_nodes(self, download: CaseDownload) -> LoadedCase:
        """Show a pseudo-label as a segmentation overlaid on its volume. MRML; main thread.

        The overlay is a separate node named ``<case> pseudo-label`` (the expert label being edited, if any,
        stays untouched). It can be edited and then submitted as an expert label (edit-and-submit).

        Raises:
            MrmlBridgeError: unreadable bytes.
        """
        ctx = self.context
        case_id = download.case_id
        if self.review is not None:
            scene = ctx.scene
            if scene.IsNodePresent(self.review.segmentation_node):
                mrml.remove_node(scene, self.review.segmentation_node)
            if self.review.extra.get("owns_volume") and scene.IsNodePresent(self.review.volume_node):
                mrml.remove_node(scene, self.review.volume_node)
            self.review = None
        if download.image.data:
            volume = mrml.volume_node_from_bytes(ctx, download.image.data, download.image.suffix or ".nii.gz", case_id)
            volume.SetAttribute(_ROLE_ATTRIBUTE, "image")
            volume.SetAttribute(_CASE_ATTRIBUTE, case_id)
            owns = True
        else:
            assert self.current is not None
            volume, owns = self.current.volume_node, False
        assert download.start is not None
        segmentation = mrml.segmentation_node_from_bytes(ctx, download.start.data, f"{case_id} pseudo-label", volume)
        segmentation.SetAttribute(_ROLE_ATTRIBUTE, "pseudo")
        segmentation.SetAttribute(_CASE_ATTRIBUTE, case_id)
        display = segmentation.GetDisplayNode()
        if display is not None:  # an overlay: see the image through it
            display.SetOpacity2DFill(0.35)
        self.review = LoadedCase(case_id, "", volume, segmentation, "pseudo", extra={"owns_volume": owns})
        return self.review

    def load_pseudo_label(self, case_id: str) -> Any:
        """Load a case's pseudo-label as an overlaid segmentation node (network + MRML; scripts and tests).

        Returns:
            the ``vtkMRMLSegmentationNode`` (its volume is :attr:`review`'s ``volume_node``).
        """
        return self.build_pseudo_nodes(self.fetch_pseudo(case_id)).segmentation_node

    def accept_pseudo(self, case_id: str) -> dict[str, Any]:
        """Accept a pseudo-label as the case's label (state ``accepted``). Network; worker thread."""
        return self.client.accept_pseudo(case_id)

    def reject_pseudo(self, case_id: str) -> dict[str, Any]:
        """Reject a pseudo-label (state ``rejected``; not pseudo-labelled again). Network; worker thread."""
        return self.client.reject_pseudo(case_id)

    def release_current(self) -> None:
        """Give back the current case's lease (e.g. the user skips it). Network."""
        if self.current is not None and self.current.annotator:
            self.client.release(self.current.case_id, self.current.annotator)
