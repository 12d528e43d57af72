"""``activeseg init --from DIR`` for a folder of DICOM files: one case per CT series.

Each series that passes :func:`activeseg.io.dicom_series.assemble_series` is read once (SimpleITK
``ImageSeriesReader``, LPS geometry) and staged as NIfTI in an MSD-style folder inside the datastore's
``.activeseg/``; with ``--with-labels`` every DICOM SEG that references an imported series is mapped onto
it and staged as its label (segment names become the label set). The ordinary
:func:`activeseg.store.initialise.init_datastore` then creates the datastore from that folder, so a DICOM
datastore gets the same checks, validation split and crash-safety as any other. Provenance (UIDs, slice
order, header copies) goes to :class:`~activeseg.store.dicom_index.DicomIndex` *before* the datastore
exists, and write-back of labels is switched on only after it does, so labels imported here are never
sent back to the PACS. A crash part-way leaves no datastore; running ``init`` again starts over.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from activeseg.config import Config
from activeseg.errors import ActiveSegError, DatastoreError
from activeseg.io.dicom_seg import read_dicom_seg, segment_names
from activeseg.io.dicom_series import DicomScan, DicomSeries, read_series, scan_dicom_folder
from activeseg.io.volumes import write_volume
from activeseg.store.dicom_index import DicomIndex

if TYPE_CHECKING:
    from activeseg.store.datastore import Datastore

__all__ = ["init_from_dicom_folder", "looks_like_dicom_folder"]

logger = logging.getLogger(__name__)

STAGING = "dicom-staging"


def looks_like_dicom_folder(source: Path) -> bool:
    """True when ``source`` is a folder holding DICOM files and no NIfTI/NRRD volumes or dataset.json."""
    from activeseg.io.dicom_series import is_dicom_file
    from activeseg.io.volumes import strip_image_suffix

    source = Path(source)
    if not source.is_dir() or (source / "dataset.json").exists():
        return False
    if any(strip_image_suffix(p.name) is not None for p in source.iterdir() if p.is_file()):
        return False
    return any(is_dicom_file(p) for p in source.rglob("*") if p.is_file())


def _stage_labels(scan: DicomScan, by_series: dict[str, DicomSeries], staging: Path) -> tuple[dict[int, str], dict[str, str], list[str]]:
    """Map each SEG onto its series; returns (label set, case id -> staged label path, problems)."""
    problems: list[str] = []
    newest: dict[str, tuple[str, Path]] = {}  # case id -> (content date+time, SEG): the newest SEG of a series wins
    for path in scan.segmentations:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError) as exc:
            problems.append(f"label {path.name} not imported: {exc}")
            continue
        referenced = [str(item.SeriesInstanceUID) for item in header.get("ReferencedSeriesSequence", [])]
        series = next((by_series[uid] for uid in referenced if uid in by_series), None)
        if series is None:
            problems.append(f"label {path.name} not imported: it references no imported series")
            continue
        stamp = f"{header.get('ContentDate', '')}{header.get('ContentTime', '')}"
        previous = newest.get(series.case_id)
        if previous is not None:
            older = path if stamp <= previous[0] else previous[1]
            problems.append(f"label {older.name} not imported: case {series.case_id} has a newer DICOM SEG")
            if stamp <= previous[0]:
                continue
        newest[series.case_id] = (stamp, path)
    series_of = {case_id: next(s for s in by_series.values() if s.case_id == case_id) for case_id in newest}
    names: list[str] = []
    targets: list[tuple[Path, DicomSeries]] = []
    for case_id, (_, path) in sorted(newest.items()):
        try:
            for name in segment_names(path).values():
                if name.lower() not in {n.lower() for n in names}:
                    names.append(name)
        except ActiveSegError as exc:
            problems.append(f"label {path.name} not imported: {exc}")
            continue
        targets.append((path, series_of[case_id]))
    label_set = {value: name for value, name in enumerate(names, start=1)}
    staged: dict[str, str] = {}
    for path, series in targets:
        try:
            label = read_dicom_seg(path, series, label_set)
        except ActiveSegError as exc:
            problems.append(f"label {path.name} not imported: {exc}")
            continue
        relative = f"labelsTr/{series.case_id}.nii.gz"
        (staging / "labelsTr").mkdir(parents=True, exist_ok=True)
        write_volume(label.array, label.geometry, staging / relative)
        staged[series.case_id] = relative
    return label_set, staged, problems


def init_from_dicom_folder(
    store: Path,
    folder: Path,
    *,
    with_labels: bool = False,
    overrides: list[str] | None = None,
    seed: int = 0,
    config: Config | None = None,
    modalities: tuple[str, ...] = ("CT",),
    source: dict[str, str] | None = None,
) -> tuple[Datastore, list[str]]:
    """Create datastore ``store`` with one case per image series found under ``folder``.

    Args:
        store: datastore folder to create.
        folder: DICOM files in any layout.
        with_labels: import DICOM SEG objects that reference an imported series as expert labels.
        overrides, seed, config: as :func:`activeseg.store.initialise.init_datastore`.
        modalities: image modalities to import.
        source: what to record as the source (default ``kind=folder``); the DICOMweb importer passes its URL.

    Returns:
        The datastore, and one sentence per skipped series, file or label.

    Raises:
        DatastoreError: no importable series, or ``store`` is already a datastore.
    """
    from activeseg.store.dicom_writeback import mark_imported_labels
    from activeseg.store.initialise import init_datastore

    store = Path(store).resolve()
    meta_dir = store / ".activeseg"
    if (meta_dir / "activeseg.db").exists():
        raise DatastoreError(f"{store} is already an ActiveSeg datastore")
    scan = scan_dicom_folder(folder, modalities)
    problems = [skipped.sentence() for skipped in scan.skipped]
    if not scan.series:
        detail = "; ".join(problems[:5]) or "no DICOM image files"
        raise DatastoreError(f"{folder}: no importable DICOM series ({detail})")
    staging = meta_dir / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    (DicomIndex(meta_dir).path).unlink(missing_ok=True)  # a left-over of an interrupted init
    index = DicomIndex(meta_dir).create()
    (staging / "imagesTr").mkdir(parents=True)
    training = []
    by_series: dict[str, DicomSeries] = {}
    for series in scan.series:
        try:
            volume = read_series(series)
        except ActiveSegError as exc:
            problems.append(f"skipped series {series.case_id}: {exc}")
            continue
        write_volume(volume.array, volume.geometry, staging / "imagesTr" / f"{series.case_id}.nii.gz")
        del volume
        index.add_series(series.case_id, series)
        by_series[series.series_uid] = series
        training.append({"image": f"imagesTr/{series.case_id}.nii.gz"})
        logger.info("staged series %s (%d slices)", series.case_id, len(series.files))
    if not training:
        shutil.rmtree(staging, ignore_errors=True)
        raise DatastoreError(f"{folder}: no DICOM series could be read ({'; '.join(problems[:5])})")
    dataset: dict[str, object] = {"modality": {"0": scan.series[0].modality or "CT"}}
    if with_labels and scan.segmentations:
        label_set, staged, label_problems = _stage_labels(scan, by_series, staging)
        problems += label_problems
        if label_set:
            dataset["labels"] = {"0": "background", **{str(k): v for k, v in label_set.items()}}
        for entry in training:
            case_id = Path(str(entry["image"])).name.removesuffix(".nii.gz")
            if case_id in staged:
                entry["label"] = staged[case_id]
    elif scan.segmentations:
        problems.append(f"{len(scan.segmentations)} DICOM SEG file(s) not imported (use --with-labels to import them as labels)")
    dataset["training"] = training
    (staging / "dataset.json").write_text(json.dumps(dataset, indent=2))
    index.set_source(**(source or {"kind": "folder", "url": str(Path(folder).resolve())}))
    try:
        datastore, more = init_datastore(store, staging / "dataset.json", with_labels, overrides, seed, config)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    problems += more
    index.remove_series_except({record.case_id for record in datastore.cases()})
    mark_imported_labels(datastore)
    index.set_source(writeback="on")
    return datastore, problems
