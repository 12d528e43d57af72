"""The API's hot reads served from memory: the queue, the case list and one case (issue 12, item 15).

Every annotator's Slicer module polls ``GET /v1/queue`` and ``GET /v1/cases``; each answer used to cost four or
five SQLite transactions (a fresh connection each) and a Pydantic model per case, all competing for the CPU
with a training job. Here one :class:`ReadSnapshot` holds everything those routes show (active model, cases,
scores under the active model, queue order, display names) and each route's JSON bytes, rendered once.

A snapshot is current while nothing changed:

* **the database**: ``PRAGMA data_version`` on one connection this object holds changes whenever *any other*
  connection commits: the server's own writes (each transaction opens its own connection), job workers and the
  command line alike. So a change by any process is seen by the next request;
* **the DICOM index** (display names), the same way, where the datastore has one;
* **the clock**: a lease expires without any write; a snapshot is dropped at its earliest live lease's expiry.

A request checks the version (microseconds, one pragma on a held connection) and gets the cached bytes; the
first request after a change rebuilds the snapshot (one thread builds, the others wait for it rather than
repeat the work).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from activeseg.store.datastore import CaseRecord, Datastore, ScoreRecord
from .schemas import CaseListOut, CaseOut, QueueItem, QueueOut, case_out

__all__ = ["HotReads", "ReadSnapshot"]

logger = logging.getLogger(__name__)

# activeseg.store.dicom_index.DICOM_DB, named here so the server does not load pydicom at start (a test checks
# that the two agree).
DICOM_INDEX_FILE = "dicom.db"


class _VersionProbe:
    """``PRAGMA data_version`` of one SQLite file, on a connection held for this object's life (thread-safe).

    Returns ``None`` while the file does not exist (it is looked for again on every call).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def version(self) -> int | None:
        with self._lock:
            if self._connection is None:
                if not self.path.is_file():
                    return None
                self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            return int(self._connection.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


@dataclass
class ReadSnapshot:
    """What the hot routes show, read at one database version.

    Attributes:
        key: the (database, DICOM index) versions it was read at.
        expires: Unix time (s) of the earliest live lease's expiry (``inf`` when no case is leased).
        active_model: the active model version.
        cases: every case by id, in id order, with its score under the active model and display name.
        queue: the queued case ids, most uncertain first (:meth:`Datastore.queue`'s order).
    """

    key: tuple[int | None, int | None]
    expires: float
    active_model: int | None
    cases: dict[str, CaseOut]
    queue: list[str]
    _rendered: dict[tuple[str, ...], bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rendered(self, key: tuple[str, ...], render: Callable[[], bytes]) -> bytes:
        """The JSON bytes of one route (and its query), rendered once per snapshot."""
        with self._lock:
            data = self._rendered.get(key)
            if data is None:
                data = self._rendered[key] = render()
            return data

    def queue_json(self) -> bytes:
        """``GET /v1/queue``'s body (:class:`QueueOut`)."""
        return self.rendered(("queue",), lambda: QueueOut(
            active_model=self.active_model,
            items=[QueueItem(rank=n, case=self.cases[case_id]) for n, case_id in enumerate(self.queue, start=1)],
        ).model_dump_json().encode())

    def cases_json(self, state: str | None, split: str | None) -> bytes:
        """``GET /v1/cases``'s body (:class:`CaseListOut`), filtered like :meth:`Datastore.cases`."""
        return self.rendered(("cases", state or "", split or ""), lambda: CaseListOut(
            active_model=self.active_model,
            cases=[case for case in self.cases.values()
                   if (state is None or case.state == state) and (split is None or case.split == split)],
        ).model_dump_json().encode())

    def case_json(self, case_id: str) -> bytes | None:
        """``GET /v1/cases/{id}``'s body (:class:`CaseOut`), or ``None`` for a case this snapshot does not hold."""
        case = self.cases.get(case_id)
        if case is None:
            return None
        return self.rendered(("case", case_id), lambda: case.model_dump_json().encode())


def _expiry(records: list[CaseRecord]) -> float:
    expiries = [r.lease_expires for r in records if r.lease_holder is not None and r.lease_expires is not None]
    return min(expiries, default=math.inf)


class HotReads:
    """The current :class:`ReadSnapshot` of one datastore, rebuilt when the datastore changed.

    Args:
        store: the datastore.
        display_names: case id -> display name (the server's :meth:`ServerContext.display_names`).
    """

    def __init__(self, store: Datastore, display_names: Callable[[], dict[str, str]]) -> None:
        self.store = store
        self.display_names = display_names
        self._database = _VersionProbe(store.db_path)
        self._dicom = _VersionProbe(store.meta_dir / DICOM_INDEX_FILE)
        self._snapshot: ReadSnapshot | None = None
        self._build_lock = threading.Lock()
        self.builds = 0  # how many snapshots were read from the database (for tests and the log)

    def _key(self) -> tuple[int | None, int | None]:
        return self._database.version(), self._dicom.version()

    def _fresh(self, snapshot: ReadSnapshot | None, key: tuple[int | None, int | None]) -> bool:
        return snapshot is not None and snapshot.key == key and time.time() < snapshot.expires

    def snapshot(self) -> ReadSnapshot:
        """The current snapshot (built now if the datastore changed since the last one)."""
        key = self._key()
        snapshot = self._snapshot
        if self._fresh(snapshot, key):
            return snapshot  # type: ignore[return-value]
        with self._build_lock:
            key = self._key()  # read before the queries: a commit during them makes the next request rebuild
            snapshot = self._snapshot
            if self._fresh(snapshot, key):
                return snapshot  # type: ignore[return-value]  # another thread built it meanwhile
            snapshot = self._build(key)
            self._snapshot = snapshot
            return snapshot

    def _build(self, key: tuple[int | None, int | None]) -> ReadSnapshot:
        store = self.store
        active = store.active_version()
        records = store.cases()
        scores: dict[str, ScoreRecord] = store.scores(active) if active is not None else {}
        queue = [record.case_id for record, _ in store.queue()]
        names = self.display_names()
        self.builds += 1
        cases = {r.case_id: case_out(r, scores.get(r.case_id), names.get(r.case_id)) for r in records}
        return ReadSnapshot(
            key=key,
            expires=_expiry(records),
            active_model=active,
            cases=cases,
            queue=[case_id for case_id in queue if case_id in cases],  # a case added meanwhile: next snapshot
        )

    def close(self) -> None:
        """Close the held connections."""
        self._database.close()
        self._dicom.close()
