"""Model versions: one folder per version (weights, metrics), never overwritten, and which one is active.

A version is written first and registered (and activated) by a :class:`~activeseg.store.commit.StoreCommit`,
so a job registers its model in the same transaction that marks it succeeded.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activeseg.errors import ModelVersionError
from activeseg.io.atomic import atomic_write
from activeseg.store.commit import StoreCommit
from activeseg.store.database import Database

__all__ = ["ModelRecord", "ModelTable"]

logger = logging.getLogger(__name__)

_ACTIVE_KEY = "active_model"  # meta-table key of the active version


@dataclass(frozen=True)
class ModelRecord:
    """One model version: its folder (weights, metrics) and metrics dictionary. ``created`` is Unix seconds."""

    version: int
    parent: int | None
    folder: Path
    created: float
    metrics: dict[str, Any]

    @property
    def weights_path(self) -> Path:
        """The state-dict file."""
        return self.folder / "model.pt"


class ModelTable:
    """Registering, listing and activating model versions."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def _record(self, row: sqlite3.Row) -> ModelRecord:
        return ModelRecord(
            row["version"], row["parent"], self.database.meta_dir / row["folder"], row["created"], json.loads(row["metrics"])
        )

    def add_model(self, weights_file: Path, metrics: dict[str, Any], parent: int | None, activate: bool = True) -> ModelRecord:
        """Register a new model version from a finished weights file (copied into a fresh folder), at once.

        Earlier versions are never touched. The new version becomes active unless ``activate`` is False.
        """
        commit = StoreCommit(self.database)
        record = self.stage_model(commit, weights_file, metrics, parent, activate)
        commit.commit()
        return self.model(record.version)

    def stage_model(
        self, commit: StoreCommit, weights_file: Path, metrics: dict[str, Any], parent: int | None, activate: bool = True,
    ) -> ModelRecord:
        """Write a new version's folder now; register (and activate) it when ``commit`` commits.

        The folder has a fresh name (``models/vNNNN-<token>``), so a version that never commits (its round was
        cancelled or its process killed) is an unreferenced folder that recovery removes. The version number is
        the next free one now; if another round registers it first, the commit fails (nothing is registered).

        Returns:
            The version as it will read back once committed (not yet visible through :meth:`model`).
        """
        with self.database.connect() as connection:
            version = (connection.execute("SELECT MAX(version) FROM models").fetchone()[0] or 0) + 1
        folder = f"models/v{version:04d}-{uuid.uuid4().hex[:8]}"
        target = self.database.meta_dir / folder
        target.mkdir(parents=True)
        try:
            atomic_write(target / "model.pt", lambda path: shutil.copyfile(weights_file, path))
            text = json.dumps(metrics, indent=2)
            atomic_write(target / "metrics.json", lambda path: Path(path).write_text(text))
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        commit.new_path(target)
        created = time.time()

        def register(connection: sqlite3.Connection) -> None:
            if connection.execute("SELECT 1 FROM models WHERE version = ?", (version,)).fetchone() is not None:
                raise ModelVersionError(f"model version {version} was registered by another round meanwhile")
            connection.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?)", (version, parent, folder, created, json.dumps(metrics))
            )
            if activate:
                connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_ACTIVE_KEY, str(version)))

        commit.stage(register)
        return ModelRecord(version, parent, target, created, json.loads(json.dumps(metrics)))

    def models(self) -> list[ModelRecord]:
        """All versions, oldest first."""
        with self.database.connect() as connection:
            rows = connection.execute("SELECT * FROM models ORDER BY version").fetchall()
        return [self._record(row) for row in rows]

    def model(self, version: int) -> ModelRecord:
        """One version. Raises ModelVersionError if unknown."""
        with self.database.connect() as connection:
            row = connection.execute("SELECT * FROM models WHERE version = ?", (int(version),)).fetchone()
        if row is None:
            raise ModelVersionError(f"unknown model version {version}")
        return self._record(row)

    def active_version(self) -> int | None:
        """The active model version, or ``None`` before the first training round."""
        value = self.database.get_meta(_ACTIVE_KEY)
        return int(value) if value is not None else None

    def activate(self, version: int) -> ModelRecord:
        """Make an existing version active (rollback or roll forward). Raises ModelVersionError."""
        record = self.model(version)
        with self.database.connect(write=True) as connection:
            connection.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (_ACTIVE_KEY, str(version)))
        logger.info("model v%d is now active", version)
        return record
