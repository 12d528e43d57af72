"""The strong queue and leases: which cases wait for the radiologist, in which order, and who holds which.

Whether a lease still holds is decided in one place, :func:`activeseg.store.cases.live_lease_holder`
(a lease is part of a case's row, and every case read needs it).

A ranking's queue and the predictions of its queued cases switch together: the predictions are written as a new
*prediction set* (fresh file names), and one transaction sets the queue and names that set; the previous set's
files are deleted only after it (see :class:`~activeseg.store.commit.StoreCommit`).
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from pathlib import Path

from activeseg.config import Config
from activeseg.errors import CaseStateError, LeaseError
from activeseg.io.atomic import TEMP_MARKER
from activeseg.store.case_ids import validate_case_id
from activeseg.store.cases import TRAINED_STATES, CaseRecord, CaseState, CaseTable, live_lease_holder
from activeseg.store.commit import StoreCommit
from activeseg.store.database import SKIPS_TABLE, has_table
from activeseg.store.models import ModelTable
from activeseg.store.scores import ScoreRecord, score_from_row

__all__ = ["CaseQueue", "PREDICTION_SET_KEY", "PREDICTIONS_DIR", "prediction_set_of"]

# Meta-table key of the model version whose ranking set the queue.
_QUEUE_MODEL_KEY = "queue_model"
# Meta-table key of the prediction set the queue's predictions belong to (see CaseQueue.prediction_file).
PREDICTION_SET_KEY = "prediction_set"
PREDICTIONS_DIR = "predictions"
_LEGACY_VERSION_TAG = re.compile(r"v[0-9]+")
# States a ranking may put into the strong queue.
_QUEUEABLE_STATES = (CaseState.UNLABELED, CaseState.QUEUED, CaseState.REJECTED)


def prediction_set_of(file_name: str) -> str | None:
    """The prediction set a file of ``predictions/`` belongs to; ``None`` for one written before sets existed."""
    tag = file_name.removesuffix(".seg.nrrd").rsplit(".", 1)[-1]
    return None if _LEGACY_VERSION_TAG.fullmatch(tag) else tag


class CaseQueue:
    """The strong queue and the leases of one datastore.

    Args:
        cases: the datastore's case table.
        models: its model versions (the queue is ordered by the active model's scores).
        config: its settings (``lease_seconds``); shared with the datastore, so changes are seen.
    """

    def __init__(self, cases: CaseTable, models: ModelTable, config: Config) -> None:
        self.cases = cases
        self.models = models
        self.database = cases.database
        self.config = config

    def set_queue(self, case_ids: list[str], model_version: int | None = None) -> None:
        """Make ``case_ids`` the strong queue: they become ``queued``; earlier queued cases not in it and
        not leased return to ``unlabeled``. Only ``unlabeled``, ``queued`` and ``rejected`` cases can be queued.

        Args:
            case_ids: the new queue.
            model_version: the version whose ranking chose them (recorded for :meth:`queue_model`).
        """
        with self.database.connect(write=True) as connection:
            self._apply_queue(connection, case_ids, model_version)

    def stage_queue(self, commit: StoreCommit, case_ids: list[str], model_version: int, prediction_set: str) -> None:
        """Set the queue as :meth:`set_queue` does, and switch to the prediction set ``prediction_set`` (its files
        already written, see :meth:`prediction_file`), when ``commit`` commits; the replaced set's files are
        deleted after the commit."""
        commit.stage(lambda connection: self._apply_queue(connection, case_ids, model_version, prediction_set))

    def _apply_queue(
        self, connection: sqlite3.Connection, case_ids: list[str], model_version: int | None,
        prediction_set: str | None = None,
    ) -> list[str]:
        """The queue change inside ``connection``'s transaction; returns the replaced prediction files."""
        wanted = set(case_ids)
        placeholders = ", ".join("?" for _ in _QUEUEABLE_STATES)
        now = time.time()
        if model_version is not None:
            connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_QUEUE_MODEL_KEY, str(int(model_version))))
        for row in connection.execute(
            "SELECT case_id, lease_holder, lease_expires FROM cases WHERE state = ?", (CaseState.QUEUED.value,)
        ).fetchall():
            if row["case_id"] not in wanted and live_lease_holder(row, now) is None:
                connection.execute(
                    "UPDATE cases SET state = ?, lease_holder = NULL, lease_expires = NULL, updated = ?"
                    " WHERE case_id = ?",
                    (CaseState.UNLABELED.value, now, row["case_id"]),
                )
        for case_id in case_ids:
            connection.execute(
                f"UPDATE cases SET state = ?, updated = ? WHERE case_id = ? AND state IN ({placeholders})",
                (CaseState.QUEUED.value, now, case_id, *(state.value for state in _QUEUEABLE_STATES)),
            )
        if prediction_set is None:
            return []
        row = connection.execute("SELECT value FROM meta WHERE key = ?", (PREDICTION_SET_KEY,)).fetchone()
        previous = row["value"] if row else None
        connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (PREDICTION_SET_KEY, prediction_set))
        folder = self.database.meta_dir / PREDICTIONS_DIR
        if not folder.is_dir():
            return []
        return [f"{PREDICTIONS_DIR}/{path.name}" for path in folder.iterdir()
                if not path.name.startswith(TEMP_MARKER) and prediction_set_of(path.name) == previous]

    def queue_model(self) -> int | None:
        """The model version whose ranking chose the queued cases; ``None`` before any ranking. For a datastore
        ranked before this was recorded: the newest version that has scores."""
        value = self.database.get_meta(_QUEUE_MODEL_KEY)
        if value is not None:
            return int(value)
        with self.database.connect() as connection:
            newest = connection.execute("SELECT MAX(model_version) FROM scores").fetchone()[0]
        return int(newest) if newest is not None else None

    def queue_stale(self) -> bool:
        """Whether a model is active but the queue was not chosen by it (after a rollback, or after a training
        round without ranking): its members are another model's picks and the active model may have no scores or
        predictions for them. A ranking job with the active model refreshes it."""
        active = self.models.active_version()
        return active is not None and self.queue_model() != active

    def queue(self) -> list[tuple[CaseRecord, ScoreRecord | None]]:
        """Queued cases, most uncertain first: unlabelled validation cases first (validation Dice needs
        them), then strong cases by ascending M-DSC under the active model, larger predicted foreground
        first among equal M-DSC, then by case id."""
        active = self.models.active_version()
        with self.database.connect() as connection:
            rows = connection.execute(
                "SELECT c.*, s.mdsc, s.confidence, s.foreground_ml, s.route FROM cases c"
                " LEFT JOIN scores s ON s.case_id = c.case_id AND s.model_version = ?"
                " WHERE c.state = ? ORDER BY (c.split = 'val') DESC, s.mdsc IS NULL, s.mdsc ASC,"
                " s.foreground_ml DESC, c.case_id",
                (active if active is not None else -1, CaseState.QUEUED.value),
            ).fetchall()
        return [(self.cases.record(row), score_from_row(row, active)) for row in rows]

    def lease_next(self, annotator: str) -> CaseRecord | None:
        """Lease the most uncertain queued case that nobody holds; ``None`` when nothing is left.

        Cold start: before the first model exists nothing has been ranked, so the queue is empty; then
        unlabelled cases are served, training split first (a first round needs them), in id order. Each
        lease is one transaction under SQLite's write lock, so two annotators never get the same case.
        Cases ``annotator`` skipped (:meth:`skip`) come after all others, the longest-skipped first.
        """
        candidates = [record for record, _ in self.queue()]
        if not candidates and self.models.active_version() is None:
            unlabeled = self.cases.cases(state=CaseState.UNLABELED)
            candidates = sorted(unlabeled, key=lambda r: (r.split != "train", r.case_id))
        skipped = self.skipped(annotator)
        if skipped:  # stable sort: the queue's order within the unskipped and by skip time within the skipped
            candidates.sort(key=lambda r: (r.case_id in skipped, skipped.get(r.case_id, 0.0)))
        for record in candidates:
            if record.lease_holder in (None, annotator):
                try:
                    return self.lease(record.case_id, annotator)
                except (LeaseError, CaseStateError):  # taken or labelled meanwhile: try the next one
                    continue
        return None

    def skip(self, case_id: str, annotator: str) -> CaseRecord:
        """``annotator`` skips a case: their lease (if any) is released and :meth:`lease_next` serves them every
        other case before this one again. The case stays in the queue for everyone else.

        Raises:
            LeaseError: another annotator holds it (or no annotator was named).
            CaseStateError: the case is already labelled (nothing to skip).
        """
        if not annotator:
            raise LeaseError("an annotator name is required to skip a case")
        with self.database.connect(write=True) as connection:
            row = self.cases.row(connection, case_id)
            holder = live_lease_holder(row)
            if holder not in (None, annotator):
                raise LeaseError(f"case {case_id!r} is leased to {holder!r}, not {annotator!r}")
            if row["state"] in TRAINED_STATES:
                raise CaseStateError(f"case {case_id!r} is already {row['state']}: nothing to skip")
            now = time.time()
            connection.execute(
                "UPDATE cases SET lease_holder = NULL, lease_expires = NULL, updated = ? WHERE case_id = ?", (now, case_id))
            if not has_table(connection, "skips"):  # a datastore created before Skip existed
                connection.execute(SKIPS_TABLE)  # one statement inside this transaction (executescript would commit)
            connection.execute("INSERT OR REPLACE INTO skips (case_id, annotator, skipped) VALUES (?, ?, ?)",
                               (case_id, annotator, now))
        return self.cases.case(case_id)

    def skipped(self, annotator: str) -> dict[str, float]:
        """Case id -> when ``annotator`` last skipped it (Unix seconds)."""
        with self.database.connect() as connection:
            if not has_table(connection, "skips"):
                return {}
            rows = connection.execute("SELECT case_id, skipped FROM skips WHERE annotator = ?", (annotator,)).fetchall()
        return {row["case_id"]: float(row["skipped"]) for row in rows}

    def prediction_path(self, case_id: str, model_version: int) -> Path:
        """Where the committed ranking keeps model ``model_version``'s prediction of a queued case (a ``.seg.nrrd``),
        served to the annotator as a starting segmentation."""
        return self.prediction_file(case_id, model_version, self.database.get_meta(PREDICTION_SET_KEY))

    def prediction_file(self, case_id: str, model_version: int, prediction_set: str | None) -> Path:
        """A prediction's file in set ``prediction_set``: ``predictions/<case>.v<version>.<set>.seg.nrrd``
        (``<case>.v<version>.seg.nrrd`` without a set: a datastore last ranked before sets existed)."""
        tag = f".{prediction_set}" if prediction_set else ""
        return self.database.meta_dir / PREDICTIONS_DIR / f"{validate_case_id(case_id)}.v{int(model_version)}{tag}.seg.nrrd"

    @staticmethod
    def new_prediction_set() -> str:
        """A fresh prediction-set name: a ranking writes its predictions under it before its commit switches to it."""
        return uuid.uuid4().hex[:12]

    def lease(self, case_id: str, annotator: str, reopen: bool = False) -> CaseRecord:
        """Lease one case to ``annotator`` for ``config.lease_seconds`` (renews an own lease).

        Args:
            reopen: also lease a labelled or accepted case, to edit its label (the submission replaces it).
                Without it a labelled case is refused, so a stale queue entry never re-opens one by mistake.

        Raises:
            LeaseError: another annotator holds it. CaseStateError: the case is already labelled (and not ``reopen``).
        """
        if not annotator:
            raise LeaseError("an annotator name is required to lease a case")
        with self.database.connect(write=True) as connection:
            row = self.cases.row(connection, case_id)
            now = time.time()
            holder = live_lease_holder(row, now)
            if holder not in (None, annotator):
                raise LeaseError(f"case {case_id!r} is leased to {holder!r} until {row['lease_expires']:.0f}")
            if row["state"] in TRAINED_STATES and not reopen:
                raise CaseStateError(f"case {case_id!r} is already {row['state']} (re-open it to edit its label)")
            connection.execute(
                "UPDATE cases SET lease_holder = ?, lease_expires = ?, updated = ? WHERE case_id = ?",
                (annotator, now + self.config.lease_seconds, now, case_id),
            )
        return self.cases.case(case_id)

    def release(self, case_id: str, annotator: str) -> CaseRecord:
        """Give a lease back. Raises LeaseError if someone else holds it."""
        with self.database.connect(write=True) as connection:
            row = self.cases.row(connection, case_id)
            holder = live_lease_holder(row)
            if holder not in (None, annotator):
                raise LeaseError(f"case {case_id!r} is leased to {holder!r}, not {annotator!r}")
            connection.execute(
                "UPDATE cases SET lease_holder = NULL, lease_expires = NULL, updated = ? WHERE case_id = ?",
                (time.time(), case_id),
            )
        return self.cases.case(case_id)
