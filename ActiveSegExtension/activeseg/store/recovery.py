"""Recovery after a crash: removing the left-overs of interrupted writes and of jobs that never committed.

Every write makes its file under a fresh name before a transaction points a row at it (labels, pseudo-labels,
model folders) or names its set (a ranking's predictions, see :class:`activeseg.store.queue.CaseQueue`), so
whatever no row references is a left-over: invisible to readers, and safe to remove once nothing may still be
about to commit it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from activeseg.io.atomic import TEMP_MARKER
from activeseg.store.database import Database
from activeseg.store.queue import PREDICTION_SET_KEY, PREDICTIONS_DIR, prediction_set_of

__all__ = ["recover", "recover_job_outputs", "JOB_OUTPUT_FOLDERS"]

logger = logging.getLogger(__name__)

# Folders only jobs (training and ranking rounds) write; the server's requests write labels/ and config files.
JOB_OUTPUT_FOLDERS = ("models", "predictions", "pseudo")


def _orphans(database: Database, folders: Iterable[str]) -> list[Path]:
    """Entries of ``folders`` (under ``.activeseg``) that no row references."""
    meta_dir = database.meta_dir
    with database.connect() as connection:
        referenced = {
            value
            for row in connection.execute("SELECT label_file, pseudo_file FROM cases").fetchall()
            for value in row
            if value
        }
        referenced |= {row["folder"] for row in connection.execute("SELECT folder FROM models").fetchall()}
        row = connection.execute("SELECT value FROM meta WHERE key = ?", (PREDICTION_SET_KEY,)).fetchone()
        prediction_set = row["value"] if row else None
    orphans = []
    for sub in folders:
        folder = meta_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if sub == PREDICTIONS_DIR:
                current = not path.name.startswith(TEMP_MARKER) and prediction_set_of(path.name) == prediction_set
            else:
                current = f"{sub}/{path.name}" in referenced
            if not current:
                orphans.append(path)
    return orphans


def _remove(paths: Iterable[Path], min_age_seconds: float) -> list[Path]:
    removed = []
    now = time.time()
    for path in paths:
        try:
            if now - path.stat().st_mtime < min_age_seconds:
                continue
        except FileNotFoundError:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def recover(database: Database, min_age_seconds: float = 0.0) -> list[Path]:
    """Remove left-overs of interrupted writes: temp files, and label and pseudo-label files, model folders and
    predictions that no row references.

    Args:
        database: the datastore's database.
        min_age_seconds: keep entries younger than this (another process may be about to commit them).

    Returns:
        The removed paths.
    """
    removed = _remove(_orphans(database, ("labels", *JOB_OUTPUT_FOLDERS)), min_age_seconds)
    removed += _remove(list(database.meta_dir.rglob(f"{TEMP_MARKER}*")), min_age_seconds)
    if removed:
        logger.info("recovered: removed %d left-over file(s) of interrupted writes", len(removed))
    return removed


def recover_job_outputs(database: Database) -> list[Path]:
    """Remove what a job wrote and never committed, whatever its age: call it only while no job runs (its worker
    is dead), e.g. when the server finds a worker died without recording an outcome.

    Leaves ``labels/`` alone: the server's own label requests write there concurrently.

    Returns:
        The removed paths.
    """
    meta_dir = database.meta_dir
    temps = [path for sub in JOB_OUTPUT_FOLDERS if (meta_dir / sub).is_dir() for path in (meta_dir / sub).rglob(f"{TEMP_MARKER}*")]
    temps += list(meta_dir.glob(f"{TEMP_MARKER}*.pt"))  # a training round's weights before they are registered
    removed = _remove([*_orphans(database, JOB_OUTPUT_FOLDERS), *temps], 0.0)
    if removed:
        logger.info("recovered: removed %d file(s) a job wrote but never committed", len(removed))
    return removed
