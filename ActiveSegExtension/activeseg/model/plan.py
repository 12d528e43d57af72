"""Dataset fingerprint and training plan, nnU-Net v2 style: the data decide spacing, patch, depth and normalisation.

The fingerprint summarises the labelled cases (spacings, shapes, foreground intensities, class voxel frequencies)
and the plan derives from it:

* **target spacing**: the median spacing per axis. For strongly anisotropic data (largest / smallest median
  spacing > 3, e.g. 0.7 x 0.7 x 5 mm CT) the low-resolution axis takes the 10th percentile of its spacings instead
  (nnU-Net's rule), so thin-slice scans are not needlessly blurred.
* **patch size**: the median shape after resampling, grown or shrunk towards it within a voxel budget
  (``max_patch_voxels``, the memory budget), each axis a multiple of the network's total stride.
* **network depth and strides**: per axis, halve while the feature map stays >= 4 voxels and the axis' spacing
  is within a factor 2 of the finest axis (nnU-Net's anisotropic strides), at most 5 down-samplings. DSAL needs
  auxiliary heads on 1/2 and 1/4 resolution features, so at least 2 levels below full resolution.
* **normalisation**: CT: clip to the foreground's 0.5-99.5 intensity percentiles, then z-score with the
  foreground mean and standard deviation (global, shared by all cases). MRI and other modalities: per-volume
  z-score.

Axis order everywhere in this module: array order ``(k, j, i)`` (slice, row, column), spacing in mm. The
SimpleITK geometry stores ``(i, j, k)``; conversions happen here once.

Deviation: MONAI's ``DataAnalyzer`` is not used. It needs the cases as files on MONAI's loader path and writes a
YAML report of dozens of statistics per case, while the plan uses a handful; those are computed here in one
streaming pass (one case in memory at a time), sampling at most 10,000 foreground voxels per case as nnU-Net does.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from activeseg.errors import ConfigError

__all__ = ["CaseStatistics", "DatasetFingerprint", "Plan", "case_statistics", "fingerprint_of", "make_plan", "mirror_axes_for", "override_plan",
           "target_spacing_of"]

# Foreground voxels sampled per case for the intensity statistics (nnU-Net samples 10,000).
_SAMPLES_PER_CASE = 10_000
# Anisotropy ratio above which the low-resolution axis takes a lower spacing percentile.
_ANISOTROPY_THRESHOLD = 3.0
# Smallest feature-map edge (voxels) at the coarsest level.
_MIN_FEATURE_EDGE = 4
_MAX_DOWNSAMPLINGS = 5


@dataclass
class CaseStatistics:
    """What one case contributes to the fingerprint.

    Attributes:
        spacing: mm per voxel, (k, j, i).
        shape: voxels, (k, j, i).
        foreground_samples: up to 10,000 raw intensities sampled from the case's foreground voxels.
        class_voxels: voxel count per class value 0..C-1 (background first).
    """

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    foreground_samples: np.ndarray
    class_voxels: list[int]


def case_statistics(image: np.ndarray, label: np.ndarray | None, spacing_kji: tuple[float, float, float],
                    num_classes: int, seed: int = 0) -> CaseStatistics:
    """Statistics of one case. ``image`` and ``label`` are (k, j, i); ``label`` may be None (unlabelled)."""
    rng = np.random.default_rng(seed)
    if label is not None:
        foreground = image[label > 0]
        counts = np.bincount(label.ravel().astype(np.int64), minlength=num_classes)[:num_classes].tolist()
    else:
        foreground, counts = np.empty(0, np.float32), [0] * num_classes
    if foreground.size > _SAMPLES_PER_CASE:
        foreground = rng.choice(foreground, _SAMPLES_PER_CASE, replace=False)
    return CaseStatistics(tuple(float(s) for s in spacing_kji), tuple(int(s) for s in image.shape),  # type: ignore[arg-type]
                          foreground.astype(np.float32), [int(c) for c in counts])


@dataclass
class DatasetFingerprint:
    """Summary of the labelled cases that the plan is derived from.

    Attributes:
        modality: "ct" (Hounsfield units) or "mri" (anything else: arbitrary units).
        spacings: per case, mm, (k, j, i).
        shapes: per case, voxels, (k, j, i).
        foreground_percentiles: raw intensity at the foreground's 0.5 and 99.5 percentiles.
        foreground_mean: mean raw intensity of the foreground samples.
        foreground_sd: their standard deviation.
        class_frequencies: voxel share per class (background first), over the labelled cases.
        n_cases: cases summarised.
    """

    modality: str
    spacings: list[tuple[float, float, float]]
    shapes: list[tuple[int, int, int]]
    foreground_percentiles: tuple[float, float]
    foreground_mean: float
    foreground_sd: float
    class_frequencies: list[float]
    n_cases: int

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        return asdict(self)


def fingerprint_of(cases: Iterable[CaseStatistics], modality: str) -> DatasetFingerprint:
    """Combine per-case statistics (see :func:`case_statistics`) into a fingerprint."""
    cases = list(cases)
    if not cases:
        raise ConfigError("cannot plan from zero cases: label at least one case first")
    samples = np.concatenate([c.foreground_samples for c in cases]) if cases else np.empty(0)
    if samples.size == 0:
        low = high = mean = 0.0
        sd = 1.0
    else:
        low, high = (float(v) for v in np.percentile(samples, [0.5, 99.5]))
        mean, sd = float(samples.mean()), float(samples.std())
    counts = np.sum([c.class_voxels for c in cases], axis=0).astype(np.float64)
    return DatasetFingerprint(
        modality="ct" if modality.lower() == "ct" else "mri",
        spacings=[c.spacing for c in cases],
        shapes=[c.shape for c in cases],
        foreground_percentiles=(low, high),
        foreground_mean=mean,
        foreground_sd=max(sd, 1e-6),
        class_frequencies=(counts / max(counts.sum(), 1.0)).tolist(),
        n_cases=len(cases),
    )


@dataclass
class Plan:
    """How one model is trained and applied. Stored in each checkpoint, so inference needs nothing else.

    Attributes:
        target_spacing: mm per voxel the network sees, (k, j, i).
        patch_size: training crop and sliding-window size, voxels, (k, j, i).
        strides: per down-sampling level, the stride per axis (k, j, i); len = levels - 1.
        channels: feature channels per level, finest first; len = levels.
        batch_size: expert crops per optimiser step.
        normalisation: "ct" (global foreground clip + z-score) or "zscore" (per volume).
        clip: (low, high) raw intensity clip for "ct".
        mean: raw foreground mean for "ct".
        sd: raw foreground standard deviation for "ct".
        mirror_axes: axes (array order) that augmentation and test-time augmentation may mirror.
        notes: why the plan deviates from the default rules (user overrides, anisotropy).
    """

    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    strides: list[tuple[int, int, int]]
    channels: tuple[int, ...]
    batch_size: int
    normalisation: str
    clip: tuple[float, float] = (0.0, 0.0)
    mean: float = 0.0
    sd: float = 1.0
    notes: list[str] = field(default_factory=list)
    mirror_axes: tuple[int, ...] = ()

    @property
    def total_stride(self) -> tuple[int, int, int]:
        """Product of the strides per axis: each patch edge is a multiple of it."""
        return tuple(int(np.prod([s[a] for s in self.strides])) for a in range(3))  # type: ignore[return-value]

    def to_dict(self) -> dict:
        """JSON-ready dictionary."""
        data = asdict(self)
        data["strides"] = [list(s) for s in self.strides]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """Inverse of :meth:`to_dict`."""
        return cls(
            target_spacing=tuple(float(v) for v in data["target_spacing"]),  # type: ignore[arg-type]
            patch_size=tuple(int(v) for v in data["patch_size"]),  # type: ignore[arg-type]
            strides=[tuple(int(v) for v in s) for s in data["strides"]],  # type: ignore[misc]
            channels=tuple(int(v) for v in data["channels"]),
            batch_size=int(data["batch_size"]),
            normalisation=str(data["normalisation"]),
            clip=tuple(float(v) for v in data.get("clip", (0.0, 0.0))),  # type: ignore[arg-type]
            mean=float(data.get("mean", 0.0)),
            sd=float(data.get("sd", 1.0)),
            notes=list(data.get("notes", [])),
            mirror_axes=tuple(int(a) for a in data.get("mirror_axes", ())),
        )

    def digest(self) -> str:
        """Short hash of the resampling part of the plan (the on-disk cache key)."""
        key = json.dumps([round(s, 6) for s in self.target_spacing])
        return hashlib.sha1(key.encode()).hexdigest()[:12]


def target_spacing_of(spacings: np.ndarray) -> tuple[tuple[float, float, float], str | None]:
    """nnU-Net's rule: median per axis; the low-resolution axis of anisotropic data from the 10th percentile.

    Args:
        spacings: (cases, 3) mm, (k, j, i).

    Returns:
        The target spacing (k, j, i) and a note when the anisotropic rule applied.
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacings, axis=0)
    note = None
    worst = int(np.argmax(target))
    if target[worst] / max(float(np.min(target)), 1e-6) > _ANISOTROPY_THRESHOLD:
        target[worst] = float(np.percentile(spacings[:, worst], 10))
        note = f"anisotropic data: axis {'kji'[worst]} spacing from the 10th percentile ({target[worst]:.3g} mm)"
    return tuple(float(v) for v in target), note  # type: ignore[return-value]


def _strides_for(patch: list[int], spacing: tuple[float, float, float]) -> list[tuple[int, int, int]]:
    """Per-level strides: an axis halves while its map stays >= 4 voxels and its spacing is near the finest."""
    sizes, spacings, strides = list(patch), list(spacing), []
    for _ in range(_MAX_DOWNSAMPLINGS):
        finest = min(spacings)
        level = tuple(
            2 if sizes[a] // 2 >= _MIN_FEATURE_EDGE and spacings[a] <= 2 * finest else 1 for a in range(3)
        )
        if level == (1, 1, 1):
            break
        strides.append(level)
        sizes = [s // f for s, f in zip(sizes, level)]
        spacings = [s * f for s, f in zip(spacings, level)]
    while len(strides) < 2:  # DSAL's auxiliary heads sit at 1/2 and 1/4 resolution
        strides.append((2, 2, 2))
    return strides  # type: ignore[return-value]


def _round_patch(patch: list[float], strides: list[tuple[int, int, int]], max_voxels: int) -> tuple[int, int, int]:
    """Each edge to a multiple of the total stride along its axis: up while the patch stays within the budget
    (a small volume is then covered whole), down otherwise; never below one multiple."""
    total = [int(np.prod([s[a] for s in strides])) for a in range(3)]
    up = [max(total[a], math.ceil(patch[a] / total[a]) * total[a]) for a in range(3)]
    if np.prod(up) <= max_voxels:
        return tuple(int(v) for v in up)  # type: ignore[return-value]
    return tuple(int(max(total[a], math.floor(patch[a] / total[a]) * total[a])) for a in range(3))  # type: ignore[return-value]


def mirror_axes_for(n_foreground_classes: int, mirroring: str, flip_axes: tuple[int, ...] = (0, 1, 2)) -> tuple[int, ...]:
    """Which axes augmentation may mirror.

    ``"auto"``: ``flip_axes`` when there is one foreground class (a lesion stays a lesion when mirrored), none with
    several: classes that differ by side or position (left/right organs, the anterior and posterior hippocampus)
    become indistinguishable when their position is mirrored. Measured on hippocampus MRI: with mirroring on all
    axes the network assigned both parts to one class (posterior Dice 0 after 300 steps, in 2 of 2 runs).
    ``"on"``: ``flip_axes``; ``"off"``: none.
    """
    if mirroring == "on" or (mirroring == "auto" and n_foreground_classes <= 1):
        return tuple(flip_axes)
    return ()


def make_plan(fingerprint: DatasetFingerprint, *, max_patch_voxels: int = 128**3, base_channels: int = 16,
              max_channels: int = 256, batch_size: int = 2, mirror_axes: tuple[int, ...] = ()) -> Plan:
    """Derive a :class:`Plan` from a fingerprint.

    Args:
        fingerprint: from :func:`fingerprint_of`.
        max_patch_voxels: memory budget of one crop (voxels); the patch shrinks its largest edge (in mm) until it
            fits. 128^3 fits a 16-channel network with batch 2 in ~8 GB of GPU memory; CPU users lower it.
        base_channels: channels at full resolution, doubled per level up to ``max_channels``.
        batch_size: expert crops per step.
    """
    spacings = np.asarray(fingerprint.spacings, dtype=np.float64)
    target, note = target_spacing_of(spacings)
    shapes = np.asarray(fingerprint.shapes, dtype=np.float64)
    resampled = np.median(shapes * spacings / np.asarray(target), axis=0)
    patch = [float(v) for v in resampled]
    while np.prod(patch) > max_patch_voxels:
        # shrink the axis that is largest in millimetres (keeps the field of view balanced)
        axis = int(np.argmax([p * s for p, s in zip(patch, target)]))
        patch[axis] *= 0.9
    strides = _strides_for([int(round(p)) for p in patch], target)
    patch_size = _round_patch(patch, strides, max_patch_voxels)
    levels = len(strides) + 1
    channels = tuple(min(base_channels * 2**level, max_channels) for level in range(levels))
    notes = [note] if note else []
    if fingerprint.modality == "ct":
        low, high = fingerprint.foreground_percentiles
        return Plan(target, patch_size, strides, channels, batch_size, "ct", (low, high), fingerprint.foreground_mean,
                    fingerprint.foreground_sd, notes, tuple(mirror_axes))
    return Plan(target, patch_size, strides, channels, batch_size, "zscore", notes=notes, mirror_axes=tuple(mirror_axes))


def override_plan(plan: Plan, *, patch_size: tuple[int, ...] = (), channels: tuple[int, ...] = (),
                  batch_size: int = 0) -> Plan:
    """The plan with a user's explicit settings (``training.patch_size``, ``network.channels``,
    ``training.batch_size``) in place of the planned ones.

    Strides are re-derived for an overridden patch and trimmed or extended (with 2 on every axis) to the number
    of levels ``channels`` asks for.

    Raises:
        ConfigError: the patch is not a multiple of the network's total stride along some axis.
    """
    patch = tuple(int(p) for p in patch_size) if patch_size else plan.patch_size
    levels = len(channels) if channels else len(plan.channels)
    strides = _strides_for(list(patch), plan.target_spacing) if patch_size else list(plan.strides)
    strides = (strides + [(2, 2, 2)] * levels)[: levels - 1]
    total = [int(np.prod([s[a] for s in strides])) for a in range(3)]
    if any(p % t for p, t in zip(patch, total)):
        raise ConfigError(
            f"training.patch_size {patch} must be a multiple of the network's total stride {tuple(total)} per axis "
            f"({levels} levels); change the patch or network.channels"
        )
    notes = list(plan.notes) + [n for n, v in (("patch_size set by the user", patch_size), ("channels set by the user", channels)) if v]
    return Plan(plan.target_spacing, patch, strides, tuple(channels) if channels else plan.channels,  # type: ignore[arg-type]
                batch_size or plan.batch_size, plan.normalisation, plan.clip, plan.mean, plan.sd, notes, plan.mirror_axes)
