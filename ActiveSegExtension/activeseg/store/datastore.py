"""The embedded datastore: a folder of images plus ``.activeseg/`` holding SQLite state and label files.

Layout::

    STORE/images/<case_id>.nii.gz|.nrrd     the volumes (copied in by ``init``)
    STORE/.activeseg/activeseg.db            SQLite: cases, scores, models, meta (and jobs, see jobs.py)
    STORE/.activeseg/config.json             the engine's settings (config.Config)
    STORE/.activeseg/labels/                 expert and accepted labels, uint8 NIfTI, image geometry
    STORE/.activeseg/pseudo/                 current pseudo-labels as Slicer ``.seg.nrrd``
    STORE/.activeseg/predictions/            the ranking model's prediction of each queued case (derived, disposable)
    STORE/.activeseg/models/vNNNN/           one folder per model version (weights + metrics), never overwritten

Crash safety: a label is written under a fresh unique file name (temp file + fsync + rename), then one
SQLite transaction points the case at it; only after the commit is the previous file deleted. A crash at
any point leaves the database pointing at a complete file (old or new). Files that no row references are
left-overs of interrupted writes and are removed by :meth:`Datastore.recover`.

Case states (DESIGN.md)::

    unlabeled -> queued (strong, leased to one annotator at a time) -> labeled (expert)
    unlabeled -> pseudo (weak) -> accepted | rejected | (edited and submitted ->) labeled
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sqlite3
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.io.atomic import TEMP_MARKER, atomic_write
from activeseg.store.case_ids import validate_case_id
from activeseg.config import Config
from activeseg.errors import (
    ActiveSegError,
    CaseStateError,
    DatastoreError,
    EmptyLabelError,
    LabelValueError,
    LeaseError,
    ModelVersionError,
    UnknownCaseError,
)
from activeseg.io.volumes import Geometry, Volume, check_same_geometry, read_geometry, read_volume, strip_image_suffix, write_volume
from activeseg.store.sqlite_tx import transaction

__all__ = ["STATES", "TRAINED_STATES", "CaseRecord", "ScoreRecord", "ModelRecord", "Datastore"]

logger = logging.getLogger(__name__)

STATES = ("unlabeled", "queued", "labeled", "pseudo", "accepted", "rejected")
# States whose label trains the model at full weight (expert-made or expert-approved).
TRAINED_STATES = ("labeled", "accepted")
META_DIR = ".activeseg"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cases (
    case_id       TEXT PRIMARY KEY,
    image_file    TEXT NOT NULL,
    split         TEXT NOT NULL CHECK (split IN ('train', 'val')),
    state         TEXT NOT NULL,
    label_file    TEXT,
    label_source  TEXT,
    no_finding    INTEGER NOT NULL DEFAULT 0,
    pseudo_file   TEXT,
    pseudo_model  INTEGER,
    lease_holder  TEXT,
    lease_expires REAL,
    updated       REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    version  INTEGER PRIMARY KEY,
    parent   INTEGER,
    folder   TEXT NOT NULL,
    created  REAL NOT NULL,
    metrics  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS scores (
    model_version INTEGER NOT NULL,
    case_id       TEXT NOT NULL,
    mdsc          REAL NOT NULL,
    confidence    REAL NOT NULL,
    foreground_ml REAL NOT NULL,
    route         TEXT NOT NULL,
    PRIMARY KEY (model_version, case_id)
);
"""


@dataclass(frozen=True)
class CaseRecord:
    """One case as stored. Paths are absolute."""

    case_id: str
    image_path: Path
    split: str
    state: str
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
            "state": self.state,
            "has_label": self.label_path is not None,
            "label_source": self.label_source,
            "no_finding": self.no_finding,
            "has_pseudo": self.pseudo_path is not None,
            "pseudo_model": self.pseudo_model,
            "lease_holder": self.lease_holder,
            "lease_expires": self.lease_expires,
        }


@dataclass(frozen=True)
class ScoreRecord:
    """DSAL scores of one case under one model version.

    Attributes:
        mdsc: mean Dice between the main head and each auxiliary head, [0, 1]; low = uncertain.
        confidence: mean over voxels of the max softmax probability, [1/C, 1].
        foreground_ml: predicted foreground volume, millilitres.
        route: "strong" (queued for the radiologist), "weak" (pseudo-labelled) or "none".
    """

    case_id: str
    model_version: int
    mdsc: float
    confidence: float
    foreground_ml: float
    route: str


@dataclass(frozen=True)
class ModelRecord:
    """One model version: its folder (weights, metrics) and metrics dictionary."""

    version: int
    parent: int | None
    folder: Path
    created: float
    metrics: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        """The state-dict file."""
        return self.folder / "model.pt"


class Datastore:
    """A datastore folder. Cheap to construct; every method opens its own short SQLite transaction,
    so one instance can be shared by threads and several processes can use the same folder."""

    def __init__(self, root: Path) -> None:
        """Open an initialised datastore.

        Raises:
            DatastoreError: ``root`` has no ``.activeseg/activeseg.db``.
        """
        self.root = Path(root).resolve()
        self.meta_dir = self.root / META_DIR
        self.db_path = self.meta_dir / "activeseg.db"
        if not self.db_path.is_file():
            raise DatastoreError(f"{self.root} is not an ActiveSeg datastore (run 'activeseg init {self.root} --from DIR')")
        self.config = Config.load(self.meta_dir / "config.json")

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        root: Path,
        images: list[tuple[str, Path]],
        config: Config,
        labels: dict[str, Path] | None = None,
        seed: int = 0,
    ) -> tuple[Datastore, list[str]]:
        """Create a datastore from image files, drawing the fixed validation split once.

        Args:
            root: folder to create (may exist, but must not already be a datastore).
            images: (case id, image path) pairs. Unreadable or non-3D images are skipped and reported.
            config: settings to store (labels, val_fraction, ...).
            labels: optional case id -> label path, imported as expert labels (empty = "no finding").
            seed: seed of the validation split.

        Returns:
            The datastore and the list of problems (one human sentence per skipped file).

        Raises:
            DatastoreError: ``root`` is already a datastore, or no image could be imported.
        """
        root = Path(root).resolve()
        meta_dir = root / META_DIR
        if (meta_dir / "activeseg.db").exists():
            raise DatastoreError(f"{root} is already an ActiveSeg datastore")
        config.validate()
        problems: list[str] = []
        accepted: list[tuple[str, Path]] = []
        seen: set[str] = set()
        for case_id, path in images:
            try:
                validate_case_id(case_id)
                if case_id in seen:
                    raise DatastoreError(f"duplicate case id {case_id!r}")
                read_volume(path)  # full decode: catches truncated data, not only bad headers
            except ActiveSegError as exc:  # unreadable, not 3D, bad or duplicate id
                problems.append(f"skipped {path.name}: {exc}")
                logger.warning("skipped %s: %s", path, exc)
                continue
            seen.add(case_id)
            accepted.append((case_id, path))
        if not accepted:
            raise DatastoreError(f"no readable 3D image to import ({len(problems)} skipped)")

        (root / "images").mkdir(parents=True, exist_ok=True)
        for sub in ("labels", "pseudo", "models", "predictions"):
            (meta_dir / sub).mkdir(parents=True, exist_ok=True)
        config.save(meta_dir / "config.json")
        connection = sqlite3.connect(meta_dir / "activeseg.db")
        try:
            connection.executescript(_SCHEMA)
            connection.execute("PRAGMA journal_mode=WAL")
            ids = sorted(case_id for case_id, _ in accepted)
            n_val = int(round(config.val_fraction * len(ids)))
            if config.val_fraction > 0 and n_val == 0 and len(ids) >= 5:
                n_val = 1
            val_ids = set(random.Random(seed).sample(ids, n_val))
            now = time.time()
            with connection:
                for case_id, path in accepted:
                    suffix = path.name[len(strip_image_suffix(path.name) or path.stem) :]
                    relative = f"images/{case_id}{suffix}"
                    shutil.copyfile(path, root / relative)
                    split = "val" if case_id in val_ids else "train"
                    connection.execute(
                        "INSERT INTO cases (case_id, image_file, split, state, updated) VALUES (?, ?, ?, 'unlabeled', ?)",
                        (case_id, relative, split, now),
                    )
                connection.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                connection.execute("INSERT INTO meta VALUES ('split_seed', ?)", (str(seed),))
        finally:
            connection.close()
        store = cls(root)
        for case_id, label_path in (labels or {}).items():
            if case_id not in seen:
                continue
            try:
                label = read_volume(label_path, dtype=np.uint8)
                store.submit_label(case_id, label, no_finding=not label.array.any(), annotator="import")
            except Exception as exc:  # noqa: BLE001 - any bad label is reported and skipped, the rest go on
                problems.append(f"label of {case_id} not imported: {exc}")
                logger.warning("label of %s not imported: %s", case_id, exc)
        return store, problems

    # ----------------------------------------------------------------- plumbing
    def _connect(self, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction on the datastore's database (see :func:`activeseg.store.sqlite_tx.transaction`)."""
        return transaction(self.db_path, write)

    def _row(self, connection: sqlite3.Connection, case_id: str) -> sqlite3.Row:
        validate_case_id(case_id)
        row = connection.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            raise UnknownCaseError(f"unknown case id {case_id!r}")
        return row

    def _record(self, row: sqlite3.Row) -> CaseRecord:
        return CaseRecord(
            case_id=row["case_id"],
            image_path=self.root / row["image_file"],
            split=row["split"],
            state=row["state"],
            label_path=self.meta_dir / row["label_file"] if row["label_file"] else None,
            label_source=row["label_source"],
            no_finding=bool(row["no_finding"]),
            pseudo_path=self.meta_dir / row["pseudo_file"] if row["pseudo_file"] else None,
            pseudo_model=row["pseudo_model"],
            lease_holder=row["lease_holder"] if (row["lease_expires"] or 0) > time.time() else None,
            lease_expires=row["lease_expires"] if (row["lease_expires"] or 0) > time.time() else None,
        )

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value of the ``meta`` table."""
        with self._connect() as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    # ----------------------------------------------------------------- cases
    def case(self, case_id: str) -> CaseRecord:
        """One case. Raises InvalidCaseIdError / UnknownCaseError."""
        with self._connect() as connection:
            return self._record(self._row(connection, case_id))

    def cases(self, state: str | None = None, split: str | None = None) -> list[CaseRecord]:
        """All cases, optionally filtered, ordered by id."""
        query, args = "SELECT * FROM cases WHERE 1=1", []
        if state is not None:
            query += " AND state = ?"
            args.append(state)
        if split is not None:
            query += " AND split = ?"
            args.append(split)
        with self._connect() as connection:
            return [self._record(row) for row in connection.execute(query + " ORDER BY case_id", args)]

    def counts(self) -> dict[str, int]:
        """Number of cases per state, plus ``total`` and ``val``."""
        with self._connect() as connection:
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

    # ----------------------------------------------------------------- labels
    def validate_label(self, case_id: str, label: Volume, no_finding: bool = False) -> np.ndarray:
        """Check a label against its image and the label set; return it as uint8 (k, j, i).

        Raises:
            GeometryMismatchError: size/spacing/origin/direction differ from the image's.
            LabelValueError: values outside {0} and the configured labels, or non-integers.
            EmptyLabelError: all background while ``no_finding`` is False.
        """
        check_same_geometry(label.geometry, self.image_geometry(case_id), f"label of {case_id!r}")
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
        record = self.case(case_id)
        if annotator and record.lease_holder not in (None, annotator):
            raise LeaseError(f"case {case_id!r} is leased to {record.lease_holder!r}")
        relative = f"labels/{case_id}.{uuid.uuid4().hex[:12]}.nii.gz"
        atomic_write(self.meta_dir / relative, lambda path: write_volume(array, label.geometry, path))
        return self._point_label(case_id, relative, "expert", bool(no_finding) and not array.any(), "labeled", annotator)

    def _point_label(
        self, case_id: str, relative: str, source: str, no_finding: bool, state: str, annotator: str | None
    ) -> CaseRecord:
        """Commit a written label file to the case; remove the files it replaces after the commit."""
        try:
            with self._connect(write=True) as connection:
                row = self._row(connection, case_id)
                holder = row["lease_holder"] if (row["lease_expires"] or 0) > time.time() else None
                if annotator and holder not in (None, annotator):
                    raise LeaseError(f"case {case_id!r} is leased to {holder!r}")
                connection.execute(
                    "UPDATE cases SET state = ?, label_file = ?, label_source = ?, no_finding = ?, pseudo_file = NULL,"
                    " pseudo_model = NULL, lease_holder = NULL, lease_expires = NULL, updated = ? WHERE case_id = ?",
                    (state, relative, source, int(no_finding), time.time(), case_id),
                )
                replaced = [row["label_file"], row["pseudo_file"]]
        except BaseException:
            (self.meta_dir / relative).unlink(missing_ok=True)
            raise
        for old in replaced:
            if old and old != relative:
                (self.meta_dir / old).unlink(missing_ok=True)
        logger.info("case %s: %s label stored (%s)", case_id, source, state)
        return self.case(case_id)

    # ----------------------------------------------------------------- pseudo-labels
    def set_pseudo_labels(self, model_version: int, written: dict[str, Path]) -> None:
        """Replace the current pseudo-label set (DSAL rebuilds it every round; never accumulated).

        Args:
            model_version: the model that made them.
            written: case id -> pseudo-label file already written atomically under ``pseudo/``.

        Cases that held a pseudo-label and are not in ``written`` return to ``unlabeled``. Only cases
        in ``unlabeled``, ``queued`` (not leased) or ``pseudo`` state take a new one; others are skipped.
        """
        stale: list[str] = []
        with self._connect(write=True) as connection:
            for row in connection.execute("SELECT case_id, pseudo_file FROM cases WHERE state = 'pseudo'").fetchall():
                if row["case_id"] not in written:
                    stale.append(row["pseudo_file"])
                    connection.execute(
                        "UPDATE cases SET state = 'unlabeled', pseudo_file = NULL, pseudo_model = NULL, updated = ?"
                        " WHERE case_id = ?",
                        (time.time(), row["case_id"]),
                    )
            for case_id, path in written.items():
                row = self._row(connection, case_id)
                leased = (row["lease_expires"] or 0) > time.time()
                if row["state"] not in ("unlabeled", "queued", "pseudo") or row["split"] != "train" or leased:
                    stale.append(str(path.relative_to(self.meta_dir)))
                    continue
                if row["pseudo_file"]:
                    stale.append(row["pseudo_file"])
                connection.execute(
                    "UPDATE cases SET state = 'pseudo', pseudo_file = ?, pseudo_model = ?, updated = ? WHERE case_id = ?",
                    (str(path.relative_to(self.meta_dir)), model_version, time.time(), case_id),
                )
        kept = {str(p.relative_to(self.meta_dir)) for p in written.values()}
        for relative in stale:
            if relative and relative not in kept:
                (self.meta_dir / relative).unlink(missing_ok=True)

    def accept_pseudo(self, case_id: str) -> CaseRecord:
        """Accept a pseudo-label: it becomes a trusted label (state ``accepted``, trained at full weight).

        Raises:
            CaseStateError: the case has no pending pseudo-label.
        """
        record = self.case(case_id)
        if record.state != "pseudo" or record.pseudo_path is None:
            raise CaseStateError(f"case {case_id!r} has no pseudo-label to accept (state {record.state!r})")
        from activeseg.io.seg_nrrd import read_segmentation_labelmap

        label = read_segmentation_labelmap(record.pseudo_path, self.config.labels)
        array = self.validate_label(case_id, label, no_finding=True)
        relative = f"labels/{case_id}.{uuid.uuid4().hex[:12]}.nii.gz"
        atomic_write(self.meta_dir / relative, lambda path: write_volume(array, label.geometry, path))
        return self._point_label(case_id, relative, "accepted", not array.any(), "accepted", None)

    def reject_pseudo(self, case_id: str) -> CaseRecord:
        """Reject a pseudo-label: it leaves the training set; the case is never pseudo-labelled again.

        Raises:
            CaseStateError: the case has no pending pseudo-label.
        """
        with self._connect(write=True) as connection:
            row = self._row(connection, case_id)
            if row["state"] != "pseudo":
                raise CaseStateError(f"case {case_id!r} has no pseudo-label to reject (state {row['state']!r})")
            connection.execute(
                "UPDATE cases SET state = 'rejected', pseudo_file = NULL, pseudo_model = NULL, updated = ? WHERE case_id = ?",
                (time.time(), case_id),
            )
            old = row["pseudo_file"]
        if old:
            (self.meta_dir / old).unlink(missing_ok=True)
        return self.case(case_id)

    # ----------------------------------------------------------------- queue and leases
    def set_queue(self, case_ids: list[str]) -> None:
        """Make ``case_ids`` the strong queue: they become ``queued``; earlier queued cases not in it and
        not leased return to ``unlabeled``. Only ``unlabeled``, ``queued`` and ``rejected`` cases can be queued."""
        wanted = set(case_ids)
        with self._connect(write=True) as connection:
            now = time.time()
            for row in connection.execute("SELECT case_id, lease_expires FROM cases WHERE state = 'queued'").fetchall():
                if row["case_id"] not in wanted and (row["lease_expires"] or 0) <= now:
                    connection.execute(
                        "UPDATE cases SET state = 'unlabeled', lease_holder = NULL, lease_expires = NULL, updated = ?"
                        " WHERE case_id = ?",
                        (now, row["case_id"]),
                    )
            for case_id in case_ids:
                connection.execute(
                    "UPDATE cases SET state = 'queued', updated = ? WHERE case_id = ?"
                    " AND state IN ('unlabeled', 'queued', 'rejected')",
                    (now, case_id),
                )

    def queue(self) -> list[tuple[CaseRecord, ScoreRecord | None]]:
        """Queued cases, most uncertain first: unlabelled validation cases first (validation Dice needs
        them), then strong cases by ascending M-DSC under the active model."""
        active = self.active_version()
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT c.*, s.mdsc, s.confidence, s.foreground_ml, s.route FROM cases c"
                " LEFT JOIN scores s ON s.case_id = c.case_id AND s.model_version = ?"
                " WHERE c.state = 'queued' ORDER BY (c.split = 'val') DESC, s.mdsc IS NULL, s.mdsc ASC,"
                " s.foreground_ml DESC, c.case_id",
                (active if active is not None else -1,),
            ).fetchall()
        return [(self._record(row), self._score_from_row(row, active)) for row in rows]

    def lease_next(self, annotator: str) -> CaseRecord | None:
        """Lease the most uncertain queued case that nobody holds; ``None`` when nothing is left.

        Cold start: before the first model exists nothing has been ranked, so the queue is empty; then
        unlabelled cases are served, training split first (a first round needs them), in id order. Each
        lease is one transaction under SQLite's write lock, so two annotators never get the same case.
        """
        candidates = [record for record, _ in self.queue()]
        if not candidates and self.active_version() is None:
            unlabeled = self.cases(state="unlabeled")
            candidates = sorted(unlabeled, key=lambda r: (r.split != "train", r.case_id))
        for record in candidates:
            if record.lease_holder in (None, annotator):
                try:
                    return self.lease(record.case_id, annotator)
                except (LeaseError, CaseStateError):  # taken or labelled meanwhile: try the next one
                    continue
        return None

    def prediction_path(self, case_id: str, model_version: int) -> Path:
        """Where ranking keeps model ``model_version``'s prediction of a queued case (a ``.seg.nrrd``),
        served to the annotator as a starting segmentation."""
        return self.meta_dir / "predictions" / f"{validate_case_id(case_id)}.v{int(model_version)}.seg.nrrd"

    def lease(self, case_id: str, annotator: str) -> CaseRecord:
        """Lease one case to ``annotator`` for ``config.lease_seconds`` (renews an own lease).

        Raises:
            LeaseError: another annotator holds it. CaseStateError: the case is already labelled.
        """
        if not annotator:
            raise LeaseError("an annotator name is required to lease a case")
        with self._connect(write=True) as connection:
            row = self._row(connection, case_id)
            now = time.time()
            holder = row["lease_holder"] if (row["lease_expires"] or 0) > now else None
            if holder not in (None, annotator):
                raise LeaseError(f"case {case_id!r} is leased to {holder!r} until {row['lease_expires']:.0f}")
            if row["state"] in TRAINED_STATES:
                raise CaseStateError(f"case {case_id!r} is already {row['state']}")
            connection.execute(
                "UPDATE cases SET lease_holder = ?, lease_expires = ?, updated = ? WHERE case_id = ?",
                (annotator, now + self.config.lease_seconds, now, case_id),
            )
        return self.case(case_id)

    def release(self, case_id: str, annotator: str) -> CaseRecord:
        """Give a lease back. Raises LeaseError if someone else holds it."""
        with self._connect(write=True) as connection:
            row = self._row(connection, case_id)
            holder = row["lease_holder"] if (row["lease_expires"] or 0) > time.time() else None
            if holder not in (None, annotator):
                raise LeaseError(f"case {case_id!r} is leased to {holder!r}, not {annotator!r}")
            connection.execute(
                "UPDATE cases SET lease_holder = NULL, lease_expires = NULL, updated = ? WHERE case_id = ?",
                (time.time(), case_id),
            )
        return self.case(case_id)

    # ----------------------------------------------------------------- scores
    def store_scores(self, scores: list[ScoreRecord]) -> None:
        """Insert or replace scores (one model version's ranking)."""
        with self._connect(write=True) as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?)",
                [(s.model_version, s.case_id, s.mdsc, s.confidence, s.foreground_ml, s.route) for s in scores],
            )

    @staticmethod
    def _score_from_row(row: sqlite3.Row, version: int | None) -> ScoreRecord | None:
        if row["mdsc"] is None or version is None:
            return None
        return ScoreRecord(row["case_id"], version, row["mdsc"], row["confidence"], row["foreground_ml"], row["route"])

    def scores(self, model_version: int | None = None) -> dict[str, ScoreRecord]:
        """Scores under ``model_version`` (default: the active one), by case id."""
        version = self.active_version() if model_version is None else model_version
        if version is None:
            return {}
        with self._connect() as connection:
            rows = connection.execute("SELECT * FROM scores WHERE model_version = ?", (version,)).fetchall()
        return {
            row["case_id"]: ScoreRecord(row["case_id"], version, row["mdsc"], row["confidence"], row["foreground_ml"], row["route"])
            for row in rows
        }

    # ----------------------------------------------------------------- models
    def add_model(self, weights_file: Path, metrics: dict[str, Any], parent: int | None, activate: bool = True) -> ModelRecord:
        """Register a new model version from a finished weights file (moved into a fresh folder).

        Earlier versions are never touched. The new version becomes active unless ``activate`` is False.
        """
        with self._connect(write=True) as connection:
            version = (connection.execute("SELECT MAX(version) FROM models").fetchone()[0] or 0) + 1
            folder = f"models/v{version:04d}"
            target = self.meta_dir / folder
            if target.exists():  # a left-over of a run killed before its commit: no row references it
                shutil.rmtree(target)
            target.mkdir(parents=True)
            atomic_write(target / "model.pt", lambda path: shutil.copyfile(weights_file, path))
            atomic_write(target / "metrics.json", lambda path: Path(path).write_text(json.dumps(metrics, indent=2)))
            connection.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?)", (version, parent, folder, time.time(), json.dumps(metrics))
            )
            if activate:
                connection.execute("INSERT OR REPLACE INTO meta VALUES ('active_model', ?)", (str(version),))
        return self.model(version)

    def models(self) -> list[ModelRecord]:
        """All versions, oldest first."""
        with self._connect() as connection:
            rows = connection.execute("SELECT * FROM models ORDER BY version").fetchall()
        return [self._model_record(row) for row in rows]

    def _model_record(self, row: sqlite3.Row) -> ModelRecord:
        return ModelRecord(row["version"], row["parent"], self.meta_dir / row["folder"], row["created"], json.loads(row["metrics"]))

    def model(self, version: int) -> ModelRecord:
        """One version. Raises ModelVersionError if unknown."""
        with self._connect() as connection:
            row = connection.execute("SELECT * FROM models WHERE version = ?", (int(version),)).fetchone()
        if row is None:
            raise ModelVersionError(f"unknown model version {version}")
        return self._model_record(row)

    def active_version(self) -> int | None:
        """The active model version, or ``None`` before the first training round."""
        value = self.get_meta("active_model")
        return int(value) if value is not None else None

    def activate(self, version: int) -> ModelRecord:
        """Make an existing version active (rollback or roll forward). Raises ModelVersionError."""
        record = self.model(version)
        with self._connect(write=True) as connection:
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('active_model', ?)", (str(version),))
        logger.info("model v%d is now active", version)
        return record

    # ----------------------------------------------------------------- recovery
    def recover(self, min_age_seconds: float = 0.0) -> list[Path]:
        """Remove left-overs of interrupted writes: temp files and label/pseudo files no row references.

        Args:
            min_age_seconds: keep files younger than this (another process may be about to commit them).

        Returns:
            The removed paths.
        """
        with self._connect() as connection:
            referenced = {
                value
                for row in connection.execute("SELECT label_file, pseudo_file FROM cases").fetchall()
                for value in row
                if value
            }
        removed = []
        now = time.time()
        for sub in ("labels", "pseudo"):
            for path in (self.meta_dir / sub).iterdir():
                relative = f"{sub}/{path.name}"
                if relative in referenced or now - path.stat().st_mtime < min_age_seconds:
                    continue
                path.unlink(missing_ok=True)
                removed.append(path)
        for path in self.meta_dir.rglob(f"{TEMP_MARKER}*"):
            if now - path.stat().st_mtime >= min_age_seconds:
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            logger.info("recovered: removed %d left-over file(s) of interrupted writes", len(removed))
        return removed
