"""Labelmaps <-> DICOM Segmentation objects (DICOM SEG), written with ``highdicom``, read geometrically.

Writing: a (k, j, i) labelmap on a series' grid becomes a BINARY Segmentation that references the
series' instances frame by frame, one segment per configured label (names from the config, colours as in
the ``.seg.nrrd`` files, coded with SNOMED CT where the name maps to a standard concept, otherwise with a
private ``99ACTIVESEG`` code).

Reading: every frame of a SEG is placed on the referenced series' grid by its ImagePositionPatient,
after checking that the SEG refers to that series (or at least its frame of reference) and has the same
orientation, pixel spacing and matrix size; anything that does not match is refused with a
:class:`~activeseg.errors.GeometryMismatchError` naming it. Segments map to label values by name
(case-insensitive), falling back to the segment number, as ``seg_nrrd.read_segmentation_labelmap`` does.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from activeseg.errors import GeometryMismatchError, ImageReadError, LabelValueError
from activeseg.io.dicom_series import SEGMENTATION_STORAGE, DicomSeries, DicomSeriesError
from activeseg.io.seg_nrrd import SEGMENT_COLOURS
from activeseg.io.volumes import Volume

__all__ = ["PRIVATE_SCHEME", "segment_codes", "build_dicom_seg", "read_dicom_seg", "segment_names"]

logger = logging.getLogger(__name__)
# highdicom logs every attribute copy at INFO, naming source UIDs: keep it to warnings.
logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger("highdicom").level))

PRIVATE_SCHEME = "99ACTIVESEG"
# Names (lower case) whose SNOMED CT concept is a lesion rather than normal anatomy.
_ABNORMAL = {"lesion", "tumor", "tumour", "neoplasm", "nodule", "mass", "cyst", "metastasis"}
_ALIASES = {"tumour": "Tumor", "spinal cord": "SpinalCord", "vertebrae": "Vertebra", "kidneys": "Kidney",
            "lungs": "Lung", "urinary bladder": "Bladder"}


def segment_codes(name: str) -> tuple[object, object]:
    """(category, type) codes of a segment name: SNOMED CT when pydicom's dictionary knows the concept
    (e.g. "liver" -> SCT 10200004, "lesion" -> SCT 52988006), else a private code carrying the name."""
    from highdicom.sr.coding import CodedConcept
    from pydicom.sr.codedict import codes

    key = name.strip()
    candidate = _ALIASES.get(key.lower(), "".join(part.capitalize() for part in key.replace("_", " ").replace("-", " ").split()))
    try:
        concept = getattr(codes.SCT, candidate)
    except AttributeError:
        concept = None
    category = codes.SCT.MorphologicallyAbnormalStructure if key.lower() in _ABNORMAL else codes.SCT.AnatomicalStructure
    if concept is None:
        safe = "".join(ch for ch in key.upper() if ch.isalnum() or ch in "_-")[:16] or "SEGMENT"
        return codes.SCT.Tissue, CodedConcept(value=safe, scheme_designator=PRIVATE_SCHEME, meaning=key[:64] or "segment")
    return category, concept


# Type 2 attributes of the Patient and General Study modules, which a SEG copies from its source: they may
# be empty but must be present, and anonymisers often drop them.
_TYPE2_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                 "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _clean_source(ds: Dataset) -> Dataset:
    """A copy of a source header that highdicom accepts: an empty SpecificCharacterSet means the default
    repertoire, and missing type 2 patient/study attributes are present but empty."""
    ds = copy.deepcopy(ds)
    if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
        del ds.SpecificCharacterSet
    for keyword in _TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def build_dicom_seg(
    labelmap: np.ndarray,
    source_images: Sequence[Dataset],
    labels: dict[int, str],
    *,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int = 9001,
    series_description: str = "ActiveSeg label",
    algorithm_type: str = "MANUAL",
    software_version: str = "",
) -> Dataset:
    """A DICOM SEG of ``labelmap`` over ``source_images``.

    Args:
        labelmap: (k, j, i) class values on the series' grid; slice k is ``source_images[k]``.
        source_images: the series' headers (pixel data not needed), in the volume's slice order.
        labels: class value -> segment name; every class becomes a segment (numbered 1..N in value order),
            empty ones too, so a "no finding" label is a valid, all-empty SEG.
        series_instance_uid, sop_instance_uid: the SEG's UIDs (fixed by the caller, so a retried store of
            the same label is the same instance, which a PACS stores once).
        series_number, series_description: shown in PACS viewers.
        algorithm_type: "MANUAL" for an expert label, "SEMIAUTOMATIC" for an accepted pseudo-label.
        software_version: ActiveSeg's version, recorded in the SEG.

    Raises:
        DicomSeriesError: the sources lack the UIDs a SEG must reference.
        LabelValueError: shape or values do not fit the sources and label set.
    """
    import highdicom as hd

    if labelmap.ndim != 3 or labelmap.shape[0] != len(source_images):
        raise LabelValueError(f"labelmap shape {labelmap.shape} (k, j, i) does not match {len(source_images)} source slices")
    first = source_images[0]
    if (int(first.Rows), int(first.Columns)) != tuple(labelmap.shape[1:]):
        raise LabelValueError(f"labelmap slices {labelmap.shape[1:]} != source images ({first.Rows}, {first.Columns}) (rows, columns)")
    for attribute in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        if any(not ds.get(attribute) for ds in source_images):
            raise DicomSeriesError(f"the source series lacks {attribute}: a DICOM SEG cannot reference it")
    values = sorted(labels)
    extra = set(np.unique(labelmap).tolist()) - {0, *values}
    if extra:
        raise LabelValueError(f"labelmap has values {sorted(extra)[:10]} outside the label set {values}")
    segment_of = np.zeros(max(values) + 1, dtype=np.uint16)
    descriptions = []
    algorithm = None
    if algorithm_type != "MANUAL":
        from pydicom.sr.codedict import codes

        algorithm = hd.AlgorithmIdentificationSequence(
            name="ActiveSeg", family=codes.cid7162.ArtificialIntelligence, version=software_version or "unknown"
        )
    for number, value in enumerate(values, start=1):
        segment_of[value] = number
        category, kind = segment_codes(labels[value])
        red, green, blue = SEGMENT_COLOURS[(number - 1) % len(SEGMENT_COLOURS)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=labels[value][:64],
            segmented_property_category=category,
            segmented_property_type=kind,
            algorithm_type=algorithm_type,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
        ))
    segments = segment_of[labelmap.astype(np.intp)].astype(np.uint16)
    return hd.seg.Segmentation(
        source_images=[_clean_source(ds) for ds in source_images],
        pixel_array=segments,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="ActiveSeg",
        manufacturer_model_name="ActiveSeg",
        software_versions=software_version or "unknown",
        device_serial_number="0",
        series_description=series_description[:64],
        omit_empty_frames=False,
    )


def _open(seg: Path | Dataset) -> Dataset:
    if isinstance(seg, Dataset):
        ds = seg
        name = "DICOM SEG"
    else:
        name = Path(seg).name
        try:
            ds = pydicom.dcmread(seg)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise ImageReadError(f"{name}: not a readable DICOM file ({exc})") from exc
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise ImageReadError(f"{name}: not a DICOM Segmentation (SOP class {ds.get('SOPClassUID', 'missing')})")
    return ds


def segment_names(seg: Path | Dataset) -> dict[int, str]:
    """Segment number -> segment label of a DICOM SEG.

    Raises:
        ImageReadError: not a readable DICOM SEG.
    """
    ds = _open(seg)
    return {int(item.SegmentNumber): str(item.get("SegmentLabel", f"Segment {item.SegmentNumber}")) for item in ds.SegmentSequence}


def _frame_attribute(ds: Dataset, frame: Dataset, sequence: str, attribute: str) -> object:
    for source in (frame, ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]):
        if sequence in source and attribute in source[sequence].value[0]:
            return source[sequence].value[0][attribute].value
    return None


def read_dicom_seg(seg: Path | Dataset, series: DicomSeries, labels: dict[int, str]) -> Volume:
    """Map a DICOM SEG onto ``series``' grid as a (k, j, i) uint8 labelmap of ``labels``' values.

    Args:
        seg: a SEG file or dataset.
        series: the image series it should lie on (its geometry and UIDs).
        labels: the datastore's class value -> name.

    Raises:
        ImageReadError: not a readable DICOM SEG.
        GeometryMismatchError: another series or frame of reference, or orientation, spacing, matrix size or a
            frame position that does not fit the series' grid (the message names it).
        LabelValueError: a segment whose name and number match no label, or overlapping segments.
    """
    ds = _open(seg)
    name = Path(seg).name if not isinstance(seg, Dataset) else "DICOM SEG"
    referenced = [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", [])]
    if referenced and series.series_uid not in referenced:
        raise GeometryMismatchError(f"{name}: references series {referenced}, not series {series.series_uid} of case {series.case_id}")
    frame_of_reference = str(ds.get("FrameOfReferenceUID", ""))
    if frame_of_reference and series.frame_of_reference_uid and frame_of_reference != series.frame_of_reference_uid:
        raise GeometryMismatchError(f"{name}: frame of reference {frame_of_reference} != the series' {series.frame_of_reference_uid}")
    geometry = series.geometry
    if (int(ds.Columns), int(ds.Rows)) != geometry.size[:2]:
        raise GeometryMismatchError(f"{name}: {ds.Columns}x{ds.Rows} columns x rows != the series' {geometry.size[0]}x{geometry.size[1]}")
    direction = np.asarray(geometry.direction).reshape(3, 3)
    origin = np.asarray(geometry.origin)
    by_name = {label.lower(): value for value, label in labels.items()}
    value_of: dict[int, int] = {}
    for number, label in segment_names(ds).items():
        value = by_name.get(label.lower(), number if number in labels else None)
        if value is None:
            raise LabelValueError(f"{name}: segment {number} {label!r} matches no label in {sorted(labels.values())}")
        value_of[number] = value
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    kind = str(ds.get("SegmentationType", "BINARY"))
    if kind == "FRACTIONAL":
        pixels = pixels >= 0.5 * float(ds.get("MaximumFractionalValue", 255))
    labelmap = np.zeros(geometry.array_shape, dtype=np.uint8)
    owner = np.zeros(geometry.array_shape, dtype=np.uint16)  # segment number that set each voxel
    for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        orientation = _frame_attribute(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
        if orientation is None or not np.allclose([float(v) for v in orientation], direction[:, :2].T.ravel(), atol=1e-4, rtol=0):
            raise GeometryMismatchError(f"{name}: frame {index + 1} orientation {orientation} != the series' {direction[:, :2].T.ravel().tolist()}")
        spacing = _frame_attribute(ds, frame, "PixelMeasuresSequence", "PixelSpacing")
        if spacing is None or not np.allclose([float(spacing[1]), float(spacing[0])], geometry.spacing[:2], rtol=1e-3, atol=0):
            raise GeometryMismatchError(f"{name}: frame {index + 1} pixel spacing {spacing} mm != the series' {list(geometry.spacing[:2])} mm (i, j)")
        position = _frame_attribute(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
        if position is None:
            raise GeometryMismatchError(f"{name}: frame {index + 1} has no ImagePositionPatient")
        offset = np.linalg.solve(direction * np.asarray(geometry.spacing), np.asarray([float(v) for v in position]) - origin)
        k = int(round(offset[2]))
        if np.any(np.abs(offset[:2]) > 0.05) or abs(offset[2] - k) > 0.05 or not 0 <= k < geometry.size[2]:
            raise GeometryMismatchError(
                f"{name}: frame {index + 1} at {[round(float(v), 3) for v in position]} (LPS mm) lies on no slice of case {series.case_id}"
            )
        if kind == "LABELMAP":
            for number in np.unique(pixels[index]):
                if number:
                    labelmap[k][pixels[index] == number] = value_of[int(number)]
            continue
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        mask = pixels[index].astype(bool)
        clash = mask & (owner[k] != 0) & (owner[k] != number)
        if clash.any() and value_of[int(owner[k][clash][0])] != value_of[number]:
            other = int(owner[k][clash][0])
            raise LabelValueError(f"{name}: segments {other} and {number} overlap in {int(clash.sum())} voxel(s) of slice {k}; "
                                  "a label needs one class per voxel")
        labelmap[k][mask] = value_of[number]
        owner[k][mask] = number
    return Volume(labelmap, geometry)

