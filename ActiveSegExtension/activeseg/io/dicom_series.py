"""DICOM image series -> 3D volumes: find the series in a folder, check each, read it through SimpleITK.

A folder (searched recursively) may hold any mix of studies, series and non-image objects. Files are
grouped by SeriesInstanceUID; each group is checked and becomes one :class:`DicomSeries` or one
:class:`SkippedSeries` with the reason in words (single slice, mixed orientations, sheared positions from
a gantry tilt, missing or duplicate slices, unequal sizes, not an image, another modality). Segmentation
objects (DICOM SEG) are listed apart so they can be imported as labels.

Geometry (``activeseg.io.volumes`` conventions): LPS, spacing and origin in mm in (i, j, k) order, i along
a row (ImageOrientationPatient's first vector), j down the columns (its second), k along their cross
product; slices are sorted by their position along k, never by file name or InstanceNumber. Voxels are
read with SimpleITK's ``ImageSeriesReader`` over that order (GDCM decodes compressed transfer syntaxes),
so a volume equals what ``ImageSeriesReader`` - and Slicer's DICOM scalar-volume loader, which sorts the
same way - gives for the series.

Headers are read without pixel data (``stop_before_pixels``); nothing here logs patient data: logs name
series by their case id and file counts only.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from activeseg.errors import ImageReadError
from activeseg.io.volumes import Geometry, Volume

__all__ = [
    "SEGMENTATION_STORAGE",
    "DicomSeriesError",
    "DicomInstance",
    "DicomSeries",
    "SkippedSeries",
    "DicomScan",
    "is_dicom_file",
    "display_name_of",
    "read_instance_header",
    "assemble_series",
    "scan_dicom_folder",
    "read_series",
]

logger = logging.getLogger(__name__)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
# Tolerances on header geometry: direction cosines, and slice positions in mm.
ORIENTATION_TOL = 1e-4
POSITION_TOL_MM = 0.01
SPACING_REL_TOL = 0.01


class DicomSeriesError(ImageReadError):
    """A DICOM series that cannot become a 3D volume; the message says why in words."""

    code = "dicom_series"


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` starts with the DICOM Part 10 preamble and ``DICM`` magic."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


@dataclass(frozen=True)
class DicomInstance:
    """What one file's header says (no pixel data).

    Attributes:
        path: the file.
        sop_instance_uid, sop_class_uid: from the dataset, falling back to the file meta when empty.
        study_uid, series_uid, frame_of_reference_uid: "" when the file lacks them (over-anonymised data).
        modality: e.g. "CT", "MR", "SEG".
        position: ImagePositionPatient, LPS mm, or None.
        orientation: ImageOrientationPatient (row cosine, then column cosine), or None.
        pixel_spacing: PixelSpacing as stored: (between rows, between columns) in mm, or None.
        rows, columns: pixel matrix size. frames: NumberOfFrames (1 for single-frame images).
        gantry_tilt: GantryDetectorTilt in degrees (0 when absent).
        description, study_date, series_number: for display only; never logged.
    """

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    modality: str
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    rows: int
    columns: int
    frames: int
    gantry_tilt: float
    description: str = ""
    study_date: str = ""
    series_number: int | None = None

    @property
    def is_image(self) -> bool:
        """A single- or multi-frame pixel image with a patient-space position (not a SEG, SR, DICOMDIR...)."""
        return self.sop_class_uid != SEGMENTATION_STORAGE and self.rows > 0 and self.columns > 0


def read_instance_header(path: Path) -> DicomInstance:
    """Read one file's header.

    Raises:
        ImageReadError: not a readable DICOM file.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ImageReadError(f"{Path(path).name}: not a readable DICOM file ({exc})") from exc
    meta = getattr(ds, "file_meta", None)
    series_number = ds.get("SeriesNumber")
    return DicomInstance(
        path=Path(path),
        sop_instance_uid=str(ds.get("SOPInstanceUID") or (meta.get("MediaStorageSOPInstanceUID") if meta else "") or ""),
        sop_class_uid=str(ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else "") or ""),
        study_uid=str(ds.get("StudyInstanceUID") or ""),
        series_uid=str(ds.get("SeriesInstanceUID") or ""),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID") or ""),
        modality=str(ds.get("Modality") or ""),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        rows=int(ds.get("Rows") or 0),
        columns=int(ds.get("Columns") or 0),
        frames=int(ds.get("NumberOfFrames") or 1),
        gantry_tilt=float(ds.get("GantryDetectorTilt") or 0.0),
        description=str(ds.get("SeriesDescription") or ""),
        study_date=str(ds.get("StudyDate") or ""),
        series_number=int(series_number) if series_number not in (None, "") else None,
    )


@dataclass(frozen=True)
class DicomSeries:
    """One image series that reads as a 3D volume.

    Attributes:
        series_uid, study_uid, frame_of_reference_uid: the series' UIDs. When the files carry no
            SeriesInstanceUID (over-anonymised), ``series_uid`` is a UID derived from the folder and frame of
            reference and ``uids_derived`` is True: such a series imports, but no DICOM SEG can reference it.
        modality, sop_class_uid: of its instances.
        files: the instances, sorted by position along k (ascending).
        sop_instance_uids: in the same order: slice k of the volume is ``sop_instance_uids[k]``.
        geometry: the grid computed from the headers (LPS).
        description, study_date, series_number: display only (may identify a patient's visit: never logged).
    """

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    files: tuple[Path, ...]
    sop_instance_uids: tuple[str, ...]
    geometry: Geometry
    uids_derived: bool = False
    description: str = ""
    study_date: str = ""
    series_number: int | None = None

    @property
    def case_id(self) -> str:
        """A stable, PHI-free case id: modality plus a hash of the SeriesInstanceUID, e.g. ``ct-1a2b3c4d5e6f``."""
        digest = hashlib.sha1(self.series_uid.encode()).hexdigest()[:12]
        return f"{(self.modality or 'img').lower()}-{digest}"

    @property
    def display_name(self) -> str:
        """A name a radiologist recognises (series description and study date), for the queue only."""
        return display_name_of(self.description, self.study_date) or self.case_id


def display_name_of(description: str, study_date: str) -> str:
    """"<SeriesDescription> <StudyDate as YYYY-MM-DD>", or "" when the series has neither.

    Built only from these two attributes, never from patient name, id or birth date; still, it may identify a
    visit, so it is shown to the annotator and never logged.
    """
    date = study_date.strip()
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    return " ".join(part for part in (description.strip(), date) if part)


@dataclass(frozen=True)
class SkippedSeries:
    """A series (or a group of files) that was not imported, and why."""

    series_uid: str
    files: int
    folder: Path
    reason: str

    def sentence(self) -> str:
        """One line for the user (folder and file count, no patient data)."""
        return f"skipped DICOM series in {self.folder} ({self.files} file(s)): {self.reason}"


@dataclass
class DicomScan:
    """Result of :func:`scan_dicom_folder`.

    Attributes:
        series: importable image series, ordered by case id.
        skipped: series not imported, each with its reason.
        segmentations: DICOM SEG files found (candidate labels).
        ignored_files: files that are not DICOM (counted, not listed).
    """

    series: list[DicomSeries] = field(default_factory=list)
    skipped: list[SkippedSeries] = field(default_factory=list)
    segmentations: list[Path] = field(default_factory=list)
    ignored_files: int = 0


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    return np.cross(row, column)


def assemble_series(instances: list[DicomInstance], series_uid: str | None = None, uids_derived: bool = False) -> DicomSeries:
    """Check one series' instances and sort them into a volume's slices.

    Args:
        instances: the files of one series (any order).
        series_uid: the UID to record (default: the instances' own).
        uids_derived: the UID was derived because the files have none.

    Raises:
        DicomSeriesError: the reason the series is not one regular 3D volume.
    """
    if not instances:
        raise DicomSeriesError("no files")
    first = instances[0]
    if not first.is_image:
        raise DicomSeriesError(f"not an image (SOP class {first.sop_class_uid or 'unknown'})")
    if any(i.frames > 1 for i in instances):
        raise DicomSeriesError("multi-frame (enhanced) images are not supported; export the series as single-frame slices")
    if len(instances) < 2:
        raise DicomSeriesError("a single slice, not a 3D volume")
    missing = [name for name, value in (("ImagePositionPatient", first.position), ("ImageOrientationPatient", first.orientation),
                                          ("PixelSpacing", first.pixel_spacing)) if value is None]
    if missing or any(i.position is None or i.orientation is None or i.pixel_spacing is None for i in instances):
        raise DicomSeriesError(f"slices without {', '.join(missing) or 'position, orientation or pixel spacing'} (not a cross-sectional image)")
    uids = [i.sop_instance_uid for i in instances]
    if len(set(uids)) != len(uids):
        raise DicomSeriesError(f"{len(uids) - len(set(uids))} file(s) repeat a SOP Instance UID (copies of the same slice)")
    if len({(i.rows, i.columns) for i in instances}) > 1:
        raise DicomSeriesError(f"slices of different sizes {sorted({(i.rows, i.columns) for i in instances})} (rows, columns)")
    orientation = np.asarray(first.orientation)
    if any(not np.allclose(i.orientation, orientation, atol=ORIENTATION_TOL, rtol=0) for i in instances):  # type: ignore[arg-type]
        raise DicomSeriesError("mixed slice orientations (e.g. a localizer in the series)")
    spacing_in_plane = np.asarray(first.pixel_spacing)
    if any(not np.allclose(i.pixel_spacing, spacing_in_plane, rtol=1e-4, atol=0) for i in instances):  # type: ignore[arg-type]
        raise DicomSeriesError("slices with different pixel spacing")
    normal = _normal(first.orientation)  # type: ignore[arg-type]
    along = np.array([np.dot(i.position, normal) for i in instances])  # type: ignore[arg-type]
    order = np.argsort(along, kind="stable")
    ordered = [instances[int(k)] for k in order]
    positions = np.array([i.position for i in ordered], dtype=float)
    steps = np.diff(positions, axis=0)
    along_steps = steps @ normal
    if np.any(along_steps < POSITION_TOL_MM):
        duplicates = int(np.sum(along_steps < POSITION_TOL_MM))
        raise DicomSeriesError(f"{duplicates} slice(s) share a position with another (several acquisitions or phases in one series)")
    sideways = np.linalg.norm(steps - np.outer(along_steps, normal), axis=1)
    if np.any(sideways > POSITION_TOL_MM + 1e-3 * np.abs(along_steps)):
        tilt = f" (GantryDetectorTilt {first.gantry_tilt:g} degrees)" if first.gantry_tilt else ""
        raise DicomSeriesError(
            f"slice positions are sheared against the slice normal by up to {sideways.max():.2f} mm per slice{tilt}: "
            "a gantry-tilted acquisition, which a regular grid cannot represent without resampling"
        )
    median = float(np.median(along_steps))
    if np.any(np.abs(along_steps - median) > max(POSITION_TOL_MM, SPACING_REL_TOL * median)):
        worst = int(np.argmax(np.abs(along_steps - median)))
        raise DicomSeriesError(
            f"uneven slice spacing: {along_steps[worst]:.3f} mm after slice {worst} where {median:.3f} mm is typical "
            "(missing slices?)"
        )
    row_cosine, column_cosine = orientation[:3], orientation[3:]
    direction = np.column_stack([row_cosine, column_cosine, normal])
    geometry = Geometry(
        size=(first.columns, first.rows, len(ordered)),
        spacing=(float(spacing_in_plane[1]), float(spacing_in_plane[0]), float((along[order[-1]] - along[order[0]]) / (len(ordered) - 1))),
        origin=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in direction.ravel()),
    )
    return DicomSeries(
        series_uid=series_uid or first.series_uid,
        study_uid=first.study_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        modality=first.modality,
        sop_class_uid=first.sop_class_uid,
        files=tuple(i.path for i in ordered),
        sop_instance_uids=tuple(i.sop_instance_uid for i in ordered),
        geometry=geometry,
        uids_derived=uids_derived,
        description=first.description,
        study_date=first.study_date,
        series_number=first.series_number,
    )


def _derived_series_uid(folder: Path, frame_of_reference_uid: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["activeseg-derived-series", str(folder.resolve()), frame_of_reference_uid]))


def scan_dicom_folder(folder: Path, modalities: tuple[str, ...] = ("CT",)) -> DicomScan:
    """Find every image series under ``folder`` (recursively) and check each.

    Args:
        folder: a folder of DICOM files (any layout, any file names).
        modalities: image modalities to import; series of other modalities are skipped with a reason.

    Returns:
        The series found, the skipped ones with reasons, and the DICOM SEG files.

    Raises:
        ImageReadError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageReadError(f"{folder}: not a folder")
    scan = DicomScan()
    groups: dict[tuple[str, str, str], list[DicomInstance]] = defaultdict(list)
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(directory) / name
            if name.startswith(".") or not is_dicom_file(path):
                scan.ignored_files += 1
                continue
            try:
                instance = read_instance_header(path)
            except ImageReadError as exc:
                scan.skipped.append(SkippedSeries("", 1, path.parent, str(exc)))
                continue
            if instance.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
                scan.ignored_files += 1
            elif instance.sop_class_uid == SEGMENTATION_STORAGE:
                scan.segmentations.append(path)
            elif instance.series_uid:
                groups[(instance.series_uid, "", "")].append(instance)
            else:  # no SeriesInstanceUID: group by folder and frame of reference, and say so
                groups[("", str(path.parent), instance.frame_of_reference_uid)].append(instance)
    for (series_uid, where, frame_of_reference), instances in groups.items():
        where_path = Path(where) if where else instances[0].path.parent
        derived = not series_uid
        if derived:
            series_uid = _derived_series_uid(where_path, frame_of_reference)
        modality = instances[0].modality
        if instances[0].is_image and modality.upper() not in {m.upper() for m in modalities}:
            scan.skipped.append(SkippedSeries(series_uid, len(instances), where_path,
                                              f"modality {modality or 'unknown'} is not imported (only {', '.join(modalities)})"))
            continue
        try:
            series = assemble_series(instances, series_uid, uids_derived=derived)
        except DicomSeriesError as exc:
            scan.skipped.append(SkippedSeries(series_uid, len(instances), where_path, str(exc)))
            continue
        if derived:
            logger.warning("series %s in %s has no SeriesInstanceUID: grouped by folder and frame of reference",
                           series.case_id, where_path)
        scan.series.append(series)
    scan.series.sort(key=lambda s: s.case_id)
    return scan


def read_series(series: DicomSeries) -> Volume:
    """Read a checked series' voxels with SimpleITK ``ImageSeriesReader`` (stored values after the
    modality rescale, e.g. Hounsfield units for CT; dtype as SimpleITK chooses it).

    Returns:
        The volume, (k, j, i) array, geometry as ``ImageSeriesReader`` reports it (LPS).

    Raises:
        DicomSeriesError: the pixel data cannot be decoded, or the decoded grid disagrees with the headers.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in series.files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DicomSeriesError(f"series {series.case_id}: pixel data could not be decoded ({last})") from exc
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DicomSeriesError(f"series {series.case_id}: not a single-component 3D image")
    geometry = Geometry.of(image)
    expected = series.geometry
    if geometry.size != expected.size or not (
        np.allclose(geometry.spacing, expected.spacing, rtol=1e-4, atol=1e-6)
        and np.allclose(geometry.origin, expected.origin, rtol=0, atol=POSITION_TOL_MM)
        and np.allclose(geometry.direction, expected.direction, rtol=0, atol=ORIENTATION_TOL)
    ):
        raise DicomSeriesError(
            f"series {series.case_id}: decoded grid {geometry.to_json()} disagrees with its headers {expected.to_json()}"
        )
    return Volume(sitk.GetArrayFromImage(image), geometry)
