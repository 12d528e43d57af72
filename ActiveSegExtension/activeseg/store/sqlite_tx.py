"""One SQLite transaction per call, the discipline every table of the datastore's database follows."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["DEFAULT_LOCK_WAIT_S", "set_lock_wait", "transaction"]

# Seconds a transaction waits for another connection's lock. Job workers and the CLI keep the default; the
# server lowers it (set_lock_wait) so a request answers "locked, retry" quickly instead of hanging.
DEFAULT_LOCK_WAIT_S = 30.0
_lock_wait_s = DEFAULT_LOCK_WAIT_S


def set_lock_wait(seconds: float) -> None:
    """Set this process's lock wait, seconds (a process-wide setting: the server sets it once at start)."""
    global _lock_wait_s
    _lock_wait_s = float(seconds)


@contextmanager
def transaction(db_path: Path, write: bool = False) -> Iterator[sqlite3.Connection]:
    """A fresh connection inside one transaction, committed on success and rolled back on any exception.

    Writers take SQLite's write lock up front (``BEGIN IMMEDIATE``): a reader that later tried to upgrade
    could deadlock with another upgrading reader. Connections wait up to the process's lock wait (30 s unless
    :func:`set_lock_wait` changed it) for a lock, then raise ``sqlite3.OperationalError: database is locked``.
    A connection per transaction makes one object safe to share between threads and lets several processes
    (the server, job workers, the CLI) use the same database.
    """
    connection = sqlite3.connect(db_path, timeout=_lock_wait_s, isolation_level=None)
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
