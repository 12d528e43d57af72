"""The ActiveSeg module's Logic without any GUI: one section per part of the module's panel.

=====================  =========================================  ==============================
section                what                                       file
=====================  =========================================  ==============================
``session``            backend: connect, start/stop local backend  :mod:`ActiveSegLib.session`
``cases``              queue, Next, segment, Submit, uncertainty   :mod:`ActiveSegLib.cases`
``review``             pseudo-labels: overlay, Accept, Reject      :mod:`ActiveSegLib.review`
``training``           Retrain, job progress, learning curve       :mod:`ActiveSegLib.training`
=====================  =========================================  ==============================

It depends on MRML (through :mod:`ActiveSegLib.mrml`), the stdlib client and the launcher, never on Qt, so it runs
inside Slicer (``ActiveSeg.ActiveSegLogic`` adds the parameter node) and under pytest with the ``slicer-core``
wheel and a headless :class:`~ActiveSegLib.mrml.MrmlContext`. Each section's module states which of its methods
talk to the backend (worker thread) and which touch MRML (main thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from . import mrml
from .cases import CasesSection
from .review import ReviewSection
from .session import BackendSession
from .training import TrainingSection

__all__ = ["ActiveSegCoreLogic"]


class ActiveSegCoreLogic:
    """The active-learning loop on one backend, with MRML nodes for cases and labels.

    Attributes:
        session: the backend connection (:class:`~ActiveSegLib.session.BackendSession`).
        cases: queue, next case, submission, uncertainty overlay (:class:`~ActiveSegLib.cases.CasesSection`).
        review: pseudo-label review (:class:`~ActiveSegLib.review.ReviewSection`).
        training: training rounds and the learning curve (:class:`~ActiveSegLib.training.TrainingSection`).

    Args:
        context: scene and segmentations logic; ``None``: :meth:`MrmlContext.from_slicer` on first use (Slicer).
        env: environment for a local backend process (inside Slicer pass ``slicer.util.startupEnvironment()``).
        timeout_s: HTTP timeout, seconds.
        bulk_transfers: ``"process"`` inside Slicer: case files and label uploads move in helper processes, and
            the ``fetch_*`` / ``upload_submission`` calls return deferred values that
            :class:`~ActiveSegLib.worker.BackgroundTasks` steps on its poll (see :mod:`ActiveSegLib.transfer`);
            ``"thread"`` (default): they move on the calling thread.
    """

    def __init__(self, context: mrml.MrmlContext | None = None, *, env: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0, bulk_transfers: Literal["thread", "process"] = "thread") -> None:
        self.session = BackendSession(context, env=env, timeout_s=timeout_s, bulk_transfers=bulk_transfers)
        self.cases = CasesSection(self.session)
        self.review = ReviewSection(self.session, self.cases)
        self.training = TrainingSection(self.session)

    @property
    def context(self) -> mrml.MrmlContext:
        """The MRML scene and logics."""
        return self.session.context

    def has_unsaved_edits(self) -> bool:
        """Whether the case being segmented or the pseudo-label overlay was edited and not submitted. Main thread."""
        return self.cases.has_unsaved_edits() or self.review.has_unsaved_edits()

    def forget_scene(self) -> None:
        """The scene was closed: drop every reference to its (removed) nodes. Main thread."""
        self.cases.forget_scene()
        self.review.forget_scene()

    def shutdown(self) -> None:
        """Slicer closes the module: stop the local backend this logic started (any thread)."""
        self.session.stop_local_backend()
