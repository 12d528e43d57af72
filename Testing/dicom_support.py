"""Small synthetic DICOM CT series for tests (no shared data needed), and a repaired copy of the shared
TotalSegmentator series (its files carry no Study/Series/SOP Instance UIDs, which a PACS refuses)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["SHARED_DATA", "TOTALSEG_DICOM", "DCMQI", "PHI_VALUES", "write_ct_series", "repaired_totalsegmentator_series",
           "named_series_folder"]

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TOTALSEG_DICOM = SHARED_DATA / "totalsegmentator_ct" / "example_ct_dicom"
DCMQI = SHARED_DATA / "dcmqi_ct_dicomseg"
#: Patient name, id and birth date that :func:`named_series_folder` writes into its synthetic headers: tests check
#: that none reaches a display name, a response or a log.
PHI_VALUES = ("Doe^Jane", "PID-4711-X", "19510203")


def write_ct_series(
    folder: Path,
    *,
    slices: int = 6,
    rows: int = 12,
    columns: int = 16,
    spacing: tuple[float, float, float] = (0.8, 0.7, 2.5),
    origin: Sequence[float] = (-100.0, -80.0, 40.0),
    row_cosine: Sequence[float] = (1.0, 0.0, 0.0),
    column_cosine: Sequence[float] = (0.0, 1.0, 0.0),
    positions: Sequence[Sequence[float]] | None = None,
    orientations: Sequence[Sequence[float]] | None = None,
    modality: str = "CT",
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
    names: Sequence[str] | None = None,
) -> tuple[np.ndarray, list[Path]]:
    """Write an uncompressed single-frame CT series (int16 HU-like values, rescale intercept -1024).

    Args:
        spacing: (i, j, k) mm: column spacing, row spacing, slice step along the normal.
        positions / orientations: per-slice overrides (for broken series).
        names: file names per slice (default: shuffled, so order never comes from names).

    Returns:
        The HU array (k, j, i) in ascending slice order, and the written paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hu = rng.integers(-1000, 1500, size=(slices, rows, columns)).astype(np.int16)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    normal = np.cross(row_cosine, column_cosine)
    order = rng.permutation(slices)
    paths = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        name = names[k] if names else f"IMG{order[k]:04d}.dcm"
        ds = FileDataset(str(folder / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientName = "Synthetic^Phantom"
        ds.PatientID = "SYNTH-0001"
        ds.StudyDate = "20240102"
        ds.SeriesDescription = "Synthetic CT"
        ds.SeriesNumber = 3
        ds.InstanceNumber = int(order[k]) + 1
        position = positions[k] if positions else np.asarray(origin) + k * spacing[2] * normal
        ds.ImagePositionPatient = [f"{float(v):.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{float(v):.6f}" for v in (orientations[k] if orientations else [*row_cosine, *column_cosine])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        ds.PixelData = (hu[k].astype(np.int32) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / name, enforce_file_format=True)
        paths.append(folder / name)
    return hu, paths


def repaired_totalsegmentator_series(folder: Path) -> Path:
    """Copy the shared 20-slice TotalSegmentator series into ``folder`` with the UIDs it lacks filled in
    (SOP Class/Instance UID from its file meta; Study/Series UID derived from its frame of reference).
    Pixel data (JPEG 2000) is copied unchanged."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(TOTALSEG_DICOM.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", ds.FrameOfReferenceUID])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", ds.FrameOfReferenceUID])
        ds.PatientID = "TOTALSEG-EXAMPLE"
        ds.save_as(folder / path.name, enforce_file_format=True)
    return folder


def named_series_folder(folder: Path) -> set[str | None]:
    """A DICOM folder of three CT series, for display-name tests (needs ../shared/data: callers skip without it).

    ``totalseg/``: the shared 20-slice TotalSegmentator series (SeriesDescription "CT Body 3.0", StudyDate
    20221208); ``named/``: a synthetic series ("Synthetic CT", 20240102); ``nameless/``: a synthetic series with
    neither SeriesDescription nor StudyDate. Both synthetic series carry :data:`PHI_VALUES` as PatientName,
    PatientID and PatientBirthDate.

    Returns:
        The display names the three cases should get (``None`` for the nameless one).
    """
    import shutil

    shutil.copytree(TOTALSEG_DICOM, folder / "totalseg")
    for name, seed in (("named", 1), ("nameless", 2)):
        _, paths = write_ct_series(folder / name, seed=seed)
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.PatientName, ds.PatientID, ds.PatientBirthDate = PHI_VALUES
            if name == "nameless":
                del ds.SeriesDescription, ds.StudyDate
            ds.save_as(path, enforce_file_format=True)
    return {"CT Body 3.0 2022-12-08", "Synthetic CT 2024-01-02", None}
