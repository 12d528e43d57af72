"""Labels of cases: expert labels, and the pseudo-labels the model proposes and the expert reviews.

Crash safety: a label is written under a fresh unique file name (temp file + fsync + rename), then one
SQLite transaction points the case at it; only after the commit is the previous file deleted. A crash at
any point leaves the database pointing at a complete file (old or new). Files that no row references are
left-overs of interrupted writes and are removed by :func:`activeseg.store.recovery.recover`.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from pathlib import Path

import numpy as np

from activeseg.config import Config
from activeseg.errors import CaseStateError, EmptyLabelError, LabelValueError, LeaseError
from activeseg.io.atomic import atomic_write
from activeseg.io.volumes import Volume, check_same_geometry, write_volume
from activeseg.store.cases import CaseRecord, CaseState, CaseTable, live_lease_holder
from activeseg.store.commit import StoreCommit

__all__ = ["LabelStore"]

logger = logging.getLogger(__name__)

# States that may take a new pseudo-label when the pseudo set is rebuilt.
_PSEUDO_TARGET_STATES = (CaseState.UNLABELED, CaseState.QUEUED, CaseState.PSEUDO)


class LabelStore:
    """Writing labels and pseudo-labels of the cases of one datastore.

    Args:
        cases: the datastore's case table.
        config: its settings (the label set); shared with the datastore, so changes are seen.
    """

    def __init__(self, cases: CaseTable, config: Config) -> None:
        self.cases = cases
        self.database = cases.database
        self.config = config

    def validate_label(self, case_id: str, label: Volume, no_finding: bool = False) -> np.ndarray:
        """Check a label against its image and the label set; return it as uint8 (k, j, i).

        Raises:
            GeometryMismatchError: size/spacing/origin/direction differ from the image's.
            LabelValueError: values outside {0} and the configured labels, or non-integers.
            EmptyLabelError: all background while ``no_finding`` is False.
        """
        check_same_geometry(label.geometry, self.cases.image_geometry(case_id), f"label of {case_id!r}")
        values = np.unique(label.array)
        allowed = {0, *self.config.labels}
        if not np.all(np.equal(np.mod(values, 1), 0)) or not set(values.astype(np.int64).tolist()) <= allowed:
            bad = sorted(set(values.tolist()) - allowed)[:10]
            raise LabelValueError(f"label of {case_id!r} has values {bad} outside the label set {sorted(allowed)}")
        array = label.array.astype(np.uint8)
        if not array.any() and not no_finding:
            raise EmptyLabelError(
                f"label of {case_id!r} is empty; submit with no_finding=true if the case really has no finding"
            )
        return array

    def submit_label(self, case_id: str, label: Volume, no_finding: bool = False, annotator: str | None = None) -> CaseRecord:
        """Store an expert label (also "edit and submit" of a pseudo-label) atomically.

        The case becomes ``labeled``, its lease and pseudo-label are cleared. A case leased to another
        annotator is refused.

        Raises:
            As :meth:`validate_label`; LeaseError when another annotator holds the lease.
        """
        array = self.validate_label(case_id, label, no_finding)
        record = self.cases.case(case_id)
        if annotator and record.lease_holder not in (None, annotator):
            raise LeaseError(f"case {case_id!r} is leased to {record.lease_holder!r}")
        relative = self._write_label_file(case_id, array, label)
        no_finding = bool(no_finding) and not array.any()
        return self._commit_label(case_id, relative, "expert", no_finding, CaseState.LABELED, annotator)

    def _write_label_file(self, case_id: str, array: np.ndarray, label: Volume) -> str:
        """Write ``array`` with ``label``'s geometry atomically under a fresh name; return it relative to meta_dir."""
        relative = f"labels/{case_id}.{uuid.uuid4().hex[:12]}.nii.gz"
        atomic_write(self.database.meta_dir / relative, lambda path: write_volume(array, label.geometry, path))
        return relative

    def _commit_label(
        self, case_id: str, relative: str, source: str, no_finding: bool, state: CaseState, annotator: str | None,
        expect_pseudo: str | None = None,
    ) -> CaseRecord:
        """Commit a written label file to the case; remove the files it replaces after the commit.

        ``expect_pseudo``: the pseudo-label file an accept read; the commit is refused (and the written file
        removed) when the case no longer holds exactly it, so a concurrent reject or rebuild wins alone.
        """
        meta_dir = self.database.meta_dir
        try:
            with self.database.connect(write=True) as connection:
                row = self.cases.row(connection, case_id)
                holder = live_lease_holder(row)
                if (annotator or expect_pseudo) and holder not in (None, annotator):
                    raise LeaseError(f"case {case_id!r} is leased to {holder!r}")
                if expect_pseudo is not None and (row["state"] != CaseState.PSEUDO or row["pseudo_file"] != expect_pseudo):
                    raise CaseStateError(
                        f"case {case_id!r} changed meanwhile (now {row['state']!r}): its pseudo-label was reviewed or "
                        "replaced by another request; nothing was accepted"
                    )
                connection.execute(
                    "UPDATE cases SET state = ?, label_file = ?, label_source = ?, no_finding = ?, pseudo_file = NULL,"
                    " pseudo_model = NULL, lease_holder = NULL, lease_expires = NULL, updated = ? WHERE case_id = ?",
                    (state.value, relative, source, int(no_finding), time.time(), case_id),
                )
                replaced = [row["label_file"], row["pseudo_file"]]
        except BaseException:
            (meta_dir / relative).unlink(missing_ok=True)
            raise
        for old in replaced:
            if old and old != relative:
                (meta_dir / old).unlink(missing_ok=True)
        logger.info("case %s: %s label stored (%s)", case_id, source, state.value)
        from activeseg.store.dicom_writeback import on_label_committed

        on_label_committed(self.database.root, case_id)  # DICOM datastores: back to the PACS as DICOM SEG; never raises
        return self.cases.case(case_id)

    # ----------------------------------------------------------------- pseudo-labels
    def set_pseudo_labels(self, model_version: int, written: dict[str, Path]) -> None:
        """Replace the current pseudo-label set (DSAL rebuilds it every round; never accumulated).

        Args:
            model_version: the model that made them.
            written: case id -> pseudo-label file already written atomically under ``pseudo/``.

        Cases that held a pseudo-label and are not in ``written`` return to ``unlabeled``. Only training
        cases in ``unlabeled``, ``queued`` (not leased) or ``pseudo`` state take a new one; others are skipped.
        """
        meta_dir = self.database.meta_dir
        with self.database.connect(write=True) as connection:
            stale = self._apply_pseudo_labels(connection, model_version, written)
        kept = {str(p.relative_to(meta_dir)) for p in written.values()}
        for relative in stale:
            if relative and relative not in kept:
                (meta_dir / relative).unlink(missing_ok=True)

    def stage_pseudo_labels(self, commit: StoreCommit, model_version: int, written: dict[str, Path]) -> None:
        """Replace the pseudo-label set as :meth:`set_pseudo_labels` does, when ``commit`` commits (the files in
        ``written`` are recorded as the commit's new files: removed if it never commits)."""
        for path in written.values():
            commit.new_path(path)
        commit.stage(lambda connection: self._apply_pseudo_labels(connection, model_version, written))

    def _apply_pseudo_labels(self, connection: sqlite3.Connection, model_version: int, written: dict[str, Path]) -> list[str]:
        """The pseudo-label set change inside ``connection``'s transaction; returns the files it makes stale
        (relative to ``.activeseg``), to delete after the commit (new files it did not use included)."""
        meta_dir = self.database.meta_dir
        stale: list[str] = []
        for row in connection.execute(
            "SELECT case_id, pseudo_file FROM cases WHERE state = ?", (CaseState.PSEUDO.value,)
        ).fetchall():
            if row["case_id"] not in written:
                stale.append(row["pseudo_file"])
                connection.execute(
                    "UPDATE cases SET state = ?, pseudo_file = NULL, pseudo_model = NULL, updated = ?"
                    " WHERE case_id = ?",
                    (CaseState.UNLABELED.value, time.time(), row["case_id"]),
                )
        for case_id, path in written.items():
            row = self.cases.row(connection, case_id)
            leased = live_lease_holder(row) is not None
            if row["state"] not in _PSEUDO_TARGET_STATES or row["split"] != "train" or leased:
                stale.append(str(path.relative_to(meta_dir)))
                continue
            if row["pseudo_file"]:
                stale.append(row["pseudo_file"])
            connection.execute(
                "UPDATE cases SET state = ?, pseudo_file = ?, pseudo_model = ?, updated = ? WHERE case_id = ?",
                (CaseState.PSEUDO.value, str(path.relative_to(meta_dir)), model_version, time.time(), case_id),
            )
        return stale

    def accept_pseudo(self, case_id: str, annotator: str | None = None) -> CaseRecord:
        """Accept a pseudo-label: it becomes a trusted label (state ``accepted``, trained at full weight).

        Args:
            annotator: who reviews; a case leased to anyone else (or leased at all, when None) is refused.

        Raises:
            CaseStateError: the case has no pending pseudo-label, or it changed while this accept ran.
            LeaseError: another annotator holds the case's lease.
        """
        record = self.cases.case(case_id)
        if record.state != CaseState.PSEUDO or record.pseudo_path is None:
            raise CaseStateError(f"case {case_id!r} has no pseudo-label to accept (state {record.state!r})")
        if record.lease_holder not in (None, annotator):
            raise LeaseError(f"case {case_id!r} is leased to {record.lease_holder!r}")
        from activeseg.io.seg_nrrd import read_segmentation_labelmap

        expected = str(record.pseudo_path.relative_to(self.database.meta_dir))
        label = read_segmentation_labelmap(record.pseudo_path, self.config.labels)
        array = self.validate_label(case_id, label, no_finding=True)
        relative = self._write_label_file(case_id, array, label)
        return self._commit_label(
            case_id, relative, "accepted", not array.any(), CaseState.ACCEPTED, annotator, expect_pseudo=expected
        )

    def reject_pseudo(self, case_id: str, annotator: str | None = None) -> CaseRecord:
        """Reject a pseudo-label: it leaves the training set; the case is never pseudo-labelled again.

        Args:
            annotator: who reviews; a case leased to anyone else (or leased at all, when None) is refused.

        Raises:
            CaseStateError: the case has no pending pseudo-label.
            LeaseError: another annotator holds the case's lease.
        """
        with self.database.connect(write=True) as connection:
            row = self.cases.row(connection, case_id)
            holder = live_lease_holder(row)
            if holder not in (None, annotator):
                raise LeaseError(f"case {case_id!r} is leased to {holder!r}")
            if row["state"] != CaseState.PSEUDO:
                raise CaseStateError(f"case {case_id!r} has no pseudo-label to reject (state {row['state']!r})")
            connection.execute(
                "UPDATE cases SET state = ?, pseudo_file = NULL, pseudo_model = NULL, updated = ? WHERE case_id = ?",
                (CaseState.REJECTED.value, time.time(), case_id),
            )
            old = row["pseudo_file"]
            model = row["pseudo_model"]
        if old:
            (self.database.meta_dir / old).unlink(missing_ok=True)
        logger.info("case %s: pseudo-label of model v%s rejected by %s", case_id, model, annotator or "(no annotator)")
        return self.cases.case(case_id)
