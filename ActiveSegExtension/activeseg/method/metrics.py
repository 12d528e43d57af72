"""Dice, the one implementation every part of the engine uses (ranking's M-DSC, validation, test evaluation).

Convention for empty masks (DSAL's; validation and test evaluation use the same):

* A class absent from *both* masks of a pair is not counted for that pair (``None``): two empty masks say
  nothing about how well the model segments that class, so they neither raise nor lower the score.
* A class present in only one of the two masks scores 0.
* A pair in which no class is counted scores 1.0 in :func:`mean_dice` (the two masks agree: nothing there).
* Over several cases (:func:`summarise_dice`) a class is averaged over the cases where it was counted; a
  class never counted scores 1.0.

Label maps are integer arrays of equal shape (any axis order, the same in both); Dice is a ratio of voxel
counts, so spacing does not enter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "dice_counts", "dice_from_counts", "dice_per_class", "mean_dice", "mean_of_counted", "summarise_dice",
    "collapsed_classes",
]


def _label_counts(array: np.ndarray, length: int) -> np.ndarray:
    """Voxels per label value ``0 .. length - 1`` (values beyond are counted in no class)."""
    flat = np.asarray(array).ravel()
    if not np.issubdtype(flat.dtype, np.integer) and flat.dtype != np.bool_:
        raise TypeError(f"Dice needs integer label maps, got dtype {flat.dtype}")
    if flat.size and int(flat.min()) < 0:
        raise ValueError("Dice needs non-negative label values")
    return np.bincount(flat, minlength=length)[:length]


def dice_counts(prediction: np.ndarray, truth: np.ndarray, length: int) -> np.ndarray:
    """The voxel counts Dice is made of, additive over disjoint parts of a volume (a slab of slices at a time).

    Args:
        prediction, truth: integer label maps of the same shape.
        length: count label values ``0 .. length - 1``.

    Returns:
        int64 (3, length): voxels per value in ``prediction``, in ``truth``, and where both give that value.

    Raises:
        ValueError: shapes differ or a label value is negative. TypeError: non-integer label maps.
    """
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"Dice of label maps of different shapes {prediction.shape} and {truth.shape}")
    both = truth[prediction == truth]  # voxels where the two agree, by value
    return np.stack([_label_counts(a, length) for a in (prediction, truth, both)]).astype(np.int64)


def dice_from_counts(counts: np.ndarray, classes: Iterable[int]) -> dict[int, float | None]:
    """Dice of each class value from (summed) :func:`dice_counts`: ``2 |P ∩ T| / (|P| + |T|)``, ``None`` for a
    class absent from both maps (not counted)."""
    result: dict[int, float | None] = {}
    for value in classes:
        total = int(counts[0, value]) + int(counts[1, value])
        result[int(value)] = 2.0 * int(counts[2, value]) / total if total else None
    return result


def dice_per_class(prediction: np.ndarray, truth: np.ndarray, classes: Iterable[int]) -> dict[int, float | None]:
    """Dice of each class value between two label maps: ``2 |P ∩ T| / (|P| + |T|)``.

    Args:
        prediction: integer label map.
        truth: integer label map of the same shape.
        classes: the class values to score (usually the foreground labels, background 0 excluded).

    Returns:
        ``{class value: Dice in [0, 1]}``, ``None`` for a class absent from both maps (not counted).

    Raises:
        ValueError: shapes differ or a label value is negative. TypeError: non-integer label maps.
    """
    values = [int(value) for value in classes]
    if not values:
        if np.shape(prediction) != np.shape(truth):
            raise ValueError(f"Dice of label maps of different shapes {np.shape(prediction)} and {np.shape(truth)}")
        return {}
    return dice_from_counts(dice_counts(prediction, truth, max(values) + 1), values)


def mean_dice(prediction: np.ndarray, truth: np.ndarray, classes: Iterable[int]) -> float:
    """Mean Dice over the ``classes`` counted for this pair (see the module's convention); 1.0 when none is."""
    return mean_of_counted(dice_per_class(prediction, truth, classes))


def mean_of_counted(per_class: Mapping[int, float | None]) -> float:
    """:func:`mean_dice` of a :func:`dice_per_class` (or :func:`dice_from_counts`) result."""
    counted = [d for d in per_class.values() if d is not None]
    return float(np.mean(counted)) if counted else 1.0


def summarise_dice(per_case: Sequence[Mapping[int, float | None]], labels: Mapping[int, str]) -> dict[str, float]:
    """Per-class Dice over cases, and their mean.

    Args:
        per_case: :func:`dice_per_class` results, one per case.
        labels: class value -> name (the foreground labels, e.g. ``Config.labels``).

    Returns:
        ``{label name: mean Dice over the cases where the class was counted (1.0 if never)}`` plus
        ``"mean"``: the mean over the classes.
    """
    result: dict[str, float] = {}
    for value, name in labels.items():
        counted = [d[value] for d in per_case if d.get(value) is not None]
        result[name] = float(np.mean(counted)) if counted else 1.0
    result["mean"] = float(np.mean(list(result.values())))
    return result


def collapsed_classes(val_dice: Mapping[str, Any], labels: Mapping[int, str], threshold: float) -> list[str]:
    """Foreground classes (names) a model has not learned: validation Dice below ``threshold``.

    Args:
        val_dice: :func:`summarise_dice` of the validation split (class name -> Dice, and ``mean``).
        labels: class value -> name.
        threshold: ``training.unlearned_class_dice``; 0 finds none.

    Classes absent from the validation labels score 1 by this module's convention, so they never count.
    """
    return [name for name in labels.values() if isinstance(val_dice.get(name), (int, float)) and val_dice[name] < threshold]
