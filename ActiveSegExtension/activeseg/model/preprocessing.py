"""Preprocessing as the plan prescribes: resampling to the planned spacing and back, intensity normalisation, and
the one padding rule shared by training crops and sliding-window inference.

Arrays are ``(k, j, i)`` throughout; geometry is SimpleITK's, in **LPS** (see :mod:`activeseg.io.volumes`).

Resampling uses SimpleITK rather than MONAI's ``Spacingd``: the datastore's geometry is SimpleITK's (LPS, with
direction cosines), and predictions must land back on each source image's exact grid. ``sitk.Resample`` onto the
source image as reference does that by construction, with the same library in both directions; MONAI's
``Spacingd`` would need an RAS affine built from that geometry and inverted again. Images are resampled linearly
(nnU-Net uses third order; linear is several times cheaper on full-size CT on a CPU), labels by nearest neighbour.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from activeseg.io.volumes import Geometry, Volume
from activeseg.model.plan import Plan

__all__ = ["needs_resampling", "resample_volume", "resample_to_grid", "planned_geometry", "normalise", "pad_value"]

# Relative spacing difference below which a volume is used as it is (no interpolation blur for nothing).
_SPACING_TOLERANCE = 0.02


def _spacing_kji(geometry: Geometry) -> tuple[float, float, float]:
    """Spacing in array order (k, j, i), mm."""
    i, j, k = geometry.spacing
    return (k, j, i)


def needs_resampling(geometry: Geometry, target_spacing_kji: tuple[float, float, float]) -> bool:
    """Whether the volume's spacing differs from the target by more than 2 % on any axis."""
    return any(abs(s - t) > _SPACING_TOLERANCE * t for s, t in zip(_spacing_kji(geometry), target_spacing_kji))


def planned_geometry(geometry: Geometry, target_spacing_kji: tuple[float, float, float]) -> Geometry:
    """The grid covering the same physical extent at the target spacing (same origin and direction).

    Sizes are rounded so that the extent ``size * spacing`` is kept to within half a voxel.
    """
    if not needs_resampling(geometry, target_spacing_kji):
        return geometry
    target_ijk = tuple(float(s) for s in reversed(target_spacing_kji))
    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(geometry.size, geometry.spacing, target_ijk))
    return Geometry(size=size, spacing=target_ijk, origin=geometry.origin, direction=geometry.direction)  # type: ignore[arg-type]


def _image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    return geometry.apply_to(sitk.GetImageFromArray(array))


def _reference(geometry: Geometry) -> sitk.Image:
    reference = sitk.Image([int(s) for s in geometry.size], sitk.sitkUInt8)
    return geometry.apply_to(reference)


def resample_to_grid(array: np.ndarray, source: Geometry, target: Geometry, *, is_label: bool,
                     default_value: float = 0.0) -> np.ndarray:
    """Resample a (k, j, i) array from ``source``'s grid onto ``target``'s grid (both LPS).

    Args:
        array: values on the source grid.
        source: its geometry.
        target: the grid to sample onto.
        is_label: nearest neighbour (labels) instead of linear interpolation (images, probabilities).
        default_value: value far outside the source's extent (within half a voxel the nearest voxel is used).

    Returns:
        (k, j, i) array of ``target.array_shape``; labels keep their dtype, images come back float32.
    """
    if source == target:
        return array
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    moving = _image(array if is_label else array.astype(np.float32, copy=False), source)
    # Points beyond the source's outermost voxel centres (up to half a voxel at each face when the grids differ)
    # take the nearest voxel's value instead of ``default_value``, so probabilities still sum to 1 at the borders.
    resampled = sitk.Resample(moving, _reference(target), sitk.Transform(), interpolator, default_value,
                              moving.GetPixelID(), True)
    return sitk.GetArrayFromImage(resampled)


def resample_volume(volume: Volume, target_spacing_kji: tuple[float, float, float], *, is_label: bool) -> Volume:
    """The volume on its planned grid (:func:`planned_geometry`); unchanged when already at that spacing."""
    target = planned_geometry(volume.geometry, target_spacing_kji)
    if target == volume.geometry:
        return volume
    fill = 0.0 if is_label else float(volume.array.min())
    return Volume(resample_to_grid(volume.array, volume.geometry, target, is_label=is_label, default_value=fill), target)


def normalise(array: np.ndarray, plan: Plan, volume_mean: float | None = None, volume_sd: float | None = None) -> np.ndarray:
    """Raw intensities to the network's input, float32.

    ``ct``: clip to the plan's foreground percentiles, subtract the foreground mean, divide by its sd (one
    transform for every case, so Hounsfield units keep their meaning). ``zscore``: per volume, with the
    volume's own mean and sd (pass them when ``array`` is a crop of a larger volume).
    """
    data = array.astype(np.float32, copy=False)
    if plan.normalisation == "ct":
        low, high = plan.clip
        return ((np.clip(data, low, high) - plan.mean) / max(plan.sd, 1e-6)).astype(np.float32)
    mean = float(data.mean()) if volume_mean is None else volume_mean
    sd = float(data.std()) if volume_sd is None else volume_sd
    return ((data - mean) / max(sd, 1e-6)).astype(np.float32)


def pad_value(normalised_volume_min: float) -> float:
    """The one padding rule for crops and sliding windows: the volume's lowest normalised value.

    It stands for "outside the body" (air in CT, background in MRI); padding with 0 would insert tissue of the
    foreground's mean intensity around every volume smaller than a patch.
    """
    return float(normalised_volume_min)
