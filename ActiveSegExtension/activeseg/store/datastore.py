"""The embedded datastore: a folder of images plus ``.activeseg/`` holding SQLite state and label files.

:class:`Datastore` is a thin facade: each concept lives in its own module of this package and the
facade only forwards to it.

==================  =========================================================================
``database.py``     folder layout, SQLite schema, one transaction per call
``cases.py``        :class:`CaseState`, :class:`CaseRecord`, reading cases, the one lease check
``labels.py``       expert labels and pseudo-labels (crash-safe writes, review)
``queue.py``        the strong queue and leases
``scores.py``       DSAL scores per model version
``models.py``       model versions and the active one
``commit.py``       effects of a round or job made visible in one transaction (:class:`StoreCommit`)
``recovery.py``     removing left-overs of interrupted writes and uncommitted jobs
``importing.py``    creating a datastore from image files
==================  =========================================================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.config import Config
from activeseg.io.volumes import Geometry, Volume
from activeseg.store.commit import StoreCommit
from activeseg.store.cases import STATES, TRAINED_STATES, CaseRecord, CaseState, CaseTable
from activeseg.store.database import Database
from activeseg.store.importing import import_images, import_labels
from activeseg.store.labels import LabelStore
from activeseg.store.models import ModelRecord, ModelTable
from activeseg.store.queue import CaseQueue
from activeseg.store.recovery import recover, recover_job_outputs
from activeseg.store.scores import ScoreRecord, ScoreTable

__all__ = ["STATES", "TRAINED_STATES", "CaseState", "CaseRecord", "ScoreRecord", "ModelRecord", "Datastore", "StoreCommit"]


class Datastore:
    """A datastore folder. Cheap to construct; every method opens its own short SQLite transaction,
    so one instance can be shared by threads and several processes can use the same folder.

    Attributes:
        root: the datastore folder (absolute). meta_dir: ``root/.activeseg``. db_path: the SQLite file.
        config: the settings loaded from ``config.json`` (shared by the parts below, so changes are seen).
        case_table, label_store, case_queue, score_table, model_table: the parts the methods forward to.
    """

    def __init__(self, root: Path) -> None:
        """Open an initialised datastore.

        Raises:
            DatastoreError: ``root`` has no ``.activeseg/activeseg.db``.
        """
        self.database = Database.open(root)
        self.root = self.database.root
        self.meta_dir = self.database.meta_dir
        self.db_path = self.database.db_path
        self.config = Config.load(self.meta_dir / "config.json")
        self.case_table = CaseTable(self.database)
        self.model_table = ModelTable(self.database)
        self.score_table = ScoreTable(self.database)
        self.label_store = LabelStore(self.case_table, self.config)
        self.case_queue = CaseQueue(self.case_table, self.model_table, self.config)

    @classmethod
    def create(
        cls,
        root: Path,
        images: list[tuple[str, Path]],
        config: Config,
        labels: dict[str, Path] | None = None,
        seed: int = 0,
        inspected: bool = False,
    ) -> tuple[Datastore, list[str]]:
        """Create a datastore from image files, drawing the fixed validation split once.

        Args:
            root: folder to create (may exist, but must not already be a datastore).
            images: (case id, image path) pairs. Unreadable or non-3D images are skipped and reported.
            config: settings to store (labels, val_fraction, ...).
            labels: optional case id -> label path, imported as expert labels (empty = "no finding").
            seed: seed of the validation split.
            inspected: the images passed :func:`~activeseg.store.importing.inspect_images` already (not read again).

        Returns:
            The datastore and the list of problems (one human sentence per skipped file).

        Raises:
            DatastoreError: ``root`` is already a datastore, or no image could be imported.
        """
        imported, problems = import_images(Database.at(root), images, config, seed, inspected)
        store = cls(root)
        problems += import_labels(store.label_store, labels or {}, imported)
        return store, problems

    def new_commit(self) -> StoreCommit:
        """A commit to stage a round's or job's effects on (the ``stage_*`` methods), visible together once it
        commits. See :mod:`activeseg.store.commit`."""
        return StoreCommit(self.database)

    @contextmanager
    def committing(self, commit: StoreCommit | None) -> Iterator[StoreCommit]:
        """The commit a round stages its effects on: the caller's ``commit`` (a job commits it with its status), or
        else a new one that commits when the block ends and is discarded (its new files removed) when it raises."""
        if commit is not None:
            yield commit
            return
        own = self.new_commit()
        try:
            yield own
        except BaseException:
            own.discard()
            raise
        own.commit()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value of the ``meta`` table."""
        return self.database.get_meta(key, default)

    # ----------------------------------------------------------------- cases (cases.py)
    def case(self, case_id: str) -> CaseRecord:
        """One case. Raises InvalidCaseIdError / UnknownCaseError."""
        return self.case_table.case(case_id)

    def cases(self, state: str | None = None, split: str | None = None) -> list[CaseRecord]:
        """All cases, optionally filtered by state and split, ordered by id."""
        return self.case_table.cases(state, split)

    def counts(self) -> dict[str, int]:
        """Number of cases per state, plus ``total`` and ``val``."""
        return self.case_table.counts()

    def image_geometry(self, case_id: str) -> Geometry:
        """Geometry of a case's image (header only)."""
        return self.case_table.image_geometry(case_id)

    def load_image(self, case_id: str) -> Volume:
        """A case's image, float32 (k, j, i)."""
        return self.case_table.load_image(case_id)

    def load_label(self, case_id: str) -> Volume:
        """A case's expert or accepted label, uint8 (k, j, i). Raises CaseStateError when it has none."""
        return self.case_table.load_label(case_id)

    # ----------------------------------------------------------------- labels (labels.py)
    def validate_label(self, case_id: str, label: Volume, no_finding: bool = False) -> np.ndarray:
        """Check a label against its image and the label set; return it as uint8 (k, j, i).
        See :meth:`LabelStore.validate_label`."""
        return self.label_store.validate_label(case_id, label, no_finding)

    def submit_label(self, case_id: str, label: Volume, no_finding: bool = False, annotator: str | None = None) -> CaseRecord:
        """Store an expert label atomically; the case becomes ``labeled``. See :meth:`LabelStore.submit_label`."""
        return self.label_store.submit_label(case_id, label, no_finding, annotator)

    def set_pseudo_labels(self, model_version: int, written: dict[str, Path]) -> None:
        """Replace the current pseudo-label set. See :meth:`LabelStore.set_pseudo_labels`."""
        self.label_store.set_pseudo_labels(model_version, written)

    def stage_pseudo_labels(self, commit: StoreCommit, model_version: int, written: dict[str, Path]) -> None:
        """Replace the pseudo-label set when ``commit`` commits. See :meth:`LabelStore.stage_pseudo_labels`."""
        self.label_store.stage_pseudo_labels(commit, model_version, written)

    def accept_pseudo(self, case_id: str, annotator: str | None = None) -> CaseRecord:
        """Accept a pending pseudo-label (state ``accepted``). Raises CaseStateError when there is none,
        LeaseError when someone other than ``annotator`` holds the lease. See :meth:`LabelStore.accept_pseudo`."""
        return self.label_store.accept_pseudo(case_id, annotator)

    def reject_pseudo(self, case_id: str, annotator: str | None = None) -> CaseRecord:
        """Reject a pending pseudo-label (state ``rejected``). Raises CaseStateError when there is none,
        LeaseError when someone other than ``annotator`` holds the lease."""
        return self.label_store.reject_pseudo(case_id, annotator)

    # ----------------------------------------------------------------- queue and leases (queue.py)
    def set_queue(self, case_ids: list[str], model_version: int | None = None) -> None:
        """Make ``case_ids`` the strong queue, chosen by ``model_version``'s ranking. See :meth:`CaseQueue.set_queue`."""
        self.case_queue.set_queue(case_ids, model_version)

    def stage_queue(self, commit: StoreCommit, case_ids: list[str], model_version: int, prediction_set: str) -> None:
        """Set the queue and switch to prediction set ``prediction_set`` when ``commit`` commits.
        See :meth:`CaseQueue.stage_queue`."""
        self.case_queue.stage_queue(commit, case_ids, model_version, prediction_set)

    def queue_model(self) -> int | None:
        """The model version whose ranking chose the queue (``None`` before any). See :meth:`CaseQueue.queue_model`."""
        return self.case_queue.queue_model()

    def queue_stale(self) -> bool:
        """Whether the queue was chosen by another model than the active one. See :meth:`CaseQueue.queue_stale`."""
        return self.case_queue.queue_stale()

    def queue(self) -> list[tuple[CaseRecord, ScoreRecord | None]]:
        """Queued cases, most uncertain first. See :meth:`CaseQueue.queue`."""
        return self.case_queue.queue()

    def lease_next(self, annotator: str) -> CaseRecord | None:
        """Lease the most uncertain queued case nobody holds (``None`` when none). See :meth:`CaseQueue.lease_next`."""
        return self.case_queue.lease_next(annotator)

    def skip(self, case_id: str, annotator: str) -> CaseRecord:
        """Release ``annotator``'s lease and serve them every other case first. See :meth:`CaseQueue.skip`."""
        return self.case_queue.skip(case_id, annotator)

    def prediction_path(self, case_id: str, model_version: int) -> Path:
        """Where ranking keeps a model version's prediction of a queued case (a ``.seg.nrrd``)."""
        return self.case_queue.prediction_path(case_id, model_version)

    def prediction_file(self, case_id: str, model_version: int, prediction_set: str | None) -> Path:
        """A prediction's file in a given prediction set. See :meth:`CaseQueue.prediction_file`."""
        return self.case_queue.prediction_file(case_id, model_version, prediction_set)

    def new_prediction_set(self) -> str:
        """A fresh prediction-set name. See :meth:`CaseQueue.new_prediction_set`."""
        return self.case_queue.new_prediction_set()

    def lease(self, case_id: str, annotator: str, reopen: bool = False) -> CaseRecord:
        """Lease one case to ``annotator`` for ``config.lease_seconds`` (``reopen``: also a labelled one, to edit
        its label). Raises LeaseError / CaseStateError. See :meth:`CaseQueue.lease`."""
        return self.case_queue.lease(case_id, annotator, reopen)

    def release(self, case_id: str, annotator: str) -> CaseRecord:
        """Give a lease back. Raises LeaseError if someone else holds it."""
        return self.case_queue.release(case_id, annotator)

    # ----------------------------------------------------------------- scores (scores.py)
    def store_scores(self, scores: list[ScoreRecord]) -> None:
        """Insert or replace scores (one model version's ranking)."""
        self.score_table.store_scores(scores)

    def stage_scores(self, commit: StoreCommit, scores: list[ScoreRecord]) -> None:
        """Insert or replace scores when ``commit`` commits."""
        self.score_table.stage_scores(commit, scores)

    def scores(self, model_version: int | None = None) -> dict[str, ScoreRecord]:
        """Scores under ``model_version`` (default: the active one), by case id."""
        return self.score_table.scores(self.active_version() if model_version is None else model_version)

    # ----------------------------------------------------------------- models (models.py)
    def add_model(self, weights_file: Path, metrics: dict[str, Any], parent: int | None, activate: bool = True) -> ModelRecord:
        """Register a new model version from a finished weights file. See :meth:`ModelTable.add_model`."""
        return self.model_table.add_model(weights_file, metrics, parent, activate)

    def stage_model(
        self, commit: StoreCommit, weights_file: Path, metrics: dict[str, Any], parent: int | None, activate: bool = True,
    ) -> ModelRecord:
        """Write a new version's folder now; register (and activate) it when ``commit`` commits.
        See :meth:`ModelTable.stage_model`."""
        return self.model_table.stage_model(commit, weights_file, metrics, parent, activate)

    def models(self) -> list[ModelRecord]:
        """All versions, oldest first."""
        return self.model_table.models()

    def model(self, version: int) -> ModelRecord:
        """One version. Raises ModelVersionError if unknown."""
        return self.model_table.model(version)

    def active_version(self) -> int | None:
        """The active model version, or ``None`` before the first training round."""
        return self.model_table.active_version()

    def activate(self, version: int) -> ModelRecord:
        """Make an existing version active (rollback or roll forward). Raises ModelVersionError."""
        return self.model_table.activate(version)

    # ----------------------------------------------------------------- recovery (recovery.py)
    def recover(self, min_age_seconds: float = 0.0) -> list[Path]:
        """Remove left-overs of interrupted writes; return the removed paths. See :func:`recovery.recover`."""
        return recover(self.database, min_age_seconds)

    def recover_job_outputs(self) -> list[Path]:
        """Remove what a dead job wrote and never committed (only while no job runs).
        See :func:`recovery.recover_job_outputs`."""
        return recover_job_outputs(self.database)
