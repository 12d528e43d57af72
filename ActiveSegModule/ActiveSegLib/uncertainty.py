"""Where the model is unsure: the backend's voxel-wise uncertainty map as a colour overlay with a legend.

The backend writes, per ranked case, a uint8 map in percent (0 = the three heads agree and the main head is
sure, 100 = the heads contradict each other or the main head is at chance; see the engine's
``activeseg.method.uncertainty_map``) on the case image's own grid. Here it becomes a scalar volume node shown
as the slice views' foreground layer (Inferno colours, voxels below :data:`SHOW_FROM_PERCENT` transparent), a
colour legend titled "Uncertainty (%)", a toggle, and :meth:`UncertaintyOverlay.jump_to_hotspot`, which centres
the slice views on the most uncertain region.

Everything here touches MRML: main thread. Geometry: RAS nodes; the file's LPS header is converted by the storage
node (:mod:`ActiveSegLib.mrml`), and the map must lie exactly on the case volume's grid.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from . import mrml
from .client import Download
from .errors import MrmlBridgeError
from .protocol import UNCERTAINTY_PERCENT

__all__ = ["SHOW_FROM_PERCENT", "FOREGROUND_OPACITY", "LEGEND_TITLE", "hotspot_ijk", "UncertaintyOverlay"]

logger = logging.getLogger(__name__)

#: Voxels less uncertain than this (percent) are transparent, so the image shows where the model is sure.
SHOW_FROM_PERCENT = 20
#: Opacity of the overlay in the slice views when shown.
FOREGROUND_OPACITY = 0.5
#: The colour legend's title.
LEGEND_TITLE = "Uncertainty (%)"
# Colour tables to use, first one present wins (perceptually ordered ones first; all ship with Slicer).
_COLOR_TABLES = ("Inferno", "Plasma", "ColdToHotRainbow", "Rainbow")
# The hotspot is searched on a grid of at most this many blocks per axis (a region, not a single noisy voxel).
_HOTSPOT_BLOCKS = 24


def hotspot_ijk(map_kji: np.ndarray, blocks_per_axis: int = _HOTSPOT_BLOCKS) -> tuple[float, float, float]:
    """The centre of the most uncertain region of a map, in voxel coordinates.

    The map is divided into at most ``blocks_per_axis`` blocks per axis; the block with the highest mean wins
    (ties: the first in ``(k, j, i)`` order), and the uncertainty-weighted centre of that block and its
    neighbours is returned. A region, not a single voxel, so one noisy voxel does not move the views.

    Args:
        map_kji: uncertainty ``(k, j, i)``, any numeric dtype.
        blocks_per_axis: resolution of the search.

    Returns:
        ``(i, j, k)`` continuous voxel coordinates (column, row, slice) of the block centre.

    Raises:
        MrmlBridgeError: not a non-empty 3-D array.
    """
    array = np.asarray(map_kji)
    if array.ndim != 3 or array.size == 0:
        raise MrmlBridgeError(f"uncertainty map must be a non-empty 3-D (k, j, i) array, got shape {array.shape}")
    factors = [max(1, math.ceil(n / blocks_per_axis)) for n in array.shape]
    padded_shape = [math.ceil(n / f) * f for n, f in zip(array.shape, factors)]
    padded = np.zeros(padded_shape, dtype=np.float32)  # zero padding never wins over a real region
    padded[: array.shape[0], : array.shape[1], : array.shape[2]] = array
    (fk, fj, fi), (bk, bj, bi) = factors, [p // f for p, f in zip(padded_shape, factors)]
    means = padded.reshape(bk, fk, bj, fj, bi, fi).mean(axis=(1, 3, 5))
    best = np.unravel_index(int(np.argmax(means)), means.shape)
    # Refine: the uncertainty-weighted centre of the winning block and its neighbours, so a region that straddles
    # block borders is found at its own centre, not at a block's.
    window = tuple(slice(max(0, (b - 1) * f), min(n, (b + 2) * f))
                   for b, f, n in zip(best, factors, array.shape))
    weights = array[window].astype(np.float64)
    total = weights.sum()
    if total <= 0:
        centre = [min((b + 0.5) * f, n) - 0.5 for b, f, n in zip(best, factors, array.shape)]
    else:
        grids = np.meshgrid(*(np.arange(s.start, s.stop) for s in window), indexing="ij")
        centre = [float((g * weights).sum() / total) for g in grids]
    return float(centre[2]), float(centre[1]), float(centre[0])


class UncertaintyOverlay:
    """The uncertainty overlay of the case shown.

    Args:
        context_provider: returns the :class:`~ActiveSegLib.mrml.MrmlContext` (called on use, so Slicer's own
            scene is looked up only inside Slicer).
    """

    def __init__(self, context_provider: Any) -> None:
        self._context_provider = context_provider
        self.volume_node: Any = None
        self.legend_node: Any = None
        self.case_id = ""
        self.visible = False

    @property
    def _scene(self) -> Any:
        return self._context_provider().scene

    def show(self, download: Download, case_volume: Any, case_id: str) -> Any:
        """Replace the overlay with a case's map and show it over ``case_volume``.

        Args:
            download: the map file (``.nrrd``, uint8 percent) from ``ActiveSegClient.download_uncertainty``.
            case_volume: the case's ``vtkMRMLScalarVolumeNode``; the map must lie exactly on its grid.
            case_id: the case.

        Returns:
            the map's ``vtkMRMLScalarVolumeNode``.

        Raises:
            MrmlBridgeError: unreadable bytes, or a grid other than the case volume's (the overlay would be
                misplaced; nothing is shown then).
        """
        self.remove()
        ctx = self._context_provider()
        node = mrml.volume_node_from_bytes(ctx, download.data, download.suffix or ".nrrd", f"{case_id} uncertainty")
        try:
            shape, reference = mrml.grid_shape_kji(node), mrml.grid_shape_kji(case_volume)
            if shape != reference or not np.allclose(mrml.ijk_to_ras_matrix(node), mrml.ijk_to_ras_matrix(case_volume),
                                                     atol=1e-3):
                raise MrmlBridgeError(f"uncertainty map of {case_id!r} is not on the image's grid (map {shape}, "
                                      f"image {reference} (k, j, i)); not shown")
        except MrmlBridgeError:
            mrml.remove_node(ctx.scene, node)
            raise
        node.SetAttribute(mrml.ROLE_ATTRIBUTE, "uncertainty")
        node.SetAttribute(mrml.CASE_ATTRIBUTE, case_id)
        self._style(node)
        self.volume_node, self.case_id = node, case_id
        self.legend_node = self._add_legend(node)
        self.set_visible(True)
        return node

    def _style(self, node: Any) -> None:
        display = node.GetDisplayNode()
        if display is None:
            node.CreateDefaultDisplayNodes()
            display = node.GetDisplayNode()
        scene = self._scene
        for name in _COLOR_TABLES:
            color = scene.GetFirstNodeByName(name)
            if color is not None and color.IsA("vtkMRMLColorNode"):
                display.SetAndObserveColorNodeID(color.GetID())
                break
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, float(UNCERTAINTY_PERCENT))
        display.SetApplyThreshold(True)
        display.SetAutoThreshold(False)
        display.SetLowerThreshold(float(SHOW_FROM_PERCENT))
        display.SetUpperThreshold(float(UNCERTAINTY_PERCENT))
        display.SetInterpolate(False)

    def _add_legend(self, node: Any) -> Any:
        scene = self._scene
        if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
            # Slicer's Colors module registers it; a headless scene (slicer-core) has to do it here.
            import slicer

            scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())
        legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode", f"{node.GetName()} legend")
        legend.SetAndObservePrimaryDisplayNode(node.GetDisplayNode())
        legend.SetTitleText(LEGEND_TITLE)
        legend.SetLabelFormat("%.0f")
        node.AddAndObserveDisplayNodeID(legend.GetID())
        return legend

    def set_visible(self, visible: bool) -> None:
        """Show or hide the overlay and its legend in every slice view (the toggle)."""
        self.visible = bool(visible) and self.volume_node is not None
        scene = self._scene
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            if self.volume_node is not None:
                composite.SetForegroundVolumeID(self.volume_node.GetID())
                composite.SetForegroundOpacity(FOREGROUND_OPACITY if self.visible else 0.0)
        if self.legend_node is not None:
            self.legend_node.SetVisibility(self.visible)

    def hotspot_ras(self) -> tuple[float, float, float] | None:
        """RAS position (mm) of the centre of the most uncertain region, or ``None`` without a map."""
        if self.volume_node is None:
            return None
        import slicer

        i, j, k = hotspot_ijk(slicer.util.arrayFromVolume(self.volume_node))
        ras = mrml.ijk_to_ras_matrix(self.volume_node) @ np.array([i, j, k, 1.0])
        return float(ras[0]), float(ras[1]), float(ras[2])

    def jump_to_hotspot(self) -> tuple[float, float, float] | None:
        """Centre every slice view on the most uncertain region (what Next does after loading a case).

        Returns:
            the RAS position (mm) jumped to, or ``None`` without a map.
        """
        ras = self.hotspot_ras()
        if ras is None:
            return None
        scene = self._scene
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").JumpSliceByCentering(*ras)
        logger.debug("slice views centred on the most uncertain region at RAS %s", ras)
        return ras

    def remove(self) -> None:
        """Remove the overlay's nodes (those still in the scene)."""
        scene = self._scene
        for node in (self.legend_node, self.volume_node):
            if node is not None and scene.IsNodePresent(node):
                mrml.remove_node(scene, node)
        self.volume_node = self.legend_node = None
        self.case_id = ""
        self.visible = False

    def forget_scene(self) -> None:
        """The scene was closed: drop references to its removed nodes."""
        self.volume_node = self.legend_node = None
        self.case_id = ""
        self.visible = False
