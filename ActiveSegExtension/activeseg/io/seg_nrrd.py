"""Labelmaps <-> 3D Slicer segmentation files (``.seg.nrrd``), through ``slicerio``.

A ``.seg.nrrd`` written here loads in Slicer as a ``vtkMRMLSegmentationNode`` with one segment per
class (names and colours from the label set), on exactly the image's voxel grid. Segments are written
in class order into one layer, so each segment's ``labelValue`` equals its class value.

Array conventions: labelmaps are (k, j, i) like SimpleITK; ``slicerio`` voxels are (i, j, k); geometry is LPS.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import slicerio

from activeseg.errors import ImageReadError, LabelValueError, NotThreeDimensionalError
from activeseg.io.volumes import Geometry, Volume

__all__ = ["SEGMENT_COLOURS", "ijk_to_lps_matrix", "geometry_from_ijk_to_lps", "write_segmentation_file",
           "read_segmentation_labelmap", "segmentation_bytes"]

# RGB in [0, 1]; the first entries follow Slicer's terminology colours for lung and a lesion (yellow).
SEGMENT_COLOURS = [
    (0.77, 0.42, 0.45),
    (0.95, 0.85, 0.27),
    (0.30, 0.69, 0.29),
    (0.22, 0.49, 0.72),
    (0.60, 0.31, 0.64),
    (1.00, 0.50, 0.00),
]


def ijk_to_lps_matrix(geometry: Geometry) -> np.ndarray:
    """4x4 matrix mapping voxel (i, j, k, 1) to LPS mm."""
    direction = np.asarray(geometry.direction, dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.asarray(geometry.spacing, dtype=float)[np.newaxis, :]
    matrix[:3, 3] = geometry.origin
    return matrix


def geometry_from_ijk_to_lps(matrix: np.ndarray, size_ijk: tuple[int, int, int]) -> Geometry:
    """Inverse of :func:`ijk_to_lps_matrix` (spacing = column norms)."""
    columns = np.asarray(matrix, dtype=float)[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    direction = columns / spacing[np.newaxis, :]
    return Geometry(
        size=tuple(int(s) for s in size_ijk),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in np.asarray(matrix, dtype=float)[:3, 3]),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in direction.ravel()),
    )


def write_segmentation_file(path: Path, labelmap: np.ndarray, geometry: Geometry, labels: dict[int, str]) -> None:
    """Write a labelmap as a Slicer ``.seg.nrrd`` (not atomic by itself: wrap in ``atomic_write``).

    Args:
        path: output path ending in ``.seg.nrrd``.
        labelmap: (k, j, i) integer classes, 0 = background.
        geometry: the image's grid (LPS).
        labels: class value -> segment name; every class gets a segment (empty ones too).
    """
    if tuple(labelmap.shape) != geometry.array_shape:
        raise LabelValueError(f"labelmap shape {labelmap.shape} != image grid {geometry.array_shape} (k, j, i)")
    voxels_ijk = np.ascontiguousarray(np.transpose(labelmap, (2, 1, 0)))
    segmentation = slicerio.create_segmentation(voxels_ijk.shape, ijk_to_lps_matrix(geometry))
    for index, value in enumerate(sorted(labels)):
        colour = SEGMENT_COLOURS[index % len(SEGMENT_COLOURS)]
        slicerio.add_segment(
            segmentation,
            voxels_ijk == value,
            {"id": f"Segment_{value}", "name": labels[value], "color": list(colour)},
        )
    slicerio.write_segmentation(str(path), segmentation)


def read_segmentation_labelmap(path: Path, labels: dict[int, str]) -> Volume:
    """Read a ``.seg.nrrd`` (from ActiveSeg or Slicer) into a (k, j, i) uint8 labelmap of ``labels``' values.

    Segments are matched to classes by name (case-insensitive), falling back to their label value when no
    name matches. Overlapping segments (several layers) are flattened in class order.

    Raises:
        ImageReadError: not a readable segmentation file.
        LabelValueError: a segment whose name and value match no class.
    """
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # noqa: BLE001 - slicerio/pynrrd raise many types for a bad file
        raise ImageReadError(f"{Path(path).name}: not a readable segmentation file ({exc})") from exc
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim not in (3, 4):
        raise NotThreeDimensionalError(f"{Path(path).name}: segmentation voxels have {voxels.ndim} dimensions")
    spatial = voxels.shape[-3:]
    by_name = {name.lower(): value for value, name in labels.items()}
    labelmap_ijk = np.zeros(spatial, dtype=np.uint8)
    for segment in segmentation.get("segments", []):
        value = by_name.get(str(segment.get("name", "")).lower())
        if value is None:
            value = int(segment.get("labelValue", 0))
            if value not in labels:
                raise LabelValueError(
                    f"{Path(path).name}: segment {segment.get('name')!r} matches no label in {sorted(labels.values())}"
                )
        layer = voxels[segment.get("layer", 0)] if voxels.ndim == 4 else voxels
        labelmap_ijk[layer == int(segment["labelValue"])] = value
    geometry = geometry_from_ijk_to_lps(np.asarray(segmentation["ijkToLPS"]), spatial)
    return Volume(np.ascontiguousarray(np.transpose(labelmap_ijk, (2, 1, 0))), geometry)


def segmentation_bytes(labelmap: np.ndarray, geometry: Geometry, labels: dict[int, str]) -> bytes:
    """A ``.seg.nrrd`` file's bytes (for HTTP download of an expert label)."""
    fd, name = tempfile.mkstemp(suffix=".seg.nrrd")
    os.close(fd)
    try:
        write_segmentation_file(Path(name), labelmap, geometry, labels)
        return Path(name).read_bytes()
    finally:
        os.unlink(name)
