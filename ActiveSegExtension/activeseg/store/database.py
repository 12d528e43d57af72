"""The datastore's SQLite database: its schema, where it lives, and one transaction per call.

Layout of a datastore folder::

    STORE/images/<case_id>.nii.gz|.nrrd     the volumes (copied in by ``init``)
    STORE/.activeseg/activeseg.db            SQLite: cases, scores, models, meta (and jobs, see jobs/runner.py)
    STORE/.activeseg/config.json             the engine's settings (config.Config)
    STORE/.activeseg/labels/                 expert and accepted labels, uint8 NIfTI, image geometry
    STORE/.activeseg/pseudo/                 current pseudo-labels as Slicer ``.seg.nrrd``
    STORE/.activeseg/predictions/            the ranking model's prediction of each queued case (derived, disposable),
                                             ``<case>.v<version>.<set>.seg.nrrd``: one set per ranking
    STORE/.activeseg/models/vNNNN-<token>/   one folder per model version (weights + metrics), never overwritten
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from activeseg.errors import DatastoreError
from activeseg.store.sqlite_tx import transaction

__all__ = ["META_DIR", "DB_NAME", "SCHEMA_VERSION", "SUBFOLDERS", "Database", "create_schema", "SKIPS_TABLE",
           "has_table"]

META_DIR = ".activeseg"
DB_NAME = "activeseg.db"
SCHEMA_VERSION = 1
# Folders under META_DIR that the datastore writes.
SUBFOLDERS = ("labels", "pseudo", "models", "predictions")

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

# Cases an annotator skipped (Skip in the module): served to them again only after every other case.
# Created by create_schema for new datastores and on the first skip in older ones (readers check has_table).
SKIPS_TABLE = """
CREATE TABLE IF NOT EXISTS skips (
    case_id   TEXT NOT NULL,
    annotator TEXT NOT NULL,
    skipped   REAL NOT NULL,
    PRIMARY KEY (case_id, annotator)
);
"""


@dataclass(frozen=True)
class Database:
    """Where a datastore's files are and how to open a transaction on its database.

    Attributes:
        root: the datastore folder (absolute).
        meta_dir: ``root/.activeseg``; relative file names stored in the database are relative to it.
        db_path: the SQLite file.
    """

    root: Path
    meta_dir: Path
    db_path: Path

    @classmethod
    def at(cls, root: Path) -> Database:
        """The database of the datastore at ``root`` (which need not exist yet)."""
        root = Path(root).resolve()
        meta_dir = root / META_DIR
        return cls(root, meta_dir, meta_dir / DB_NAME)

    @classmethod
    def open(cls, root: Path) -> Database:
        """The database of an initialised datastore.

        Raises:
            DatastoreError: ``root`` has no ``.activeseg/activeseg.db``.
        """
        database = cls.at(root)
        if not database.db_path.is_file():
            raise DatastoreError(
                f"{database.root} is not an ActiveSeg datastore (run 'activeseg init {database.root} --from DIR')"
            )
        return database

    def connect(self, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """One transaction (see :func:`activeseg.store.sqlite_tx.transaction`)."""
        return transaction(self.db_path, write)

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        """A value of the ``meta`` table."""
        with self.connect() as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default


def create_schema(connection: sqlite3.Connection) -> None:
    """Create the tables (idempotent) and switch the database to write-ahead logging."""
    connection.executescript(_SCHEMA + SKIPS_TABLE)
    connection.execute("PRAGMA journal_mode=WAL")


def has_table(connection: sqlite3.Connection, name: str) -> bool:
    """Whether the database has table ``name`` (tables added after a datastore was created may be missing)."""
    return connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
