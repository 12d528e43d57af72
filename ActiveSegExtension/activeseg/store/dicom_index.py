"""Where each case of a DICOM-sourced datastore came from: its series' UIDs, slice order and headers.

Kept beside the datastore's own database, in ``STORE/.activeseg/dicom.db`` (stdlib ``sqlite3``, one
transaction per call), so the case tables need no DICOM columns::

    source   key/value: kind ("folder" | "dicomweb"), url, writeback ("on" once init has finished)
    series   case_id -> study/series/frame-of-reference UIDs, SOP Instance UIDs in slice order (k = 0..),
             modality, display fields (series description, study date), header-derived geometry (LPS)
    outbox   labels to send back as DICOM SEG (owned by ``dicom_writeback``)

``STORE/.activeseg/dicom/<case_id>/<k>.dcm`` hold the series' headers without pixel data: a DICOM SEG
built later copies patient/study attributes from them and references their instances.
A datastore without ``dicom.db`` is a plain file datastore; nothing here changes it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom

from activeseg.io.atomic import atomic_write
from activeseg.io.dicom_seg import read_dicom_seg
from activeseg.io.dicom_series import DicomSeries, display_name_of
from activeseg.io.volumes import Geometry, Volume
from activeseg.store.case_ids import validate_case_id
from activeseg.store.sqlite_tx import transaction

__all__ = ["DICOM_DB", "DicomIndex", "label_from_dicom_seg"]

logger = logging.getLogger(__name__)

DICOM_DB = "dicom.db"
HEADERS_DIR = "dicom"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS source (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS series (
    case_id               TEXT PRIMARY KEY,
    study_uid             TEXT NOT NULL,
    series_uid            TEXT NOT NULL,
    frame_of_reference    TEXT NOT NULL,
    modality              TEXT NOT NULL,
    sop_class_uid         TEXT NOT NULL,
    sop_instance_uids     TEXT NOT NULL,
    uids_derived          INTEGER NOT NULL,
    description           TEXT NOT NULL,
    study_date            TEXT NOT NULL,
    series_number         INTEGER,
    geometry              TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    case_id         TEXT NOT NULL,
    label_file      TEXT NOT NULL,
    state           TEXT NOT NULL,
    label_source    TEXT,
    seg_series_uid  TEXT,
    seg_sop_uid     TEXT,
    seg_file        TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created         REAL NOT NULL,
    done            REAL,
    PRIMARY KEY (case_id, label_file)
);
"""


@dataclass(frozen=True)
class DicomIndex:
    """The DICOM side-table of one datastore (``meta_dir`` = ``STORE/.activeseg``)."""

    meta_dir: Path

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self.meta_dir / DICOM_DB

    def exists(self) -> bool:
        """True for a datastore made from DICOM."""
        return self.path.is_file()

    def create(self) -> DicomIndex:
        """Create the tables (idempotent) and return self."""
        self.meta_dir.mkdir(parents=True, exist_ok=True)
        with transaction(self.path, write=True) as connection:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    connection.execute(statement)
        return self

    # ----------------------------------------------------------------- source
    def set_source(self, **values: str) -> None:
        """Record source settings (``kind``, ``url``, ``writeback``...); never a token."""
        with transaction(self.path, write=True) as connection:
            connection.executemany("INSERT OR REPLACE INTO source VALUES (?, ?)", list(values.items()))

    def source(self) -> dict[str, str]:
        """All source settings."""
        with transaction(self.path) as connection:
            return {row["key"]: row["value"] for row in connection.execute("SELECT key, value FROM source")}

    # ----------------------------------------------------------------- series
    def headers_dir(self, case_id: str) -> Path:
        """Folder of a case's header copies."""
        return self.meta_dir / HEADERS_DIR / validate_case_id(case_id)

    def add_series(self, case_id: str, series: DicomSeries) -> None:
        """Copy the series' headers (no pixel data) under :meth:`headers_dir`, then record the series."""
        folder = self.headers_dir(case_id)
        for k, path in enumerate(series.files):
            header = pydicom.dcmread(path, stop_before_pixels=True)
            atomic_write(folder / f"{k:05d}.dcm", lambda target, ds=header: ds.save_as(target, enforce_file_format=False))
        with transaction(self.path, write=True) as connection:
            connection.execute(
                "INSERT OR REPLACE INTO series VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (case_id, series.study_uid, series.series_uid, series.frame_of_reference_uid, series.modality,
                 series.sop_class_uid, json.dumps(list(series.sop_instance_uids)), int(series.uids_derived),
                 series.description, series.study_date, series.series_number, json.dumps(series.geometry.to_json())),
            )

    def remove_series_except(self, keep: set[str]) -> None:
        """Forget series whose case did not make it into the datastore (unreadable at import)."""
        with transaction(self.path, write=True) as connection:
            for row in connection.execute("SELECT case_id FROM series").fetchall():
                if row["case_id"] not in keep:
                    connection.execute("DELETE FROM series WHERE case_id = ?", (row["case_id"],))

    def series(self, case_id: str) -> DicomSeries | None:
        """The recorded series of a case (``files`` = its header copies, in slice order), or ``None``."""
        with transaction(self.path) as connection:
            row = connection.execute("SELECT * FROM series WHERE case_id = ?", (validate_case_id(case_id),)).fetchone()
        if row is None:
            return None
        geometry = json.loads(row["geometry"])
        uids = tuple(json.loads(row["sop_instance_uids"]))
        folder = self.headers_dir(case_id)
        return DicomSeries(
            series_uid=row["series_uid"], study_uid=row["study_uid"], frame_of_reference_uid=row["frame_of_reference"],
            modality=row["modality"], sop_class_uid=row["sop_class_uid"],
            files=tuple(folder / f"{k:05d}.dcm" for k in range(len(uids))), sop_instance_uids=uids,
            geometry=Geometry(size=tuple(geometry["size"]), spacing=tuple(geometry["spacing"]),  # type: ignore[arg-type]
                              origin=tuple(geometry["origin"]), direction=tuple(geometry["direction"])),  # type: ignore[arg-type]
            uids_derived=bool(row["uids_derived"]), description=row["description"], study_date=row["study_date"],
            series_number=row["series_number"],
        )

    def headers(self, case_id: str) -> list[pydicom.Dataset]:
        """The case's series headers in slice order (k = 0..)."""
        series = self.series(case_id)
        return [] if series is None else [pydicom.dcmread(path) for path in series.files]

    def display_names(self) -> dict[str, str]:
        """Case id -> a name a radiologist recognises (series description, study date), for the cases that have
        either (one query; cases with neither are left out, so callers fall back to the case id).

        For the queue shown to the annotator only: it may identify a visit, so it is never logged. It never
        contains patient name, id or birth date (only the two attributes above are read).
        """
        if not self.exists():
            return {}
        with transaction(self.path) as connection:
            rows = connection.execute("SELECT case_id, description, study_date FROM series").fetchall()
        names = {row["case_id"]: display_name_of(row["description"], row["study_date"]) for row in rows}
        return {case_id: name for case_id, name in names.items() if name}

def label_from_dicom_seg(meta_dir: Path, case_id: str, seg: Path | pydicom.Dataset, labels: dict[int, str]) -> Volume:
    """A DICOM SEG given as a case's label, mapped onto the case's series grid (LPS, (k, j, i) uint8).

    Raises:
        DatastoreError: the case did not come from DICOM. GeometryMismatchError, LabelValueError,
        ImageReadError: as :func:`activeseg.io.dicom_seg.read_dicom_seg`.
    """
    from activeseg.errors import DatastoreError

    index = DicomIndex(Path(meta_dir))
    series = index.series(case_id) if index.exists() else None
    if series is None:
        raise DatastoreError(f"case {case_id!r} was not imported from DICOM, so a DICOM SEG cannot be mapped onto it")
    return read_dicom_seg(seg, series, labels)
