"""Training batches: foreground-oversampled crops of cached cases, augmented with MONAI random transforms.

* **Crops** are sliced straight out of the memory-mapped cache (:mod:`activeseg.model.case_cache`), so only the
  crop is read from disk. MONAI's crop transforms (``RandCropByLabelClassesd``) take the whole volume as an array,
  which for a 512x512x300 CT means reading 300 MB per crop. A share of crops (``foreground_fraction``, nnU-Net:
  1/3) is centred on a voxel of a randomly chosen foreground class present in the case, from the cached
  foreground locations; the others are uniform. Volumes smaller than the patch are padded with
  :func:`activeseg.model.preprocessing.pad_value`, the same value sliding-window inference pads with.
* **Augmentation** (MONAI, nnU-Net's set at its probabilities): rotation and scaling (in-plane only when the plan
  is anisotropic), Gaussian noise, Gaussian blur, brightness, gamma, and mirroring along the plan's mirror axes.
* **Determinism**: every random draw comes from one ``numpy`` generator per stream and MONAI's transform state,
  both seeded from ``(seed, worker id)``; the same seed gives the same batches.
* **Workers**: :class:`CropStream` is an ``IterableDataset``; a ``torch.utils.data.DataLoader`` with workers
  prepares batches while the GPU trains.
* **Provenance**: every batch carries each crop's :class:`CropOrigin` (case and box on the planned grid), so that a
  caller who knows the truth (the label-efficiency simulation) can relate a pseudo-labelled crop's ALNT weight
  to that crop's true Dice.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
)
from torch.utils.data import IterableDataset, get_worker_info

from activeseg.model.case_cache import CachedCase
from activeseg.model.plan import Plan
from activeseg.model.preprocessing import normalise, pad_value

__all__ = ["CropOrigin", "CropBatch", "sample_crop", "build_augmentation", "CropStream"]


@dataclass(frozen=True)
class CropOrigin:
    """Where a training crop came from, before augmentation.

    Attributes:
        case_id: the datastore's case id.
        box: (start, stop) voxel indices per axis (k, j, i) on the case's planned (cached) grid; the part of the
            crop that lies inside the volume (a volume smaller than the patch is padded around it).
    """

    case_id: str
    box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]

    def slices(self) -> tuple[slice, slice, slice]:
        """The box as array slices (k, j, i)."""
        return tuple(slice(start, stop) for start, stop in self.box)  # type: ignore[return-value]


class CropBatch(NamedTuple):
    """One training batch: (B, 1, k, j, i) float32 images, (B, 1, k, j, i) int64 labels, and each crop's origin."""

    images: torch.Tensor
    labels: torch.Tensor
    origins: tuple[CropOrigin, ...]


def _volume_normaliser(case: CachedCase, plan: Plan) -> tuple[float | None, float | None]:
    return (case.mean, case.sd) if plan.normalisation == "zscore" else (None, None)


def sample_crop(case: CachedCase, plan: Plan, rng: np.random.Generator,
                foreground_fraction: float) -> tuple[np.ndarray, np.ndarray, CropOrigin]:
    """One normalised (image, label) crop of ``plan.patch_size`` from a cached case, (k, j, i) each, and its origin.

    Args:
        case: the cached case with its label (expert, accepted or pseudo).
        plan: gives the patch size and the normalisation.
        rng: the stream's generator.
        foreground_fraction: probability of centring the crop on a foreground voxel.
    """
    label_volume = case.label
    if label_volume is None:
        raise ValueError(f"case {case.case_id} has no label to train on")
    shape, patch = case.image.shape, plan.patch_size
    centre = None
    if rng.random() < foreground_fraction and case.locations:
        chosen = list(case.locations)[int(rng.integers(len(case.locations)))]
        centre = case.locations[chosen][rng.integers(len(case.locations[chosen]))]
    starts = []
    for axis in range(3):
        limit = shape[axis] - patch[axis]
        if limit <= 0:  # smaller than the patch: place the volume at a random offset inside the padded crop
            starts.append(int(rng.integers(limit, 1)) if limit < 0 else 0)
        elif centre is None:
            starts.append(int(rng.integers(0, limit + 1)))
        else:
            jitter = int(rng.integers(-(patch[axis] // 4), patch[axis] // 4 + 1))
            starts.append(int(np.clip(int(centre[axis]) - patch[axis] // 2 + jitter, 0, limit)))
    source = tuple(slice(max(s, 0), max(s, 0) + min(p, n)) for s, p, n in zip(starts, patch, shape))
    target = tuple(slice(max(-s, 0), max(-s, 0) + min(p, n)) for s, p, n in zip(starts, patch, shape))
    mean, sd = _volume_normaliser(case, plan)
    fill = pad_value(float(normalise(np.asarray([case.minimum], np.float32), plan, mean, sd)[0]))
    image = np.full(patch, fill, dtype=np.float32)
    label = np.zeros(patch, dtype=np.uint8)
    image[target] = normalise(np.asarray(case.image[source]), plan, mean, sd)
    label[target] = np.asarray(label_volume[source])
    box = tuple((int(s.start), int(s.stop)) for s in source)
    return image, label, CropOrigin(case.case_id, box)  # type: ignore[arg-type]


def build_augmentation(plan: Plan) -> Compose:
    """MONAI random transforms over ``{"image", "label"}`` tensors of shape (1, k, j, i).

    nnU-Net's probabilities: rotation/scaling 0.2 each, noise 0.1, blur 0.2, brightness 0.15, gamma 0.3, mirroring
    0.5 per axis along ``plan.mirror_axes``. With anisotropic strides (an axis not down-sampled at the first level) rotations turn only about
    that axis, i.e. in-plane.
    """
    first = plan.strides[0]
    angle = np.pi / 6  # +-30 degrees (nnU-Net)
    rotate = tuple(angle if (min(first) == 2 or first[axis] == 1) else 0.0 for axis in range(3))
    transforms = [
        RandAffined(keys=("image", "label"), prob=0.2, rotate_range=rotate, scale_range=(0.15, 0.15, 0.15),
                    mode=("bilinear", "nearest"), padding_mode="border"),
        RandGaussianNoised(keys="image", prob=0.1, std=0.1),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        RandScaleIntensityd(keys="image", prob=0.15, factors=0.25),
        RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
    ]
    transforms += [RandFlipd(keys=("image", "label"), prob=0.5, spatial_axis=axis) for axis in plan.mirror_axes]
    return Compose(transforms)


class CropStream(IterableDataset):
    """An endless stream of augmented :class:`CropBatch` es: (B, 1, k, j, i) float32 images and int64 labels.

    Args:
        cases: cached cases to draw from (uniformly).
        plan: patch size, normalisation, strides.
        batch_size: crops per batch.
        seed: stream seed (combined with the DataLoader worker id).
        foreground_fraction: share of foreground-centred crops.
        augment: apply :func:`build_augmentation` (mirroring along ``plan.mirror_axes``).
    """

    def __init__(self, cases: list[CachedCase], plan: Plan, batch_size: int, seed: int, foreground_fraction: float,
                 augment: bool = True) -> None:
        super().__init__()
        if not cases:
            raise ValueError("a crop stream needs at least one case")
        self.cases, self.plan, self.batch_size, self.seed = cases, plan, batch_size, seed
        self.foreground_fraction, self.augment = foreground_fraction, augment

    def __iter__(self) -> Iterator[CropBatch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng([self.seed, worker])
        augmentation = build_augmentation(self.plan).set_random_state(seed=(self.seed * 7919 + worker) % 2**32)
        while True:
            images, labels, origins = [], [], []
            for index in rng.integers(0, len(self.cases), self.batch_size):
                case = self.cases[int(index)]
                image, label, origin = sample_crop(case, self.plan, rng, self.foreground_fraction)
                origins.append(origin)
                item = {"image": torch.from_numpy(image)[None], "label": torch.from_numpy(label.astype(np.float32))[None]}
                if self.augment:
                    item = augmentation(item)
                images.append(torch.as_tensor(item["image"]).float())
                labels.append(torch.as_tensor(item["label"]).round().long())
            yield CropBatch(torch.stack(images), torch.stack(labels), tuple(origins))
