"""Effects that become visible together: a round's (or a job's) database changes in one SQLite transaction.

A training or ranking round produces several effects: a model version and its activation, a ranking's scores,
strong queue, pseudo-label set and prediction files. A :class:`StoreCommit` collects them so that a reader, or a
process that restarts after a kill at any point, sees either all of them or none:

1. new files are written first, under names no row references yet (:meth:`StoreCommit.new_path` records them);
2. database changes are *staged* (:meth:`StoreCommit.stage`) and applied by :meth:`StoreCommit.commit` in one
   write transaction, together with an optional final statement (a job marks itself succeeded there, so its
   status and its effects cannot disagree);
3. only after the commit are the files the changes replaced deleted, and the ``after`` actions run.

A commit that fails, or is :meth:`discarded <StoreCommit.discard>`, removes the new files; one that never ran
(the process was killed) leaves them unreferenced, and :func:`activeseg.store.recovery.recover` removes them.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

from activeseg.errors import DatastoreError
from activeseg.store.database import Database

__all__ = ["StoreCommit", "StagedChange"]

logger = logging.getLogger(__name__)

#: A database change run inside the commit's transaction; it returns the files (relative to the datastore's
#: ``.activeseg`` folder) that it replaces, deleted once the transaction has committed.
StagedChange = Callable[[sqlite3.Connection], Iterable[str] | None]


class StoreCommit:
    """The staged effects of one round or job on one datastore.

    Args:
        database: the datastore's database.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self._changes: list[StagedChange] = []
        self._new_paths: list[Path] = []
        self._after: list[Callable[[], None]] = []
        self.committed = False
        self.discarded = False

    def _check_open(self) -> None:
        if self.committed or self.discarded:
            raise DatastoreError("this commit has already " + ("committed" if self.committed else "been discarded"))

    def new_path(self, path: Path) -> Path:
        """Record a file or folder this commit created under a fresh name (removed if the commit is discarded)."""
        self._check_open()
        if Path(path) not in self._new_paths:
            self._new_paths.append(Path(path))
        return Path(path)

    def stage(self, change: StagedChange) -> None:
        """Add a database change; it runs inside :meth:`commit`'s transaction, after those staged before it."""
        self._check_open()
        self._changes.append(change)

    def after(self, action: Callable[[], None]) -> None:
        """Run ``action`` once the commit has succeeded (derived files such as ``plan.json``). Its failure is
        logged, never raised: the effects are committed by then."""
        self._check_open()
        self._after.append(action)

    def commit(self, then: Callable[[sqlite3.Connection], None] | None = None) -> None:
        """Apply every staged change, then ``then``, in one write transaction; delete the replaced files afterwards.

        Any exception (from a change, from ``then``, or a new file found missing) rolls the whole transaction
        back, removes the new files and propagates.
        """
        self._check_open()
        replaced: list[str] = []
        try:
            with self.database.connect(write=True) as connection:
                missing = [path for path in self._new_paths if not path.exists()]
                if missing:  # removed by a recovery that took them for left-overs: never commit a dangling row
                    raise DatastoreError(f"{len(missing)} file(s) written for this commit disappeared before it")
                for change in self._changes:
                    replaced.extend(change(connection) or ())
                if then is not None:
                    then(connection)
        except BaseException:
            self.discard()
            raise
        self.committed = True
        for relative in replaced:
            if relative:
                (self.database.meta_dir / relative).unlink(missing_ok=True)
        for action in self._after:
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the commit stands; a derived file is only missing
                logger.warning("after the commit: %s", exc)

    def discard(self) -> None:
        """Give up: remove the files written for this commit (nothing was committed). Idempotent."""
        if self.committed:
            return
        self.discarded = True
        for path in reversed(self._new_paths):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._new_paths.clear()
