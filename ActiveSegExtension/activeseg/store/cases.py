"""Cases: their states, their stored record, and reading them.

Case states::

    unlabeled -> queued (strong, leased to one annotator at a time) -> labeled (expert)
    unlabeled -> pseudo (weak) -> accepted | rejected | (edited and submitted ->) labeled

A lease is two columns of a case's row (holder, expiry time in Unix seconds); :func:`live_lease_holder`
is the one place that decides whether a lease still holds.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.errors import CaseStateError, UnknownCaseError
from activeseg.io.volumes import Geometry, Volume, read_geometry, read_volume
from activeseg.store.case_ids import validate_case_id
from activeseg.store.database import Database

__all__ = ["CaseState", "STATES", "TRAINED_STATES", "CaseRecord", "CaseTable", "live_lease_holder"]


class CaseState(StrEnum):
    """Where a case is in the active-learning loop. The values are what the database and the API store."""

    UNLABELED = "unlabeled"
    QUEUED = "queued"
    LABELED = "labeled"
    PSEUDO = "pseudo"
    ACCEPTED = "accepted"
    REJECTED = "rejected"

    def __repr__(self) -> str:
        """The quoted value, as the string states were shown in messages (``state 'queued'``)."""
        return repr(self.value)


STATES: tuple[str, ...] = tuple(state.value for state in CaseState)
# States whose label trains the model at full weight (expert-made or expert-approved).
TRAINED_STATES: tuple[CaseState, ...] = (CaseState.LABELED, CaseState.ACCEPTED)


def live_lease_holder(row: sqlite3.Row, now: float | None = None) -> str | None:
    """The annotator holding the case of ``row`` at ``now`` (Unix seconds, default: the current time),
    or ``None`` when nobody does or the lease has expired. ``row`` needs ``lease_holder`` and ``lease_expires``."""
    now = time.time() if now is None else now
    return row["lease_holder"] if (row["lease_expires"] or 0) > now else None


@dataclass(frozen=True)
class CaseRecord:
    """One case as stored. Paths are absolute; an expired lease reads as no lease."""

    case_id: str
    image_path: Path
    split: str
    state: CaseState
    label_path: Path | None
    label_source: str | None
    no_finding: bool
    pseudo_path: Path | None
    pseudo_model: int | None
    lease_holder: str | None
    lease_expires: float | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready view (no absolute paths: they are the server's business)."""
        return {
            "case_id": self.case_id,
            "split": self.split,
            "state": self.state.value,
            "has_label": self.label_path is not None,
            "label_source": self.label_source,
            "no_finding": self.no_finding,
            "has_pseudo": self.pseudo_path is not None,
            "pseudo_model": self.pseudo_model,
            "lease_holder": self.lease_holder,
            "lease_expires": self.lease_expires,
        }


class CaseTable:
    """Reading cases (rows of the ``cases`` table) and their image and label files."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def row(self, connection: sqlite3.Connection, case_id: str) -> sqlite3.Row:
        """A case's row inside an open transaction. Raises InvalidCaseIdError / UnknownCaseError."""
        validate_case_id(case_id)
        row = connection.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            raise UnknownCaseError(f"unknown case id {case_id!r}")
        return row

    def record(self, row: sqlite3.Row) -> CaseRecord:
        """The record of a ``cases`` row."""
        meta_dir = self.database.meta_dir
        holder = live_lease_holder(row)
        return CaseRecord(
            case_id=row["case_id"],
            image_path=self.database.root / row["image_file"],
            split=row["split"],
            state=CaseState(row["state"]),
            label_path=meta_dir / row["label_file"] if row["label_file"] else None,
            label_source=row["label_source"],
            no_finding=bool(row["no_finding"]),
            pseudo_path=meta_dir / row["pseudo_file"] if row["pseudo_file"] else None,
            pseudo_model=row["pseudo_model"],
            lease_holder=holder,
            lease_expires=row["lease_expires"] if holder is not None else None,
        )

    def case(self, case_id: str) -> CaseRecord:
        """One case. Raises InvalidCaseIdError / UnknownCaseError."""
        with self.database.connect() as connection:
            return self.record(self.row(connection, case_id))

    def cases(self, state: str | None = None, split: str | None = None) -> list[CaseRecord]:
        """All cases, optionally filtered by state and split ("train" or "val"), ordered by id."""
        query, args = "SELECT * FROM cases WHERE 1=1", []
        if state is not None:
            query += " AND state = ?"
            args.append(str(state))
        if split is not None:
            query += " AND split = ?"
            args.append(split)
        with self.database.connect() as connection:
            return [self.record(row) for row in connection.execute(query + " ORDER BY case_id", args)]

    def counts(self) -> dict[str, int]:
        """Number of cases per state, plus ``total`` and ``val``."""
        with self.database.connect() as connection:
            rows = connection.execute("SELECT state, COUNT(*) AS n FROM cases GROUP BY state").fetchall()
            val = connection.execute("SELECT COUNT(*) FROM cases WHERE split = 'val'").fetchone()[0]
        counts = {state: 0 for state in STATES}
        counts.update({row["state"]: row["n"] for row in rows})
        counts["total"] = sum(counts[s] for s in STATES)
        counts["val"] = val
        return counts

    def image_geometry(self, case_id: str) -> Geometry:
        """Geometry of a case's image (header only)."""
        return read_geometry(self.case(case_id).image_path)

    def load_image(self, case_id: str) -> Volume:
        """A case's image, float32 (k, j, i)."""
        return read_volume(self.case(case_id).image_path)

    def load_label(self, case_id: str) -> Volume:
        """A case's expert or accepted label, uint8 (k, j, i). Raises CaseStateError when it has none."""
        record = self.case(case_id)
        if record.label_path is None:
            raise CaseStateError(f"case {case_id!r} has no label (state {record.state!r})")
        return read_volume(record.label_path, dtype=np.uint8)
