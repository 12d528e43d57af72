"""One SQLite transaction per call, the discipline every table of the datastore's database follows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["transaction"]


@contextmanager
def transaction(db_path: Path, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A fresh connection inside one transaction, committed on success and rolled back on any exception.

    Writers take SQLite's write lock up front (``BEGIN IMMEDIATE``): a reader that later tried to upgrade
    could deadlock with another upgrading reader. Connections wait up to 30 s for the lock. A connection
    per transaction makes one object safe to share between threads and lets several processes (the
    server, job workers, the CLI) use the same database.
    """
    connection = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
    connection.row_factory = sqlite3.Row
    try:
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    finally:
        connection.close()
