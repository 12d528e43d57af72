"""The Logic's "Review" section: pseudo-labels awaiting review, shown as an overlay; accept or reject them.

Threading: ``pending``, ``fetch_pseudo``, ``accept`` and ``reject`` talk to the backend (worker thread;
``fetch_pseudo`` may return its download still in transit, see :mod:`ActiveSegLib.cases`);
``build_pseudo_nodes``, ``has_unsaved_edits`` and ``forget_scene`` touch MRML (main thread); ``load_pseudo_label``
does both (scripts and tests). An edited overlay is never replaced silently: the widget asks first when
:meth:`ReviewSection.has_unsaved_edits` (edit-and-submit turns it into an expert label through Submit).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from . import mrml
from .cases import CaseDownload, CasesSection, EditWatch, LoadedCase, QueueRow, ReviewRow
from .client import Download
from .responses import Case
from .session import BackendSession
from .worker import settle

__all__ = ["ReviewSection"]

logger = logging.getLogger(__name__)

#: Fill opacity of a pseudo-label overlay in slice views (see the image through it).
OVERLAY_FILL_OPACITY = 0.35


class ReviewSection:
    """Pseudo-label review.

    Args:
        session: the shared backend session.
        cases: the Segment section (a pseudo-label of the case being segmented reuses its volume).
    """

    def __init__(self, session: BackendSession, cases: CasesSection) -> None:
        self.session = session
        self.cases = cases
        self.review: LoadedCase | None = None

    def pending(self) -> list[QueueRow]:
        """Cases with a pseudo-label awaiting review (state ``pseudo``). Network; worker thread."""
        return [QueueRow(case) for case in self.session.client.cases(state="pseudo").cases]

    def rows(self) -> list[ReviewRow]:
        """The review table: pending pseudo-labels first, then accepted ones (re-openable to edit), each with the
        model's M-DSC, confidence and predicted foreground volume. Network; worker thread."""
        client = self.session.client
        return [ReviewRow(case) for state in ("pseudo", "accepted") for case in client.cases(state=state).cases]

    def class_volumes_ml(self) -> dict[str, float]:
        """Volume of each class in the overlay shown (:attr:`review`), in millilitres, from its labelmap on the
        volume's grid (voxel volume = product of the spacing in mm / 1000). MRML; main thread.

        Raises:
            ValueError: no pseudo-label is shown.
        """
        if self.review is None:
            raise ValueError("no pseudo-label is shown")
        labels = self.session.require_labels()
        array = mrml.labelmap_array_from_segmentation(self.session.context, self.review.segmentation_node,
                                                      self.review.volume_node, labels)
        voxel_ml = float(np.prod(self.review.volume_node.GetSpacing())) / 1000.0
        counts = np.bincount(array.ravel(), minlength=max(labels) + 1)
        return {name: float(counts[value]) * voxel_ml for value, name in sorted(labels.items())}

    def summary(self, case: Case) -> str:
        """One line for the review panel: volume per class (ml) of the overlay shown and the model's confidence.
        MRML; main thread."""
        volumes = ", ".join(f"{name} {ml:.1f} ml" for name, ml in self.class_volumes_ml().items())
        confidence = "unknown" if case.confidence is None else f"{case.confidence:.2f}"
        mdsc = "" if case.mdsc is None else f", M-DSC {case.mdsc:.3f}"
        return f"{case.case_id}: {volumes}; model confidence {confidence}{mdsc}"

    def fetch_pseudo(self, case_id: str, shown_case_id: str | None = None) -> CaseDownload:
        """Download a pseudo-label and (unless ``shown_case_id`` is this case) its image. Network; worker thread.

        Args:
            case_id: the case to review.
            shown_case_id: the case whose volume is already in the scene (read on the main thread beforehand).
        """
        session = self.session
        case = session.client.case(case_id)
        image = Download(b"", "") if shown_case_id == case_id else session.download("image", case_id)
        return CaseDownload(case=case, annotator="", image=image, start=session.download("pseudo", case_id),
                            start_kind="pseudo")

    def has_unsaved_edits(self) -> bool:
        """Whether the overlay shown was edited (and not submitted). MRML only; main thread."""
        return self.review is not None and self.review.edited

    def build_pseudo_nodes(self, download: CaseDownload) -> LoadedCase:
        """Show a pseudo-label as a segmentation overlaid on its volume, replacing the previous overlay.
        MRML; main thread.

        The overlay is a separate node named ``<case> pseudo-label`` (the expert label being edited, if any,
        stays untouched). It can be edited and then submitted as an expert label (edit-and-submit).

        Raises:
            MrmlBridgeError: unreadable bytes. ValueError: no image was downloaded and the case is not shown.
        """
        ctx = self.session.context
        case_id = download.case_id
        if not download.settled:
            raise ValueError(f"the download of {case_id!r} has not arrived yet")
        if download.start is None:
            raise ValueError(f"no pseudo-label was downloaded for {case_id!r}")
        if self.review is not None:
            self.review.remove_nodes(ctx.scene)
            self.review = None
        current = self.cases.current
        if download.image.data:
            volume = mrml.volume_node_from_bytes(ctx, download.image.data, download.image.suffix or ".nii.gz", case_id)
            volume.SetAttribute(mrml.ROLE_ATTRIBUTE, "image")
            volume.SetAttribute(mrml.CASE_ATTRIBUTE, case_id)
            owns = True
        elif current is not None and current.case_id == case_id and ctx.scene.IsNodePresent(current.volume_node):
            volume, owns = current.volume_node, False
        else:
            raise ValueError(f"case {case_id!r} is not shown; download its image with the pseudo-label")
        segmentation = mrml.segmentation_node_from_bytes(ctx, download.start.data, f"{case_id} pseudo-label", volume)
        segmentation.SetAttribute(mrml.ROLE_ATTRIBUTE, "pseudo")
        segmentation.SetAttribute(mrml.CASE_ATTRIBUTE, case_id)
        display = segmentation.GetDisplayNode()
        if display is not None:
            display.SetOpacity2DFill(OVERLAY_FILL_OPACITY)
        self.review = LoadedCase(case_id, "", volume, segmentation, "pseudo", owns_volume=owns,
                                 watch=EditWatch(segmentation))
        return self.review

    def load_pseudo_label(self, case_id: str) -> Any:
        """Load a case's pseudo-label as an overlaid segmentation node (network + MRML; scripts and tests).

        Returns:
            the ``vtkMRMLSegmentationNode`` (its volume is :attr:`review`'s ``volume_node``).
        """
        shown = self.cases.current.case_id if self.cases.current is not None else None
        return self.build_pseudo_nodes(settle(self.fetch_pseudo(case_id, shown))).segmentation_node

    def accept(self, case_id: str) -> Case:
        """Accept a pseudo-label as the case's label (state ``accepted``). Network; worker thread."""
        return self.session.client.accept_pseudo(case_id)

    def reject(self, case_id: str) -> Case:
        """Reject a pseudo-label (state ``rejected``; not pseudo-labelled again). Network; worker thread."""
        return self.session.client.reject_pseudo(case_id)

    def forget_scene(self) -> None:
        """The scene was closed: drop references to its removed nodes. Main thread."""
        if self.review is not None and self.review.watch is not None:
            self.review.watch.close()
        self.review = None
