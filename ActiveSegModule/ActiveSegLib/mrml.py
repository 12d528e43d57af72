"""MRML bridge: image and label files <-> Slicer nodes (``vtkMRMLScalarVolumeNode``, ``vtkMRMLSegmentationNode``).

Depends only on MRML classes, vtk and numpy, so it runs inside Slicer *and* under pytest with the ``slicer-core``
wheel (no ``slicer.app``, no Qt). Everything takes a :class:`MrmlContext` (scene + segmentations logic): inside
Slicer use :meth:`MrmlContext.from_slicer`, in tests :meth:`MrmlContext.headless`.

Conventions (the same as Slicer's and SimpleITK's):
    * Slicer nodes are in **RAS**; NIfTI/NRRD files (and SimpleITK, ITK) are in **LPS**. The storage nodes do the
      conversion; :func:`ijk_to_lps_matrix` gives the file's view (first two rows of IJK-to-RAS negated).
    * Voxel arrays are numpy ``(k, j, i)`` = (slice, row, column), as ``slicer.util.arrayFromVolume`` and
      ``SimpleITK.GetArrayFromImage`` return them. Matrices are 4x4 homogeneous, mapping (i, j, k, 1) to mm.
    * Label maps hold class values (0 = background) from the backend's ``labels`` dict, e.g. ``{1: "lung"}``.

Files always go through MRML storage nodes (``vtkMRMLVolumeArchetypeStorageNode``,
``vtkMRMLSegmentationStorageNode``), via a private temp folder for bytes. Network bytes are checked first by
:mod:`ActiveSegLib.fileformats`, because Slicer's segmentation reader aborts the process on a corrupt NRRD.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from .errors import MrmlBridgeError
from .fileformats import check_image_bytes, check_nrrd_bytes, image_format

__all__ = [
    "ROLE_ATTRIBUTE",
    "CASE_ATTRIBUTE",
    "MrmlContext",
    "DEFAULT_SEGMENT_COLORS",
    "RAS_TO_LPS",
    "ijk_to_ras_matrix",
    "ijk_to_lps_matrix",
    "grid_shape_kji",
    "volume_node_from_file",
    "volume_node_from_bytes",
    "segmentation_node_from_file",
    "segmentation_node_from_bytes",
    "segment_class_values",
    "segments_info",
    "labelmap_array_from_segmentation",
    "labelmap_bytes_from_segmentation",
    "segmentation_from_labelmap_array",
    "remove_node",
]

logger = logging.getLogger(__name__)

#: Node attribute naming what ActiveSeg created a node for (``image``, ``label``, ``pseudo``, ``uncertainty``,
#: ``plot``), so a later case replaces those nodes instead of piling them up.
ROLE_ATTRIBUTE = "ActiveSeg.Role"
#: Node attribute holding the case id a node belongs to.
CASE_ATTRIBUTE = "ActiveSeg.CaseId"

#: Diagonal flip between RAS (Slicer) and LPS (ITK files); its own inverse.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: RGB in [0, 1] by class order; the same palette the backend writes into ``.seg.nrrd`` files (lung, lesion...).
DEFAULT_SEGMENT_COLORS: tuple[tuple[float, float, float], ...] = (
    (0.77, 0.42, 0.45),
    (0.95, 0.85, 0.27),
    (0.30, 0.69, 0.29),
    (0.22, 0.49, 0.72),
    (0.60, 0.31, 0.64),
    (1.00, 0.50, 0.00),
)


@dataclass
class MrmlContext:
    """The scene and logics the bridge works with.

    Attributes:
        scene: the ``vtkMRMLScene`` nodes are added to (``slicer.mrmlScene`` in Slicer).
        segmentations_logic: a ``vtkSlicerSegmentationsModuleLogic`` whose scene is ``scene``.
        application_logic: the ``vtkSlicerApplicationLogic`` the logics are registered with, if any; held here so
            that a headless one lives as long as the context.
    """

    scene: Any
    segmentations_logic: Any
    application_logic: Any | None = None

    @classmethod
    def from_slicer(cls) -> MrmlContext:
        """The running Slicer application's scene and segmentations logic (only inside Slicer)."""
        return cls(
            scene=slicer.mrmlScene,
            segmentations_logic=slicer.modules.segmentations.logic(),
            application_logic=slicer.app.applicationLogic(),
        )

    @classmethod
    def headless(cls) -> MrmlContext:
        """A new scene with an application logic, default colour tables and a segmentations logic.

        This is the app-less recipe from ``SLICER_CORE_NOTES.md`` (the one trame-slicer uses); for tests and
        scripts with the ``slicer-core`` wheel.
        """
        scene = slicer.vtkMRMLScene()
        app = slicer.vtkSlicerApplicationLogic()
        app.SetMRMLScene(scene)
        app.GetColorLogic().SetMRMLScene(scene)
        app.GetColorLogic().AddDefaultColorNodes()
        logic = slicer.vtkSlicerSegmentationsModuleLogic()
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app)
        app.SetModuleLogic("Segmentations", logic)
        return cls(scene=scene, segmentations_logic=logic, application_logic=app)


# ----------------------------------------------------------------------------------------------- geometry


def ijk_to_ras_matrix(volume_node: Any) -> np.ndarray:
    """The volume's voxel-to-world matrix in **RAS**.

    Args:
        volume_node: a ``vtkMRMLVolumeNode``.

    Returns:
        4x4 float64 array mapping (i, j, k, 1) (column, row, slice) to RAS millimetres; columns 0-2 are the I, J, K
        axis directions scaled by spacing, column 3 the origin.
    """
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def ijk_to_lps_matrix(volume_node: Any) -> np.ndarray:
    """The volume's voxel-to-world matrix in **LPS** (what ITK/SimpleITK and the files say).

    Returns:
        4x4 float64 array: :func:`ijk_to_ras_matrix` with its first two rows negated.
    """
    return RAS_TO_LPS @ ijk_to_ras_matrix(volume_node)


def grid_shape_kji(volume_node: Any) -> tuple[int, int, int]:
    """The volume's voxel grid as a numpy shape ``(k, j, i)``.

    Raises:
        MrmlBridgeError: the node has no image data.
    """
    image = volume_node.GetImageData()
    if image is None:
        raise MrmlBridgeError(f"volume {volume_node.GetName()!r} has no image data")
    i, j, k = image.GetDimensions()
    return (k, j, i)


def _check_reference(volume_node: Any) -> tuple[int, int, int]:
    if volume_node is None or not volume_node.IsA("vtkMRMLVolumeNode"):
        raise MrmlBridgeError(f"reference must be a volume node, got {volume_node!r}")
    return grid_shape_kji(volume_node)


# ------------------------------------------------------------------------------------------------ helpers


def remove_node(scene: Any, node: Any) -> None:
    """Remove a node and the display and storage nodes that belong to it (``None`` is ignored).

    ``vtkMRMLScene.RemoveNode`` leaves a displayable node's display/storage nodes behind; scratch nodes would
    otherwise pile up in the scene (and in saved scenes).
    """
    if node is None or scene is None:
        return
    helpers: list[Any] = []
    if node.IsA("vtkMRMLDisplayableNode"):
        helpers += [node.GetNthDisplayNode(n) for n in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        helpers += [node.GetNthStorageNode(n) for n in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


@contextlib.contextmanager
def _dropping_new_color_tables(scene: Any) -> Iterator[None]:
    """Remove the colour tables that segmentation exports add to the scene while the block runs.

    ``ExportSegmentsToLabelmapNode`` creates a ``<segmentation>_ColorTable`` node on every call (also inside
    Slicer); our scratch exports would leave one per segment per submission in the user's scene.
    """
    before = {scene.GetNthNodeByClass(n, "vtkMRMLColorTableNode").GetID()
              for n in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))}
    try:
        yield
    finally:
        added = [scene.GetNthNodeByClass(n, "vtkMRMLColorTableNode")
                 for n in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))]
        for node in added:
            if node.GetID() not in before and node.GetAttribute("Category") == "Segmentations":
                scene.RemoveNode(node)


def _normal_suffix(suffix: str) -> str:
    suffix = suffix.strip().lower()
    return suffix if suffix.startswith(".") else "." + suffix


def _storage_messages(storage_node: Any) -> str:
    """The storage node's user-facing error text, shortened (ITK dumps whole exception objects into it)."""
    try:
        text = storage_node.GetUserMessages().GetAllMessagesAsString()
    except AttributeError:  # older MRML without message collections
        return ""
    for marker in ("Description:", "Details:"):
        if marker in text:
            text = text[text.index(marker) + len(marker):]
            break
    text = " ".join(text.split())
    return text[:400]


def _unique_name(scene: Any, name: str) -> str:
    return scene.GenerateUniqueName(name) if name else scene.GenerateUniqueName("ActiveSeg")


# ------------------------------------------------------------------------------------------------ volumes


def _read_volume(ctx: MrmlContext, path: Path, name: str, labelmap: bool, keep_storage: bool) -> Any:
    """Read a volume file through a ``vtkMRMLVolumeArchetypeStorageNode``; clean up and raise on failure."""
    scene = ctx.scene
    node_class = "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(node_class, _unique_name(scene, name))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    # Single file: by default the archetype reader also loads neighbouring files it takes for a series.
    storage.SetSingleFile(1)
    node.SetAndObserveStorageNodeID(storage.GetID())
    ok = storage.ReadData(node)
    image = node.GetImageData()
    problem = ""
    if not ok or image is None:
        problem = f"not a readable 3D scalar image ({_storage_messages(storage) or 'reader failed'})"
    elif image.GetNumberOfScalarComponents() != 1:
        problem = f"has {image.GetNumberOfScalarComponents()} components per voxel; a scalar image is needed"
    elif min(image.GetDimensions()) < 2:
        # A 2D file comes back as a single-slice volume; ActiveSeg's 3D networks need depth on every axis.
        problem = (f"is not a 3D volume: size {image.GetDimensions()} voxels (i, j, k); "
                   "every axis needs at least 2 voxels")
    if problem:
        remove_node(scene, node)
        if scene.IsNodePresent(storage):
            scene.RemoveNode(storage)
        raise MrmlBridgeError(f"{path.name}: {problem}")
    node.CreateDefaultDisplayNodes()
    if not keep_storage:
        # The temp file is about to vanish; a storage node pointing at it would mislead Slicer's Save dialog.
        node.SetAndObserveStorageNodeID(None)
        scene.RemoveNode(storage)
    logger.debug("read %s as %s %s", path.name, node.GetClassName(), image.GetDimensions())
    return node


def volume_node_from_file(ctx: MrmlContext, path: str | os.PathLike[str], name: str = "",
                          *, labelmap: bool = False) -> Any:
    """Load an image file as a volume node (geometry converted from the file's LPS to RAS).

    Args:
        ctx: scene and logics.
        path: a ``.nii``, ``.nii.gz`` or ``.nrrd`` file (other ITK formats load without the pre-check).
        name: node name (made unique in the scene); default: the file name without suffix.
        labelmap: load as ``vtkMRMLLabelMapVolumeNode`` instead of ``vtkMRMLScalarVolumeNode``.

    Returns:
        the new node, added to ``ctx.scene``, with a display node and a storage node pointing at ``path``.

    Raises:
        MrmlBridgeError: missing, corrupt or truncated file, a multi-component image, or an image that is not 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise MrmlBridgeError(f"image file not found: {path}")
    if image_format(path.name):
        check_image_bytes(path.read_bytes(), path.name, what=path.name)
    default = path.name.split(".")[0]
    return _read_volume(ctx, path, name or default, labelmap, keep_storage=True)


def volume_node_from_bytes(ctx: MrmlContext, data: bytes, suffix: str, name: str,
                           *, labelmap: bool = False) -> Any:
    """Decode an image file's bytes (as the backend serves them) into a volume node.

    Args:
        ctx: scene and logics.
        data: the whole file: NIfTI or NRRD, geometry in LPS as ITK writes it.
        suffix: the file's format suffix: ``.nii.gz``, ``.nii`` or ``.nrrd``.
        name: node name (made unique in the scene).
        labelmap: create a ``vtkMRMLLabelMapVolumeNode`` instead of a ``vtkMRMLScalarVolumeNode``.

    Returns:
        the new node in ``ctx.scene`` (RAS geometry, with a display node, no storage node).

    Raises:
        MrmlBridgeError: unsupported suffix, corrupt or truncated bytes, a multi-component or non-3D image.
    """
    suffix = _normal_suffix(suffix)
    if suffix.endswith(".seg.nrrd"):
        suffix = ".nrrd"
    check_image_bytes(data, suffix, what=f"{name or 'image'}{suffix}")
    with tempfile.TemporaryDirectory(prefix="activeseg-") as folder:
        path = Path(folder) / f"image{suffix}"
        path.write_bytes(data)
        node = _read_volume(ctx, path, name, labelmap, keep_storage=False)
    return node


# ------------------------------------------------------------------------------------------ segmentations


def _read_segmentation(ctx: MrmlContext, path: Path, name: str, reference_volume: Any | None,
                       keep_storage: bool) -> Any:
    scene = ctx.scene
    if reference_volume is not None:
        _check_reference(reference_volume)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", _unique_name(scene, name))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    ok = storage.ReadData(node)
    if not ok:
        message = _storage_messages(storage) or "reader failed"
        remove_node(scene, node)
        if scene.IsNodePresent(storage):
            scene.RemoveNode(storage)
        raise MrmlBridgeError(f"{path.name}: not a readable segmentation ({message})")
    if reference_volume is not None:
        # Without this, editing and export crop the extent to the non-empty voxels (see SLICER_CORE_NOTES.md).
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    node.CreateDefaultDisplayNodes()
    if not keep_storage:
        node.SetAndObserveStorageNodeID(None)
        scene.RemoveNode(storage)
    return node


def segmentation_node_from_file(ctx: MrmlContext, path: str | os.PathLike[str], name: str = "",
                                reference_volume: Any | None = None) -> Any:
    """Load a Slicer ``.seg.nrrd`` as a segmentation node (segment IDs, names, colours, tags preserved).

    Args:
        ctx: scene and logics.
        path: a ``.seg.nrrd`` file (3D, or 4D with one layer per axis-0 index as Slicer writes overlaps).
        name: node name (made unique); default: the file name without suffix.
        reference_volume: if given, its grid becomes the segmentation's reference geometry (editing happens on
            that grid).

    Returns:
        the new ``vtkMRMLSegmentationNode`` with a display node and a storage node pointing at ``path``.

    Raises:
        MrmlBridgeError: missing, not a NRRD, truncated or corrupt file; a reference that is not a volume.
    """
    path = Path(path)
    if not path.is_file():
        raise MrmlBridgeError(f"segmentation file not found: {path}")
    # Checked before MRML sees it: a corrupt .seg.nrrd aborts the process inside the storage node.
    check_nrrd_bytes(path.read_bytes(), what=path.name, dimensions=(3, 4))
    return _read_segmentation(ctx, path, name or path.name.split(".")[0], reference_volume, keep_storage=True)


def segmentation_node_from_bytes(ctx: MrmlContext, data: bytes, name: str, reference_volume: Any | None) -> Any:
    """Decode ``.seg.nrrd`` bytes (as the backend serves labels) into a segmentation node.

    Args:
        ctx: scene and logics.
        data: the whole ``.seg.nrrd`` file (LPS geometry in the header, ``Segment<N>_*`` metadata).
        name: node name (made unique in the scene).
        reference_volume: the case's image volume; its grid becomes the reference geometry (``None``: keep the
            file's own grid).

    Returns:
        the new ``vtkMRMLSegmentationNode`` (display node, no storage node).

    Raises:
        MrmlBridgeError: not a NRRD, truncated or corrupt data, wrong dimension, or a bad reference.
    """
    check_nrrd_bytes(data, what=f"{name or 'segmentation'}.seg.nrrd", dimensions=(3, 4))
    with tempfile.TemporaryDirectory(prefix="activeseg-") as folder:
        path = Path(folder) / "segmentation.seg.nrrd"
        path.write_bytes(data)
        return _read_segmentation(ctx, path, name, reference_volume, keep_storage=False)


def segments_info(segmentation_node: Any) -> list[dict[str, Any]]:
    """The segments in display order.

    Returns:
        one dict per segment: ``{"id": str, "name": str, "color": (r, g, b) in [0, 1]}``.
    """
    segmentation = segmentation_node.GetSegmentation()
    info = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        info.append({
            "id": segmentation.GetNthSegmentID(index),
            "name": segment.GetName(),
            "color": tuple(float(c) for c in segment.GetColor()),
        })
    return info


def _check_labels(labels: Mapping[int, str] | Mapping[str, str]) -> dict[int, str]:
    """Validated ``{class value: name}``; digit-string keys (as JSON delivers ``/v1/info`` labels) become ints."""
    checked: dict[int, str] = {}
    for key, label_name in labels.items():
        value: int | None = None
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            value = int(key)
        elif isinstance(key, str) and key.strip().isdigit():
            value = int(key)
        if value is None or not 0 < value <= 65535:
            raise MrmlBridgeError(f"class value {key!r} must be an integer in 1..65535 (0 is background)")
        checked[value] = str(label_name)
    if not checked:
        raise MrmlBridgeError("no classes given: labels must map class values to names, e.g. {1: 'lung'}")
    return checked


def segment_class_values(segmentation_node: Any, labels: Mapping[int, str]) -> dict[str, int]:
    """Which class value each segment's voxels get in a submitted labelmap.

    A segment whose name equals a class name (case-insensitive, surrounding spaces ignored) gets that class.
    The remaining segments, in segment order, get the class values no name claimed, in ascending order (so
    ``Segment_1``, ``Segment_2`` made in the Segment Editor map to classes 1, 2).

    Args:
        segmentation_node: a ``vtkMRMLSegmentationNode``.
        labels: class value -> class name, e.g. ``{1: "lung", 2: "lesion"}``.

    Returns:
        segment ID -> class value, for every segment.

    Raises:
        MrmlBridgeError: bad labels, or more unnamed segments than unclaimed classes (the message lists them).
    """
    labels = _check_labels(labels)
    by_name = {label_name.strip().lower(): value for value, label_name in labels.items()}
    info = segments_info(segmentation_node)
    mapping: dict[str, int] = {}
    unmatched: list[dict[str, Any]] = []
    for segment in info:
        value = by_name.get(segment["name"].strip().lower())
        if value is None:
            unmatched.append(segment)
        else:
            mapping[segment["id"]] = value
    free = [value for value in sorted(labels) if value not in mapping.values()]
    if len(unmatched) > len(free):
        extra = [segment["name"] for segment in unmatched[len(free):]]
        raise MrmlBridgeError(
            f"segments {extra} match no class name in {sorted(labels.values())} and no class is left for them; "
            "rename them to a class name or delete them"
        )
    for segment, value in zip(unmatched, free):
        logger.info("segment %r has no class name; submitting it as class %d (%s)",
                    segment["name"], value, labels[value])
        mapping[segment["id"]] = value
    return mapping


def labelmap_array_from_segmentation(ctx: MrmlContext, segmentation_node: Any, reference_volume: Any,
                                     labels: Mapping[int, str]) -> np.ndarray:
    """Flatten a segmentation into one class labelmap on the reference volume's grid.

    Each segment is exported (resampled if needed) onto ``reference_volume``'s grid and its voxels set to the
    class from :func:`segment_class_values`; where segments overlap, the later segment wins (as Slicer's merged
    export does).

    Args:
        ctx: scene and logics.
        segmentation_node: a ``vtkMRMLSegmentationNode`` (may have no segments).
        reference_volume: the case's image volume.
        labels: class value -> class name.

    Returns:
        ``(k, j, i)`` array, ``uint8`` if every class value is below 256 else ``uint16``; all zeros when there
        are no segments.

    Raises:
        MrmlBridgeError: bad labels or reference, unmappable segments, or an export failure.
    """
    labels = _check_labels(labels)
    shape = _check_reference(reference_volume)
    mapping = segment_class_values(segmentation_node, labels)
    dtype = np.uint8 if max(labels) < 256 else np.uint16
    result = np.zeros(shape, dtype=dtype)
    if not mapping:
        return result
    scene = ctx.scene
    scratch = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("ActiveSegExport"))
    try:
        with _dropping_new_color_tables(scene):
            _export_segments(ctx, segmentation_node, reference_volume, scratch, mapping, result)
    finally:
        remove_node(scene, scratch)
    return result


def _export_segments(ctx: MrmlContext, segmentation_node: Any, reference_volume: Any, scratch: Any,
                     mapping: Mapping[str, int], result: np.ndarray) -> None:
    """Export each segment onto the reference grid via ``scratch`` and paint its class into ``result``."""
    shape = result.shape
    # One segment per export: the merged export numbers segments by position, not by our classes.
    for segment_id in (info["id"] for info in segments_info(segmentation_node)):
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not ctx.segmentations_logic.ExportSegmentsToLabelmapNode(segmentation_node, ids, scratch,
                                                                    reference_volume):
            raise MrmlBridgeError(f"exporting segment {segment_id!r} onto {reference_volume.GetName()!r} failed")
        mask = slicer.util.arrayFromVolume(scratch)
        if mask.shape != shape:
            raise MrmlBridgeError(f"segment {segment_id!r} exported to {mask.shape}, expected {shape} (k, j, i)")
        result[mask != 0] = mapping[segment_id]


def _write_labelmap_file(ctx: MrmlContext, array_kji: np.ndarray, reference_volume: Any, path: Path) -> None:
    scene = ctx.scene
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("ActiveSegSubmit"))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    try:
        node.CopyOrientation(reference_volume)  # origin, spacing, directions: the image's grid
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_kji))
        storage.SetFileName(str(path))
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise MrmlBridgeError(f"writing labelmap {path.name} failed ({_storage_messages(storage)})")
    finally:
        remove_node(scene, node)
        if scene.IsNodePresent(storage):
            scene.RemoveNode(storage)


def labelmap_bytes_from_segmentation(ctx: MrmlContext, segmentation_node: Any, reference_volume: Any,
                                     labels: Mapping[int, str], suffix: str = ".nii.gz") -> bytes:
    """Encode a segmentation as the labelmap file the backend accepts for a submission.

    Args:
        ctx: scene and logics.
        segmentation_node: the annotator's ``vtkMRMLSegmentationNode``.
        reference_volume: the case's image volume; the file gets exactly its grid (size, spacing, origin,
            directions; LPS in the file as ITK writes it).
        labels: class value -> class name (segments are matched by :func:`segment_class_values`).
        suffix: ``.nii.gz`` (default), ``.nii``, ``.nrrd``, or ``.seg.nrrd`` (a Slicer segmentation with one
            segment per class, named by class, on the full reference grid).

    Returns:
        the file's bytes.

    Raises:
        MrmlBridgeError: unsupported suffix, bad labels/reference, unmappable segments, or a write failure.
    """
    suffix = _normal_suffix(suffix)
    if suffix not in (".nii.gz", ".nii", ".nrrd", ".seg.nrrd"):
        raise MrmlBridgeError(f"unsupported labelmap format {suffix!r}; use .nii.gz, .nii, .nrrd or .seg.nrrd")
    labels = _check_labels(labels)
    array = labelmap_array_from_segmentation(ctx, segmentation_node, reference_volume, labels)
    with tempfile.TemporaryDirectory(prefix="activeseg-") as folder:
        path = Path(folder) / f"labelmap{suffix}"
        if suffix == ".seg.nrrd":
            _write_segmentation_file(ctx, array, reference_volume, labels, path)
        else:
            _write_labelmap_file(ctx, array, reference_volume, path)
        return path.read_bytes()


def _write_segmentation_file(ctx: MrmlContext, array_kji: np.ndarray, reference_volume: Any,
                             labels: Mapping[int, str], path: Path) -> None:
    scene = ctx.scene
    node = segmentation_from_labelmap_array(ctx, array_kji, reference_volume, labels,
                                            scene.GenerateUniqueName("ActiveSegSubmit"))
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    try:
        storage.SetFileName(str(path))
        storage.SetCropToMinimumExtent(False)  # the backend expects the image's full grid
        storage.SetUseCompression(1)
        if not storage.WriteData(node):
            raise MrmlBridgeError(f"writing segmentation {path.name} failed ({_storage_messages(storage)})")
    finally:
        remove_node(scene, node)
        if scene.IsNodePresent(storage):
            scene.RemoveNode(storage)


def segmentation_from_labelmap_array(ctx: MrmlContext, array_kji: np.ndarray, reference_volume: Any,
                                     labels: Mapping[int, str], name: str,
                                     colors: Mapping[int, Sequence[float]] | None = None) -> Any:
    """Build a segmentation node from a class labelmap on the reference volume's grid.

    Used to start editing from the current prediction, and in tests. Every class gets a segment named after it
    (empty classes too, so the Segment Editor lists them all), in ascending class order.

    Args:
        ctx: scene and logics.
        array_kji: integer ``(k, j, i)`` labelmap with the reference grid's shape; values are 0 or keys of
            ``labels``.
        reference_volume: the volume whose grid (RAS geometry) the array lies on; also the reference geometry.
        labels: class value -> segment name.
        name: node name (made unique in the scene).
        colors: class value -> RGB in [0, 1]; default :data:`DEFAULT_SEGMENT_COLORS` by class order.

    Returns:
        the new ``vtkMRMLSegmentationNode`` (with a display node).

    Raises:
        MrmlBridgeError: shape mismatch, non-integer array, values that are not classes, bad labels/reference.
    """
    labels = _check_labels(labels)
    shape = _check_reference(reference_volume)
    array = np.asarray(array_kji)
    if array.shape != shape:
        raise MrmlBridgeError(f"labelmap shape {array.shape} != reference grid {shape} (k, j, i)")
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise MrmlBridgeError(f"labelmap must hold integers, got dtype {array.dtype}")
    present = [int(v) for v in np.unique(array) if v != 0]
    unknown = [v for v in present if v not in labels]
    if unknown:
        raise MrmlBridgeError(f"labelmap values {unknown} are not classes {sorted(labels)}")
    order = sorted(labels)
    palette = {value: DEFAULT_SEGMENT_COLORS[index % len(DEFAULT_SEGMENT_COLORS)]
               for index, value in enumerate(order)}
    palette.update({int(k): tuple(v) for k, v in (colors or {}).items()})  # type: ignore[misc]
    scene = ctx.scene
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", _unique_name(scene, name))
    node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume)
    node.CreateDefaultDisplayNodes()
    segmentation = node.GetSegmentation()
    by_value: dict[int, str] = {}
    if present:
        scratch = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("ActiveSegImport"))
        try:
            scratch.CopyOrientation(reference_volume)
            dtype = np.uint8 if max(present) < 256 else np.uint16
            slicer.util.updateVolumeFromArray(scratch, np.ascontiguousarray(array, dtype=dtype))
            if not ctx.segmentations_logic.ImportLabelmapToSegmentationNode(scratch, node):
                remove_node(scene, node)
                raise MrmlBridgeError(f"importing the labelmap into segmentation {name!r} failed")
        finally:
            remove_node(scene, scratch)
        # Imported segments keep the labelmap value as their label value (names are "Label_<value>").
        for index in range(segmentation.GetNumberOfSegments()):
            by_value[int(segmentation.GetNthSegment(index).GetLabelValue())] = segmentation.GetNthSegmentID(index)
    for position, value in enumerate(order):
        color = [float(c) for c in palette[value]]
        segment_id = by_value.get(value)
        if segment_id is None:
            segment_id = segmentation.AddEmptySegment("", labels[value], color)
        else:
            segment = segmentation.GetSegment(segment_id)
            segment.SetName(labels[value])
            segment.SetColor(color)
        segmentation.SetSegmentIndex(segment_id, position)
    return node
