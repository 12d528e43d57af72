"""Intensity normalisation and random training crops. Arrays are (k, j, i) throughout."""

from __future__ import annotations

import numpy as np

from activeseg.config import IntensityConfig

__all__ = ["normalise_intensity", "pad_to_shape", "sample_crop"]


def normalise_intensity(array: np.ndarray, settings: IntensityConfig) -> np.ndarray:
    """Map raw voxel values to the network's input range, float32.

    ``ct``: clip HU to [window_min, window_max], scale linearly to [-1, 1].
    ``zscore``: (x - mean) / sd over the whole volume (sd floored at 1e-6, so a constant image gives zeros).
    """
    data = array.astype(np.float32, copy=False)
    if settings.mode == "ct":
        low, high = settings.window_min, settings.window_max
        return ((np.clip(data, low, high) - low) / (high - low) * 2.0 - 1.0).astype(np.float32)
    return ((data - data.mean()) / max(float(data.std()), 1e-6)).astype(np.float32)


def pad_to_shape(array: np.ndarray, shape: tuple[int, ...], value: float) -> np.ndarray:
    """Pad the end of each axis up to at least ``shape`` with ``value`` (never crops)."""
    pads = [(0, max(0, s - a)) for a, s in zip(array.shape, shape)]
    if not any(p[1] for p in pads):
        return array
    return np.pad(array, pads, mode="constant", constant_values=value)


def sample_crop(
    image: np.ndarray,
    label: np.ndarray,
    patch_size: tuple[int, int, int],
    rng: np.random.Generator,
    foreground_fraction: float,
    background_value: float,
) -> tuple[np.ndarray, np.ndarray]:
    """One random (image, label) crop of ``patch_size``, padded where the volume is smaller.

    With probability ``foreground_fraction`` the crop is centred near a random voxel of a random
    foreground class present in the label (rare small lesions would otherwise almost never be seen).
    """
    image = pad_to_shape(image, patch_size, background_value)
    label = pad_to_shape(label, patch_size, 0)
    centre = None
    if rng.random() < foreground_fraction:
        classes = [c for c in np.unique(label) if c != 0]
        if classes:
            chosen = rng.choice(classes)
            voxels = np.argwhere(label == chosen)
            centre = voxels[rng.integers(len(voxels))]
    starts = []
    for axis, size in enumerate(patch_size):
        limit = image.shape[axis] - size
        if centre is None:
            start = int(rng.integers(0, limit + 1))
        else:
            start = int(np.clip(centre[axis] - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, limit))
        starts.append(start)
    window = tuple(slice(s, s + size) for s, size in zip(starts, patch_size))
    return image[window], label[window]
