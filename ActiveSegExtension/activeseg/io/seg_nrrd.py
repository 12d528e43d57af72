"""Labelmaps <-> 3D Slicer segmentation files (``.seg.nrrd``), through ``slicerio``.

A ``.seg.nrrd`` written here loads in Slicer as a ``vtkMRMLSegmentationNode`` with one segment per
class, on exactly the image's voxel grid. Segments are written in class order into one layer (with classes
1..N, each segment's ``labelValue`` equals its class value). Each segment's name, colour and coded concept come
from one :class:`SegmentStyle` per class, built from the datastore's settings by :func:`segment_styles`:
configured colours (``label_colours``), else a palette that gives any number of classes distinct colours;
a class with a code (``label_codes`` or a known name) carries Slicer terminology, so Slicer shows the term.

Array conventions: labelmaps are (k, j, i) like SimpleITK; ``slicerio`` voxels are (i, j, k); geometry is LPS.
"""

from __future__ import annotations

import colorsys
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicerio

from activeseg.config import Config
from activeseg.errors import GeometryMismatchError, ImageReadError, LabelValueError, NotThreeDimensionalError
from activeseg.io.volumes import Geometry, Volume

__all__ = ["SEGMENT_COLOURS", "TERMINOLOGY_CONTEXT", "SegmentStyle", "palette_colour", "segment_styles",
           "segment_terminology", "ijk_to_lps_matrix", "geometry_from_ijk_to_lps", "write_segmentation_file",
           "place_on_grid", "read_segmentation_labelmap", "segmentation_bytes"]

# RGB in [0, 1]; the first entries follow Slicer's terminology colours for lung and a lesion (yellow).
SEGMENT_COLOURS = [
    (0.77, 0.42, 0.45),
    (0.95, 0.85, 0.27),
    (0.30, 0.69, 0.29),
    (0.22, 0.49, 0.72),
    (0.60, 0.31, 0.64),
    (1.00, 0.50, 0.00),
]

#: Slicer's terminology context whose category and type codes ActiveSeg writes (Slicer's default list).
TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMICAL_STRUCTURE = ("SCT", "123037004", "Anatomical Structure")
_ALTERED_STRUCTURE = ("SCT", "49755003", "Morphologically Altered Structure")
#: SNOMED CT types that are findings rather than normal anatomy (category "Morphologically Altered Structure"):
#: lesion, neoplasm, nodule, mass, cyst, metastasis (as in Slicer's General Anatomy list).
_ALTERED_TYPES = {("SCT", "52988006"), ("SCT", "108369006"), ("SCT", "27925004"), ("SCT", "4147007"),
                  ("SCT", "441457006"), ("SCT", "14799000")}

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class SegmentStyle:
    """How one class appears as a segment.

    Attributes:
        name: the segment name (the class name).
        colour: RGB in [0, 1].
        code: the class's coded concept ``(scheme, value, meaning)``, e.g. ``("SCT", "10200004", "Liver")``,
            or ``None`` when it has none.
    """

    name: str
    colour: RGB
    code: tuple[str, str, str] | None = None


def palette_colour(index: int) -> RGB:
    """The default colour of the class at position ``index`` (0-based, in class order), RGB in [0, 1].

    The first ones are :data:`SEGMENT_COLOURS`; after them hues advance by the golden ratio of a turn, so every
    index gets its own colour (none repeats, whatever the number of classes) and a class keeps its colour
    when classes are added after it. Saturation and value alternate so neighbours also differ in brightness.
    """
    if index < 0:
        raise ValueError(f"palette index must be >= 0, got {index}")
    if index < len(SEGMENT_COLOURS):
        return SEGMENT_COLOURS[index]
    step = index - len(SEGMENT_COLOURS)
    hue = (0.11 + step * 0.6180339887498949) % 1.0
    saturation, value = (0.65, 0.95) if step % 2 == 0 else (0.80, 0.70)
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return (round(red, 4), round(green, 4), round(blue, 4))


def _colour_key(colour: RGB) -> tuple[int, int, int]:
    """A colour as 8-bit channels, so colours that look the same compare equal."""
    return tuple(int(round(c * 255)) for c in colour)  # type: ignore[return-value]


def segment_styles(labels: Config | Mapping[int, str]) -> dict[int, SegmentStyle]:
    """Every class's segment style; the one place segment names, colours and codes are decided.

    Args:
        labels: the datastore's settings (their ``labels``, ``colour(value)`` and ``code(value)``), or bare class
            names by value (default colours; codes of known names, :data:`activeseg.config.KNOWN_TERMS`).

    Returns:
        class value -> style, in class order. A class without a configured colour takes :func:`palette_colour` of
        its position, or the next palette colour that no other class has yet: all colours differ unless the
        configuration itself repeats one.
    """
    config = labels if isinstance(labels, Config) else Config(labels={int(k): str(v) for k, v in labels.items()})
    order = sorted(config.labels)
    chosen = {value: tuple(float(c) for c in colour) for value in order if (colour := config.colour(value))}
    taken = {_colour_key(colour) for colour in chosen.values()}  # type: ignore[arg-type]
    styles: dict[int, SegmentStyle] = {}
    for position, value in enumerate(order):
        colour = chosen.get(value)
        if colour is None:
            index = position
            while _colour_key(palette_colour(index)) in taken:
                index += 1
            colour = palette_colour(index)
            taken.add(_colour_key(colour))
        code = config.code(value)
        parts = tuple(part.strip() for part in code.split("^")) if code else None
        styles[value] = SegmentStyle(name=config.labels[value], colour=colour,  # type: ignore[arg-type]
                                     code=parts if parts and len(parts) == 3 else None)  # type: ignore[arg-type]
    return styles


def segment_terminology(code: tuple[str, str, str]) -> dict[str, object]:
    """slicerio's ``terminology`` dict for a coded concept: written as the segment's ``TerminologyEntry`` tag
    (``context~category~type~^^~~^^~^^``), which Slicer reads to show the term. Findings (lesion, neoplasm,
    nodule, mass...) get the category "Morphologically Altered Structure", everything else "Anatomical
    Structure"."""
    category = _ALTERED_STRUCTURE if (code[0], code[1]) in _ALTERED_TYPES else _ANATOMICAL_STRUCTURE
    return {"contextName": TERMINOLOGY_CONTEXT, "category": list(category), "type": list(code)}


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


def write_segmentation_file(path: Path, labelmap: np.ndarray, geometry: Geometry,
                            labels: Config | Mapping[int, str] | Mapping[int, SegmentStyle]) -> None:
    """Write a labelmap as a Slicer ``.seg.nrrd`` (not atomic by itself: wrap in ``atomic_write``).

    Args:
        path: output path ending in ``.seg.nrrd``.
        labelmap: (k, j, i) integer classes, 0 = background.
        geometry: the image's grid (LPS).
        labels: the datastore's settings (names, colours and codes: pass ``store.config``), their
            :func:`segment_styles`, or bare class names (default colours). Every class gets a segment (empty ones
            too), with its colour and, where it has a code, its terminology; names and colours are marked as
            chosen (not auto-generated), so Slicer keeps them.
    """
    if tuple(labelmap.shape) != geometry.array_shape:
        raise LabelValueError(f"labelmap shape {labelmap.shape} != image grid {geometry.array_shape} (k, j, i)")
    styles = _styles(labels)
    voxels_ijk = np.ascontiguousarray(np.transpose(labelmap, (2, 1, 0)))
    segmentation = slicerio.create_segmentation(voxels_ijk.shape, ijk_to_lps_matrix(geometry))
    for value in sorted(styles):
        style = styles[value]
        segment: dict[str, object] = {
            "id": f"Segment_{value}", "name": style.name, "color": [float(c) for c in style.colour],
            "nameAutoGenerated": False, "colorAutoGenerated": False,
        }
        if style.code is not None:
            segment["terminology"] = segment_terminology(style.code)
        slicerio.add_segment(segmentation, voxels_ijk == value, segment)
    slicerio.write_segmentation(str(path), segmentation)


def _styles(labels: Config | Mapping[int, str] | Mapping[int, SegmentStyle]) -> dict[int, SegmentStyle]:
    """Styles for :func:`write_segmentation_file` from any of the forms it accepts."""
    if not isinstance(labels, Config) and labels and all(isinstance(v, SegmentStyle) for v in labels.values()):
        return {int(k): v for k, v in labels.items()}  # type: ignore[misc]
    return segment_styles(labels)  # type: ignore[arg-type]


def _class_of(segment: dict, by_name: dict[str, int]) -> int | None:
    """The class a segment maps to: by its name, else by its terminology type's meaning (case-insensitive)."""
    value = by_name.get(str(segment.get("name", "")).strip().lower())
    if value is not None:
        return value
    terminology = segment.get("terminology")
    if isinstance(terminology, dict):
        for key in ("type", "typeModifier"):
            code = terminology.get(key)
            if isinstance(code, (list, tuple)) and len(code) >= 3:
                value = by_name.get(str(code[2]).strip().lower())
                if value is not None:
                    return value
    return None


def place_on_grid(labelmap_ijk: np.ndarray, geometry: Geometry, reference: Geometry, what: str) -> np.ndarray:
    """Pad (or crop) a labelmap onto a reference grid it is a translated sub-grid of.

    Slicer saves a ``.seg.nrrd`` cropped to its segments' extent by default: same spacing and direction as the
    image, an origin moved by whole voxels. This puts such a labelmap back on the image's grid.

    Args:
        labelmap_ijk: (i, j, k) labelmap on ``geometry``.
        geometry: its grid (LPS).
        reference: the image's grid (LPS).
        what: how to name the file in errors.

    Returns:
        An (i, j, k) array of ``reference.size``; voxels the labelmap does not cover are 0.

    Raises:
        GeometryMismatchError: spacing or direction differ, the origin is not shifted by whole voxels, or
            labelled voxels fall outside the reference grid.
    """
    if not np.allclose(geometry.spacing, reference.spacing, rtol=1e-3, atol=0):
        raise GeometryMismatchError(f"{what}: spacing {geometry.spacing} mm != image spacing {reference.spacing} mm")
    if not np.allclose(geometry.direction, reference.direction, rtol=0, atol=1e-4):
        raise GeometryMismatchError(f"{what}: direction {geometry.direction} != image direction {reference.direction}")
    matrix = ijk_to_lps_matrix(reference)
    shift = np.linalg.solve(matrix[:3, :3], np.asarray(geometry.origin) - np.asarray(reference.origin))
    offset = np.round(shift).astype(int)
    if not np.allclose(matrix[:3, :3] @ offset, np.asarray(geometry.origin) - np.asarray(reference.origin), atol=1e-2):
        raise GeometryMismatchError(
            f"{what}: origin {geometry.origin} is not on the image's voxel grid (origin {reference.origin}, LPS mm)"
        )
    out = np.zeros(reference.size, dtype=labelmap_ijk.dtype)
    source = []
    target = []
    for axis in range(3):
        start = max(0, -offset[axis])
        stop = min(labelmap_ijk.shape[axis], reference.size[axis] - offset[axis])
        if stop <= start:
            start = stop = 0
        source.append(slice(start, stop))
        target.append(slice(start + offset[axis], stop + offset[axis]) if stop > start else slice(0, 0))
    inside = labelmap_ijk[tuple(source)]
    if np.count_nonzero(inside) != np.count_nonzero(labelmap_ijk):
        raise GeometryMismatchError(
            f"{what}: labelled voxels lie outside the image (segmentation extent {geometry.size} at voxel offset "
            f"{offset.tolist()} of an image of {reference.size}, i, j, k)"
        )
    out[tuple(target)] = inside
    return out


def read_segmentation_labelmap(
    path: Path, labels: dict[int, str], reference: Geometry | None = None, what: str | None = None
) -> Volume:
    """Read a ``.seg.nrrd`` (from ActiveSeg or Slicer) into a (k, j, i) uint8 labelmap of ``labels``' values.

    Each segment maps to the class whose name equals the segment's name or its terminology type's meaning
    (case-insensitive). Where segments overlap (several layers), the class with the higher value wins (the
    documented class order: e.g. a lesion inside the lung stays a lesion), whatever the segments' file order.

    Args:
        path: the file (already checked by :func:`activeseg.io.nrrd_header.check_nrrd_complete` if untrusted).
        labels: class value -> class name.
        reference: the image's grid; a segmentation cropped to its segments' extent (Slicer's default) is
            padded onto it. ``None``: the file's own grid is returned.
        what: how to name the file in errors (default: its name).

    Raises:
        ImageReadError: not a readable segmentation file.
        LabelValueError: no segment metadata (a plain labelmap), a segment that matches no class, a segment with
            a label value below 1 or a layer that does not exist, or voxels that belong to no segment.
        GeometryMismatchError: a grid that cannot be placed on ``reference``.
    """
    name = what or Path(path).name
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # noqa: BLE001 - slicerio/pynrrd raise many types for a bad file
        detail = str(exc).replace(str(path), name)
        raise ImageReadError(f"{name}: not a readable segmentation file ({detail})") from exc
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim not in (3, 4):
        raise NotThreeDimensionalError(f"{name}: segmentation voxels have {voxels.ndim} dimensions")
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    segments = segmentation.get("segments") or []
    if not segments:
        raise LabelValueError(
            f"{name}: no segments in the file (no Segment0_Name:= metadata); a plain labelmap must be sent with "
            "format=.nrrd, not .seg.nrrd"
        )
    by_name = {label_name.strip().lower(): value for value, label_name in labels.items()}
    mapped: list[tuple[int, int, int]] = []  # (class value, layer, label value in the layer)
    unmapped: list[str] = []
    for segment in segments:
        segment_name = str(segment.get("name", ""))
        value = _class_of(segment, by_name)
        if value is None:
            unmapped.append(segment_name)
            continue
        label_value = int(segment.get("labelValue", 1))
        layer = int(segment.get("layer", 0))
        if label_value < 1:
            raise LabelValueError(
                f"{name}: segment {segment_name!r} has label value {label_value}; 0 is background, a segment needs 1 or more"
            )
        if not 0 <= layer < layers.shape[0]:
            raise LabelValueError(f"{name}: segment {segment_name!r} is on layer {layer}; the file has {layers.shape[0]}")
        mapped.append((value, layer, label_value))
    if unmapped:
        raise LabelValueError(
            f"{name}: segment(s) {unmapped} match no class; name each segment as one of "
            f"{[labels[v] for v in sorted(labels)]}"
        )
    for layer_index in range(layers.shape[0]):
        known = {lv for _, layer, lv in mapped if layer == layer_index}
        stray = sorted(set(np.unique(layers[layer_index]).tolist()) - known - {0})
        if stray:
            raise LabelValueError(f"{name}: layer {layer_index} has voxel values {stray[:10]} that belong to no segment")
    labelmap_ijk = np.zeros(layers.shape[1:], dtype=np.uint8)
    for value, layer, label_value in sorted(mapped):
        labelmap_ijk[layers[layer] == label_value] = value
    geometry = geometry_from_ijk_to_lps(np.asarray(segmentation["ijkToLPS"]), labelmap_ijk.shape)
    if reference is not None and geometry.size != reference.size:
        labelmap_ijk = place_on_grid(labelmap_ijk, geometry, reference, name)
        geometry = Geometry(size=reference.size, spacing=geometry.spacing, origin=reference.origin,
                            direction=geometry.direction)
    return Volume(np.ascontiguousarray(np.transpose(labelmap_ijk, (2, 1, 0))), geometry)


# pynrrd's header comment naming the time it wrote the file (nrrd.writer._write_header).
_WRITE_TIME_COMMENT = re.compile(rb"^# on [0-9: -]+\(GMT\)\.\n", re.MULTILINE)


def segmentation_bytes(labelmap: np.ndarray, geometry: Geometry,
                       labels: Config | Mapping[int, str] | Mapping[int, SegmentStyle]) -> bytes:
    """A ``.seg.nrrd`` file's bytes (for HTTP download of an expert label); ``labels`` as for
    :func:`write_segmentation_file`.

    The same label gives the same bytes every time: pynrrd's comment line with the second it wrote the header
    (``# on 2026-11-28 11:41:26(GMT).``) is dropped, so two downloads of one label compare equal (NRRD comment
    lines carry no data).
    """
    fd, name = tempfile.mkstemp(suffix=".seg.nrrd")
    os.close(fd)
    try:
        write_segmentation_file(Path(name), labelmap, geometry, labels)
        data = Path(name).read_bytes()
    finally:
        os.unlink(name)
    header_end = data.find(b"\n\n")
    return _WRITE_TIME_COMMENT.sub(b"", data[:header_end], count=1) + data[header_end:]
