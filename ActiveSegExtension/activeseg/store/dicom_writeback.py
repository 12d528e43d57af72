"""Labels back to DICOM: every committed expert label or accepted pseudo-label of a DICOM case becomes a
DICOM SEG, stored to the DICOMweb server (STOW-RS) or, for a folder datastore, written to ``STORE/dicom-seg/``.

Crash-safety (an outbox, in ``dicom.db``):

1. The label is committed locally first, by the datastore, as for any case; this module never touches it.
2. :func:`on_label_committed` (the datastore's hook) records ``(case, label file)`` as *pending*. Should the
   process die before that, :func:`reconcile` finds the label without an outbox row on the next flush.
3. A flush builds the SEG once, with UIDs it records before the first try and a file written atomically,
   so every retry sends the same instance; a PACS stores one SOP Instance UID once (Orthanc keeps the
   first copy), so a store that succeeded but was not yet marked *stored* when the process died is not
   duplicated by the retry after restart.
4. STOW-RS failures are retried with exponential back-off; an entry that still fails stays *pending* with
   its error and is retried by the next flush. A label replaced before it was sent is marked *superseded*
   (only the newest label of a case goes out).

Flushes run in a background thread per datastore (the API request that committed the label does not wait
for the PACS); :func:`flush_outbox` runs one synchronously (start-up, tests, CLI). Logs name case ids
and error types, never patient data. The DICOMweb token comes from ``$ACTIVESEG_DICOMWEB_TOKEN``; it is
never written to disk.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.uid import generate_uid

from activeseg import __version__
from activeseg.errors import ActiveSegError
from activeseg.io.atomic import atomic_write
from activeseg.io.dicom_seg import build_dicom_seg
from activeseg.io.volumes import read_volume
from activeseg.store.dicom_index import DicomIndex
from activeseg.store.sqlite_tx import transaction

if TYPE_CHECKING:
    from activeseg.store.datastore import Datastore
    from activeseg.store.dicomweb_source import DicomwebSource

__all__ = ["TOKEN_ENV", "WritebackReport", "on_label_committed", "resume_writeback", "mark_imported_labels", "reconcile",
           "flush_outbox", "wait_for_background_flush"]

logger = logging.getLogger(__name__)

TOKEN_ENV = "ACTIVESEG_DICOMWEB_TOKEN"
EXPORT_DIR = "dicom-seg"
SEG_DIR = "dicom/seg"
PENDING, STORED, WRITTEN, SUPERSEDED, IMPORTED, UNSUPPORTED = "pending", "stored", "written", "superseded", "imported", "unsupported"
# Label sources (CaseRecord.label_source) that go back to the PACS, with the SEG's algorithm type.
ALGORITHM_OF_SOURCE = {"expert": "MANUAL", "accepted": "SEMIAUTOMATIC"}


@dataclass
class WritebackReport:
    """What one flush did (case ids per outcome)."""

    stored: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)


def _enabled(index: DicomIndex) -> bool:
    return index.exists() and index.source().get("writeback") == "on"


def _relative(store: Datastore, path: Path | None) -> str | None:
    return None if path is None else str(Path(path).relative_to(store.meta_dir))


def mark_imported_labels(store: Datastore) -> None:
    """Record the labels present now (imported with the images) as *imported*: they came from the source and
    are not sent back."""
    index = DicomIndex(store.meta_dir)
    with transaction(index.path, write=True) as connection:
        for record in store.cases():
            if record.label_path is not None:
                connection.execute(
                    "INSERT OR IGNORE INTO outbox (case_id, label_file, state, label_source, created) VALUES (?, ?, ?, ?, ?)",
                    (record.case_id, _relative(store, record.label_path), IMPORTED, record.label_source, time.time()),
                )


def reconcile(store: Datastore) -> int:
    """Add an outbox entry for every current expert/accepted label of a DICOM case that has none (a label
    committed while the process died before its hook ran). Returns how many were added."""
    index = DicomIndex(store.meta_dir)
    if not _enabled(index):
        return 0
    added = 0
    with transaction(index.path, write=True) as connection:
        known = {(row["case_id"], row["label_file"]) for row in connection.execute("SELECT case_id, label_file FROM outbox")}
        series = {row["case_id"] for row in connection.execute("SELECT case_id FROM series")}
        for record in store.cases():
            relative = _relative(store, record.label_path)
            if (relative is None or record.case_id not in series or (record.case_id, relative) in known
                    or record.label_source not in ALGORITHM_OF_SOURCE):
                continue
            connection.execute(
                "INSERT INTO outbox (case_id, label_file, state, label_source, created) VALUES (?, ?, ?, ?, ?)",
                (record.case_id, relative, PENDING, record.label_source, time.time()),
            )
            added += 1
    return added


def _build(store: Datastore, index: DicomIndex, row: dict) -> Path:
    """Build the entry's SEG once (UIDs recorded before the file is used) and return its path."""
    if row["seg_file"] and (store.meta_dir / row["seg_file"]).is_file():
        return store.meta_dir / row["seg_file"]
    series = index.series(row["case_id"])
    if series is None:
        raise ActiveSegError(f"case {row['case_id']!r} has no recorded DICOM series")
    label = read_volume(store.meta_dir / row["label_file"], dtype=np.uint8)
    key = (row["case_id"], row["label_file"])
    with transaction(index.path, write=True) as connection:  # UIDs first, once: every build and retry reuses them
        connection.execute(
            "UPDATE outbox SET seg_series_uid = COALESCE(seg_series_uid, ?), seg_sop_uid = COALESCE(seg_sop_uid, ?)"
            " WHERE case_id = ? AND label_file = ?",
            (str(generate_uid(entropy_srcs=["activeseg-seg-series", series.series_uid])), str(generate_uid()), *key),
        )
        uids = connection.execute("SELECT seg_series_uid, seg_sop_uid FROM outbox WHERE case_id = ? AND label_file = ?", key).fetchone()
    seg_series_uid, seg_sop_uid = uids["seg_series_uid"], uids["seg_sop_uid"]
    dataset = build_dicom_seg(
        label.array, index.headers(row["case_id"]), store.config.labels,
        series_instance_uid=seg_series_uid, sop_instance_uid=seg_sop_uid,
        series_description="ActiveSeg label", algorithm_type=ALGORITHM_OF_SOURCE.get(row["label_source"] or "", "MANUAL"),
        software_version=__version__,
    )
    relative = f"{SEG_DIR}/{row['case_id']}.{seg_sop_uid}.dcm"
    atomic_write(store.meta_dir / relative, lambda path: dataset.save_as(path, enforce_file_format=True))
    with transaction(index.path, write=True) as connection:
        connection.execute("UPDATE outbox SET seg_file = ? WHERE case_id = ? AND label_file = ?",
                           (relative, row["case_id"], row["label_file"]))
    return store.meta_dir / relative


def _finish(index: DicomIndex, row: dict, state: str, error: str | None = None) -> None:
    with transaction(index.path, write=True) as connection:
        connection.execute(
            "UPDATE outbox SET state = ?, last_error = ?, attempts = attempts + ?, done = ? WHERE case_id = ? AND label_file = ?",
            (state, error, 0 if state in (SUPERSEDED, IMPORTED) else 1, None if state == PENDING else time.time(),
             row["case_id"], row["label_file"]),
        )


def flush_outbox(store: Datastore, source: DicomwebSource | None = None, attempts: int = 3, backoff_s: float = 0.5) -> WritebackReport:
    """Send every pending label of ``store`` (after :func:`reconcile`).

    Args:
        store: the datastore.
        source: the DICOMweb server (default: the one recorded at init, token from ``$ACTIVESEG_DICOMWEB_TOKEN``).
        attempts: STOW-RS tries per entry in this flush.
        backoff_s: first wait between tries; doubles after each.

    Returns:
        Case ids per outcome. Failures stay pending; nothing raises for an unreachable server.
    """
    report = WritebackReport()
    index = DicomIndex(store.meta_dir)
    if not _enabled(index):
        return report
    with _lock:
        flush_lock = _flush_locks.setdefault(Path(store.root), threading.Lock())
    with flush_lock:  # one flush per datastore at a time in this process (others are safe: fixed UIDs)
        return _flush(store, index, report, source, attempts, backoff_s)


def _flush(store: Datastore, index: DicomIndex, report: WritebackReport, source: DicomwebSource | None,
           attempts: int, backoff_s: float) -> WritebackReport:
    reconcile(store)
    settings = index.source()
    with transaction(index.path) as connection:
        rows = [dict(row) for row in connection.execute("SELECT * FROM outbox WHERE state = ? ORDER BY created", (PENDING,))]
    for row in rows:
        case_id = row["case_id"]
        record = store.case(case_id)
        if _relative(store, record.label_path) != row["label_file"]:
            _finish(index, row, SUPERSEDED)
            report.superseded.append(case_id)
            continue
        try:
            seg_path = _build(store, index, row)
        except (ActiveSegError, ValueError) as exc:  # e.g. an over-anonymised series: no SEG can reference it
            logger.warning("case %s: no DICOM SEG can be made (%s)", case_id, exc)
            _finish(index, row, UNSUPPORTED, str(exc))
            report.unsupported.append(case_id)
            continue
        if settings.get("kind") != "dicomweb":
            atomic_write(store.root / EXPORT_DIR / f"{case_id}.dcm", lambda path: path.write_bytes(seg_path.read_bytes()))
            _finish(index, row, WRITTEN)
            report.written.append(case_id)
            continue
        if source is None:
            from activeseg.store.dicomweb_source import DicomwebSource

            source = DicomwebSource(settings["url"], token=os.environ.get(TOKEN_ENV))
        error = None
        for attempt in range(max(1, attempts)):
            try:
                source.store_file(seg_path)
                error = None
                break
            except ActiveSegError as exc:
                error = str(exc)
                logger.warning("case %s: STOW-RS try %d of %d failed: %s", case_id, attempt + 1, attempts, type(exc).__name__)
                if attempt + 1 < attempts:
                    time.sleep(backoff_s * 2**attempt)
        if error is None:
            _finish(index, row, STORED)
            report.stored.append(case_id)
            logger.info("case %s: label stored to the PACS as DICOM SEG", case_id)
        else:
            _finish(index, row, PENDING, error)
            report.failed.append(case_id)
    return report


# ----------------------------------------------------------------- the hook and its background thread
_workers: dict[Path, threading.Thread] = {}
_again: set[Path] = set()
_flush_locks: dict[Path, threading.Lock] = {}
_lock = threading.Lock()


def _run(root: Path) -> None:
    from activeseg.store.datastore import Datastore

    while True:
        with _lock:
            _again.discard(root)
        try:
            flush_outbox(Datastore(root))
        except Exception:  # noqa: BLE001 - a background flush must never take the process down
            logger.exception("DICOM SEG write-back of %s failed; it is retried on the next label or restart", root)
        with _lock:
            if root not in _again:
                _workers.pop(root, None)
                return


def _start(root: Path, background: bool) -> None:
    """Reconcile and flush ``root``'s outbox, in the per-datastore background thread or right here."""
    from activeseg.store.datastore import Datastore

    if not _enabled(DicomIndex(root / ".activeseg")):
        return
    reconcile(Datastore(root))
    if not background:
        flush_outbox(Datastore(root))
        return
    with _lock:
        _again.add(root)
        if root in _workers:
            return
        worker = threading.Thread(target=_run, args=(root,), name="activeseg-dicom-writeback", daemon=True)
        _workers[root] = worker
    worker.start()


def on_label_committed(root: Path, case_id: str, background: bool = True) -> None:
    """The datastore's hook, called after a label commit: queue the label for write-back and flush.

    Cheap for a datastore not made from DICOM (one file check). Never raises: the label is already safe
    locally, and a failed write-back is retried later.

    Args:
        root: the datastore folder.
        case_id: the case whose label was committed.
        background: flush in a background thread (default) or before returning.
    """
    try:
        _start(Path(root).resolve(), background)
    except Exception:  # noqa: BLE001 - see docstring
        logger.exception("case %s: DICOM SEG write-back could not be queued; it is retried on restart", case_id)


def resume_writeback(root: Path) -> None:
    """Send, in the background, the labels still pending from before a restart (call when a server starts).
    A no-op for datastores not made from DICOM; never raises."""
    try:
        _start(Path(root).resolve(), background=True)
    except Exception:  # noqa: BLE001 - a server must start even when the PACS side is broken
        logger.exception("DICOM SEG write-back could not be resumed; it is retried on the next label")


def wait_for_background_flush(root: Path, timeout: float = 60.0) -> bool:
    """Wait until no background flush of ``root`` runs; True when it finished within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    root = Path(root).resolve()
    while time.monotonic() < deadline:
        with _lock:
            worker = _workers.get(root)
        if worker is None:
            return True
        worker.join(timeout=0.1)
    return False
