"""Recovery after a crash: removing the left-overs of interrupted writes."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from activeseg.io.atomic import TEMP_MARKER
from activeseg.store.database import Database

__all__ = ["recover"]

logger = logging.getLogger(__name__)


def recover(database: Database, min_age_seconds: float = 0.0) -> list[Path]:
    """Remove left-overs of interrupted writes: temp files and label/pseudo files no row references.

    Args:
        database: the datastore's database.
        min_age_seconds: keep files younger than this (another process may be about to commit them).

    Returns:
        The removed paths.
    """
    meta_dir = database.meta_dir
    with database.connect() as connection:
        referenced = {
            value
            for row in connection.execute("SELECT label_file, pseudo_file FROM cases").fetchall()
            for value in row
            if value
        }
    removed = []
    now = time.time()
    for sub in ("labels", "pseudo"):
        for path in (meta_dir / sub).iterdir():
            relative = f"{sub}/{path.name}"
            if relative in referenced or now - path.stat().st_mtime < min_age_seconds:
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
    for path in meta_dir.rglob(f"{TEMP_MARKER}*"):
        if now - path.stat().st_mtime >= min_age_seconds:
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.info("recovered: removed %d left-over file(s) of interrupted writes", len(removed))
    return removed
