"""The Logic's "Queue" and "Segment" sections: the ranked queue, leasing and loading the next case, submitting.

Threading contract (Slicer's Qt and MRML objects belong to the main thread):
    * ``refresh_queue``, ``case_state``, ``fetch_*``, ``upload_submission`` and ``release_lease`` only talk to the
      backend: run them on a worker thread.
    * ``build_case_nodes``, ``fill_segmentation``, ``encode_submission``, ``has_unsaved_edits`` and
      ``forget_scene`` touch MRML only (never the network): call them on the main thread.
    * ``load_next_case`` and ``submit`` do both, for scripts, tests and ``runTest``.

Bulk files move as the session's ``bulk_transfers`` says: on the worker thread itself, or (inside Slicer) by helper
processes, in which case ``fetch_*`` return a :class:`CaseDownload` still in transit (a
:class:`~ActiveSegLib.worker.Deferred` whose parts download side by side) and ``upload_submission`` a transfer
whose result is the case: :class:`~ActiveSegLib.worker.BackgroundTasks` hands ``on_done`` the finished value,
scripts use :func:`~ActiveSegLib.worker.settle`.

Unsubmitted work is never dropped silently: every case segmentation is watched for edits
(:meth:`CasesSection.has_unsaved_edits`), the widget asks before Next replaces an edited case, and the lease of
a case the user walks away from is given back (:meth:`CasesSection.fetch_next_case` releases the previous one).

Geometry: volumes and segmentations are RAS MRML nodes; files exchanged with the backend are LPS (ITK). The
conversion happens in the storage nodes (:mod:`ActiveSegLib.mrml`), never here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import vtk

from . import mrml
from .client import Download
from .errors import ClientError, MrmlBridgeError
from .responses import Case
from .session import BackendSession
from .uncertainty import UncertaintyOverlay
from .worker import Deferred, settle

__all__ = ["CaseDownload", "LoadedCase", "QueueRow", "ReviewRow", "EditWatch", "CasesSection"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QueueRow:
    """One row of the queue (or review) table.

    Attributes:
        case: the case as the backend described it.
        rank: 1-based position in the queue (0 outside the queue).
    """

    case: Case
    rank: int = 0

    @property
    def case_id(self) -> str:
        """The case's id."""
        return self.case.case_id

    @property
    def state(self) -> str:
        """The case's state."""
        return self.case.state

    @property
    def name(self) -> str:
        """The case as the table shows it: its display name (series description, study date), else its id."""
        return self.case.name

    def cells(self) -> tuple[str, str, str, str]:
        """The table's text cells: case (:attr:`name`), M-DSC (3 decimals or an em dash), route, state."""
        mdsc = "\u2014" if self.case.mdsc is None else f"{self.case.mdsc:.3f}"
        return self.name, mdsc, self.case.route or "\u2014", self.case.state


@dataclass(frozen=True)
class ReviewRow(QueueRow):
    """One row of the review table: a pending pseudo-label, or an accepted one that can be re-opened."""

    def cells(self) -> tuple[str, ...]:  # type: ignore[override]
        """case (:attr:`name`), M-DSC, confidence (the model's, 0-1), predicted foreground (ml), state; an em dash
        when unknown."""
        case = self.case

        def number(value: float | None, digits: int) -> str:
            return "\u2014" if value is None else f"{value:.{digits}f}"

        return self.name, number(case.mdsc, 3), number(case.confidence, 3), number(case.foreground_ml, 1), case.state


@dataclass
class CaseDownload:
    """What a ``fetch_*`` call brought back (bytes only: no MRML yet).

    With helper-process transfers the files are still in transit when a ``fetch_*`` returns: the parts are then
    :class:`~ActiveSegLib.worker.Deferred` and so is this object (:meth:`step`, :meth:`result`, :meth:`cancel`);
    :meth:`result` gives the settled download. A settled download is its own result.

    Attributes:
        case: the (leased) case.
        annotator: who leased it (empty for a review-only download).
        image: the image file (empty bytes when the case is already shown).
        start: a segmentation to start from (pseudo-label or prediction, ``.seg.nrrd``), or ``None``.
        start_kind: ``"pseudo"``, ``"prediction"`` or ``""``.
        uncertainty: the case's uncertainty map (uint8 percent NRRD, image geometry), or ``None``.
    """

    case: Case
    annotator: str
    image: Download | Deferred
    start: Download | Deferred | None = None
    start_kind: str = ""
    uncertainty: Download | Deferred | None = None

    @property
    def case_id(self) -> str:
        """The case's id."""
        return self.case.case_id

    def _in_transit(self) -> list[Deferred]:
        return [part for part in (self.image, self.start, self.uncertainty) if isinstance(part, Deferred)]

    @property
    def settled(self) -> bool:
        """Whether every file has arrived (bytes in hand)."""
        return not self._in_transit()

    def step(self) -> bool:
        """Advance every file in transit (they move side by side); ``True`` once all arrived. Never blocks."""
        finished = True
        for part in self._in_transit():
            finished = part.step() and finished
        return finished

    def result(self) -> CaseDownload:
        """The settled download (an optional file that the case lacks is ``None``; ``start_kind`` is then ``""``).

        Raises:
            ClientError: a transfer's typed error (the other transfers' files are removed).
        """
        if self.settled:
            return self
        try:
            image, start, uncertainty = (part.result() if isinstance(part, Deferred) else part
                                         for part in (self.image, self.start, self.uncertainty))
        finally:
            self.cancel()  # what the other parts left behind after an error
        return CaseDownload(case=self.case, annotator=self.annotator, image=image, start=start,
                            start_kind=self.start_kind if start is not None else "", uncertainty=uncertainty)

    def cancel(self) -> None:
        """Stop the transfers still running and remove their files (idempotent)."""
        for part in self._in_transit():
            part.cancel()


class EditWatch:
    """Notices edits of a segmentation node (Segment Editor strokes, segments added or removed).

    Args:
        segmentation_node: a ``vtkMRMLSegmentationNode``; observed from now on.
    """

    _EVENTS = ("SourceRepresentationModified", "SegmentAdded", "SegmentRemoved")

    def __init__(self, segmentation_node: Any) -> None:
        import slicer

        self.edited = False
        self._segmentation = segmentation_node.GetSegmentation()
        self._tags = [self._segmentation.AddObserver(getattr(slicer.vtkSegmentation, name), self._on_edit)
                      for name in self._EVENTS]

    def _on_edit(self, caller: Any, event: Any) -> None:
        self.edited = True

    def close(self) -> None:
        """Stop observing (the node may be gone)."""
        for tag in self._tags:
            self._segmentation.RemoveObserver(tag)
        self._tags = []


@dataclass
class LoadedCase:
    """A case shown in the scene.

    Attributes:
        case_id: the case.
        annotator: who holds its lease (empty for a review-only load).
        volume_node: its ``vtkMRMLScalarVolumeNode`` (RAS).
        segmentation_node: the ``vtkMRMLSegmentationNode`` being edited or reviewed (reference geometry = volume).
        start_kind: what the segmentation started from: ``"pseudo"``, ``"prediction"``, ``"label"`` (a re-opened
            labelled or accepted case) or ``""`` (empty segments).
        owns_volume: whether removing this case should remove the volume too (a review overlay on the case
            being segmented shares its volume).
        watch: notices the user's edits of ``segmentation_node``.
    """

    case_id: str
    annotator: str
    volume_node: Any
    segmentation_node: Any
    start_kind: str = ""
    owns_volume: bool = True
    watch: EditWatch | None = field(default=None, repr=False)

    @property
    def edited(self) -> bool:
        """Whether the segmentation was edited since it was loaded."""
        return self.watch is not None and self.watch.edited

    def remove_nodes(self, scene: Any) -> None:
        """Remove the case's nodes from ``scene`` (those still there) and stop watching."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        nodes = [self.segmentation_node] + ([self.volume_node] if self.owns_volume else [])
        for node in nodes:
            if node is not None and scene.IsNodePresent(node):
                mrml.remove_node(scene, node)


def _annotator(name: str) -> str:
    """The annotator's name, stripped. Raises ValueError when empty (a lease needs a name)."""
    if not name or not name.strip():
        raise ValueError("an annotator name is needed to lease a case")
    return name.strip()


class CasesSection:
    """The queue, the case being segmented, and its submission.

    Args:
        session: the shared backend session.
    """

    def __init__(self, session: BackendSession) -> None:
        self.session = session
        self.current: LoadedCase | None = None
        self.uncertainty = UncertaintyOverlay(lambda: session.context)

    # ------------------------------------------------------------------ queue (network)

    def refresh_queue(self) -> list[QueueRow]:
        """The strong queue, most uncertain first. Network; worker thread."""
        return [QueueRow(item.case, rank=item.rank) for item in self.session.client.queue().items]

    def case_state(self, case_id: str) -> str:
        """The backend's state of one case. Network."""
        return self.session.client.case(case_id).state

    # ------------------------------------------------------------------ next case (network)

    def fetch_case(self, case: Case, annotator: str) -> CaseDownload:
        """Download a (leased) case's image, a starting segmentation and its uncertainty map. Network; worker thread.

        The starting segmentation is the case's pseudo-label when it has one, else the active model's
        prediction when the backend serves it, else none.
        """
        session = self.session
        if not session.labels:
            session.refresh_info()  # worker thread: the label set is needed to build the nodes
        image = session.download("image", case.case_id)
        # (The cached info may predate the last training round: ask, a missing file is a cheap 409.)
        if case.has_pseudo:
            start, kind = session.download("pseudo", case.case_id), "pseudo"
        else:
            start = session.download("prediction", case.case_id)
            kind = "prediction" if start is not None else ""
        uncertainty = session.download("uncertainty", case.case_id)
        return CaseDownload(case=case, annotator=annotator, image=image, start=start, start_kind=kind,
                            uncertainty=uncertainty)

    def fetch_next_case(self, annotator: str, release: str | None = None) -> CaseDownload | None:
        """Lease the most uncertain free case to ``annotator`` and download it. Network; worker thread.

        Before the first ranking the backend serves unlabelled cases (its cold start), so Next works on a
        fresh datastore too.

        Args:
            annotator: the user's name.
            release: a case the user walks away from: its lease is given back first (errors are logged, not
                raised: the case may have been submitted or its lease expired meanwhile).

        Returns:
            the download, or ``None`` when the queue has no free case.

        Raises:
            ValueError: empty annotator name.
        """
        annotator = _annotator(annotator)
        if release:
            self.release_lease(release, annotator)
        case = self.session.client.lease_next(annotator)
        if case is None:
            return None
        return self.fetch_case(case, annotator)

    def fetch_after_skip(self, case_id: str, annotator: str) -> CaseDownload | None:
        """Skip ``case_id`` (its lease goes back; the backend serves this annotator every other case before it
        again) and lease and download the next one. Network; worker thread.

        Returns:
            the next case's download, or ``None`` when no other case is free.

        Raises:
            ValueError: empty annotator name. BackendRequestError: the skip was refused (someone else holds it).
        """
        annotator = _annotator(annotator)
        self.session.client.skip(case_id, annotator)
        logger.info("skipped %s", case_id)
        case = self.session.client.lease_next(annotator)
        return None if case is None else self.fetch_case(case, annotator)

    def fetch_chosen_case(self, case_id: str, annotator: str, release: str | None = None) -> CaseDownload:
        """Lease the case the user chose (a double-click in the queue table) and download it. Network; worker thread.

        Args:
            case_id: the chosen case.
            annotator: the user's name.
            release: the case shown until now; its lease is given back once the chosen case is leased (logged,
                never raised), so a refused choice leaves the shown case leased. Nothing is released when it is the
                chosen case itself (the lease is renewed).

        Raises:
            ValueError: empty annotator name. BackendRequestError: the backend refused the lease (409 ``leased``:
                another annotator holds the case; or it is already labelled).
        """
        annotator = _annotator(annotator)
        case = self.session.client.lease(case_id, annotator)
        if release and release != case_id:
            self.release_lease(release, annotator)
        return self.fetch_case(case, annotator)

    def fetch_reopened_case(self, case_id: str, annotator: str, release: str | None = None) -> CaseDownload:
        """Re-open a labelled or accepted case to edit its label: lease it (``reopen``), download its image and its
        label as the starting segmentation. Submit then replaces the label. Network; worker thread.

        Args:
            release: the case shown until now; its lease is given back once this one is leased (logged).

        Raises:
            ValueError: empty annotator name. BackendRequestError: 409 ``leased`` (a colleague holds it).
        """
        annotator = _annotator(annotator)
        session = self.session
        case = session.client.lease(case_id, annotator, reopen=True)
        if release and release != case_id:
            self.release_lease(release, annotator)
        if not session.labels:
            session.refresh_info()
        start = session.download("label", case_id) if case.has_label else None
        return CaseDownload(case=case, annotator=annotator, image=session.download("image", case_id), start=start,
                            start_kind="label" if start is not None else "",
                            uncertainty=session.download("uncertainty", case_id))

    def release_lease(self, case_id: str, annotator: str) -> bool:
        """Give a case's lease back so others can take it. Network; worker thread.

        Returns:
            whether the backend released it (``False`` when it was no longer held, was submitted, or the
            backend could not be reached: logged, never raised).
        """
        try:
            self.session.client.release(case_id, annotator)
        except ClientError as exc:
            logger.info("lease of %s not released: %s", case_id, exc)
            return False
        logger.info("released the lease of %s", case_id)
        return True

    # ------------------------------------------------------------------ nodes (MRML; main thread)

    def has_unsaved_edits(self) -> bool:
        """Whether the case being segmented was edited and not submitted. MRML only; main thread."""
        return self.current is not None and self.current.edited

    def build_case_nodes(self, download: CaseDownload, *, replace_previous: bool = True) -> LoadedCase:
        """Turn a :class:`CaseDownload` into a volume node and a segmentation node to edit. MRML; main thread.

        Args:
            download: from :meth:`fetch_case` / :meth:`fetch_next_case`.
            replace_previous: remove the nodes of the previously loaded case first (keeps the scene small).
                Callers ask the user first when :meth:`has_unsaved_edits`.

        Returns:
            the loaded case (also kept as :attr:`current`). Its segmentation has one segment per class, named
            after the class; it holds the starting segmentation when there was one, else it is empty.

        Raises:
            ClientError: the label set is unknown (not connected). MrmlBridgeError: unreadable image bytes.
            ValueError: the download is still in transit (:func:`~ActiveSegLib.worker.settle` it first).
        """
        if not download.settled:
            raise ValueError(f"the download of {download.case_id!r} has not arrived yet")
        assert isinstance(download.image, Download)
        labels = self.session.require_labels()
        ctx = self.session.context
        if replace_previous and self.current is not None:
            self.current.remove_nodes(ctx.scene)
            self.current = None
            self.uncertainty.remove()
        case_id = download.case_id
        volume = mrml.volume_node_from_bytes(ctx, download.image.data, download.image.suffix or ".nii.gz", case_id)
        volume.SetAttribute(mrml.ROLE_ATTRIBUTE, "image")
        volume.SetAttribute(mrml.CASE_ATTRIBUTE, case_id)
        segmentation = None
        if download.start is not None:
            try:
                segmentation = mrml.segmentation_node_from_bytes(ctx, download.start.data, f"{case_id} label", volume)
                self._complete_segments(segmentation, labels, self.session.label_colours)
            except MrmlBridgeError as exc:  # a bad starting point must not block labelling
                logger.warning("starting segmentation of %s unusable (%s); starting empty", case_id, exc)
                segmentation = None
        if segmentation is None:
            empty = np.zeros(mrml.grid_shape_kji(volume), dtype=np.uint8)
            segmentation = mrml.segmentation_from_labelmap_array(ctx, empty, volume, labels, f"{case_id} label",
                                                                 colors=self.session.label_colours)
        segmentation.SetAttribute(mrml.ROLE_ATTRIBUTE, "label")
        segmentation.SetAttribute(mrml.CASE_ATTRIBUTE, case_id)
        self.current = LoadedCase(case_id, download.annotator, volume, segmentation,
                                  download.start_kind if download.start is not None else "",
                                  watch=EditWatch(segmentation))
        if download.uncertainty is not None:
            try:
                self.uncertainty.show(download.uncertainty, volume, case_id)
            except MrmlBridgeError as exc:  # an overlay must never block labelling
                logger.warning("uncertainty map of %s not shown: %s", case_id, exc)
        return self.current

    @staticmethod
    def _complete_segments(segmentation_node: Any, labels: Mapping[int, str],
                           colours: Mapping[int, Sequence[float]] | None = None) -> None:
        """Add an empty segment for every class the starting segmentation lacks (the editor lists all classes)."""
        present = {info["name"].strip().lower() for info in mrml.segments_info(segmentation_node)}
        for index, value in enumerate(sorted(labels)):
            if labels[value].strip().lower() not in present:
                color = (colours or {}).get(value) or mrml.DEFAULT_SEGMENT_COLORS[index % len(mrml.DEFAULT_SEGMENT_COLORS)]
                segmentation_node.GetSegmentation().AddEmptySegment("", labels[value], list(color))

    def fill_segmentation(self, segmentation_node: Any, volume_node: Any, array_kji: np.ndarray) -> None:
        """Overwrite the class segments with a labelmap, in place (the node, its IDs and colours are kept).

        What the Segment Editor does by hand (it counts as an edit); used by ``runTest`` and the tests to
        "segment" a case with ground truth. MRML; main thread.

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
        mapping = mrml.segment_class_values(segmentation_node, self.session.require_labels())
        ctx = self.session.context
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

    def forget_scene(self) -> None:
        """The scene was closed: drop references to its removed nodes (nothing is sent). Main thread."""
        if self.current is not None and self.current.watch is not None:
            self.current.watch.close()
        self.current = None
        self.uncertainty.forget_scene()

    # ------------------------------------------------------------------ submit

    def encode_submission(self, segmentation_node: Any, volume_node: Any) -> bytes:
        """The segmentation as a labelmap file (``.nii.gz``, LPS, exactly the volume's grid). MRML; main thread.

        Raises:
            ClientError: not connected (label set unknown). MrmlBridgeError: segments that match no class, or a
                bad reference volume.
        """
        return mrml.labelmap_bytes_from_segmentation(self.session.context, segmentation_node, volume_node,
                                                     self.session.require_labels(), suffix=".nii.gz")

    def upload_submission(self, case_id: str, data: bytes, annotator: str,
                          no_finding: bool = False) -> Case | Deferred:
        """Send an encoded label. Network; worker thread.

        Returns:
            the case after submission (state ``labeled``); with helper-process transfers, the transfer whose
            result it is.

        Raises:
            BackendRequestError: e.g. 422 an empty label without ``no_finding``, 409 leased by someone else.
        """
        return self.session.upload_label(case_id, data, annotator, no_finding=no_finding, file_format=".nii.gz",
                                         timeout_s=max(self.session.timeout_s, 120.0))

    def mark_submitted(self, case_id: str) -> None:
        """The case's label reached the backend: its edits are no longer unsaved. Main thread."""
        if self.current is not None and self.current.case_id == case_id and self.current.watch is not None:
            self.current.watch.edited = False

    # ------------------------------------------------------------------ one-call conveniences (scripts, tests)

    def load_next_case(self, annotator: str) -> LoadedCase | None:
        """Lease and load the most uncertain case, releasing the lease of the one shown (network + MRML).

        Returns:
            the loaded case, or ``None`` when no case is free.
        """
        previous = self.current.case_id if self.current is not None and self.current.annotator else None
        download = self.fetch_next_case(annotator, release=previous)
        if download is None:
            return None
        return self.build_case_nodes(settle(download))

    def skip_current(self) -> LoadedCase | None:
        """Skip the case shown and load the next one (network + MRML; for scripts and tests).

        Returns:
            the loaded next case, or ``None`` when no other case is free (the skipped case stays shown).

        Raises:
            ClientError: no leased case is shown.
        """
        loaded = self.current
        if loaded is None or not loaded.annotator:
            raise ClientError("no leased case is shown: nothing to skip")
        download = self.fetch_after_skip(loaded.case_id, loaded.annotator)
        return None if download is None else self.build_case_nodes(settle(download))

    def load_case(self, case_id: str, annotator: str) -> LoadedCase:
        """Lease and load a chosen case, releasing the lease of the one shown (network + MRML; scripts and tests)."""
        previous = self.current.case_id if self.current is not None and self.current.annotator else None
        return self.build_case_nodes(settle(self.fetch_chosen_case(case_id, annotator, release=previous)))

    def reopen_case(self, case_id: str, annotator: str) -> LoadedCase:
        """Re-open a labelled or accepted case with its label to edit (network + MRML; scripts and tests)."""
        previous = self.current.case_id if self.current is not None and self.current.annotator else None
        return self.build_case_nodes(settle(self.fetch_reopened_case(case_id, annotator, release=previous)))

    def submit(self, no_finding: bool = False) -> Case:
        """Encode and submit the current case's segmentation (network + MRML; for scripts and tests).

        Raises:
            ClientError: no case loaded. MrmlBridgeError / BackendRequestError: see the two steps.
        """
        loaded = self.current
        if loaded is None:
            raise ClientError("no case loaded: load the next case before submitting")
        data = self.encode_submission(loaded.segmentation_node, loaded.volume_node)
        case = settle(self.upload_submission(loaded.case_id, data, loaded.annotator, no_finding=no_finding))
        self.mark_submitted(loaded.case_id)
        return case
