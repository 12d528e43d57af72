"""Pseudo-label quality, measured where the simulation knows the truth.

Two questions (issue 11):

* **How good are DSAL's pseudo-labels?** :func:`pseudo_label_dice`: each pseudo-label's Dice to the ground truth,
  on the case's own grid (mean over foreground classes, the convention of :mod:`activeseg.method.metrics`).
* **Does ALNT weight good pseudo-labels higher?** ALNT's premise is that a pseudo-labelled crop whose gradient
  agrees with the experts' is a correct one. :class:`CropWeightRecorder` is a
  :data:`activeseg.pipeline.training_round.WeightObserver`: it records every ALNT step's pseudo crops and their
  final weights. :meth:`CropWeightRecorder.summary` then scores each crop's pseudo-label against the truth inside
  the same box on the planned grid (before augmentation) and reports the Spearman correlation between weight and
  true Dice over all crops, over crops with any foreground, and the within-step concordance (in a step whose
  crops got different weights, does the heavier crop have the higher true Dice?).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.io.volumes import Volume, read_volume
from activeseg.method.metrics import mean_dice
from activeseg.model.preprocessing import resample_volume
from activeseg.model.sampling import CropOrigin

__all__ = ["pseudo_label_dice", "spearman", "CropWeightRecorder"]


def pseudo_label_dice(pseudo: Mapping[str, Volume], truth_files: Mapping[str, Path], classes: Sequence[int]) -> dict[str, float]:
    """Dice of each pseudo-label to its ground truth, mean over ``classes`` (1.0 when both are empty).

    Args:
        pseudo: case id -> pseudo-label (the case's own grid).
        truth_files: case id -> ground-truth label file (same grid).
        classes: foreground class values.

    Raises:
        ValueError: a pseudo-label's grid differs from its truth's.
    """
    scores: dict[str, float] = {}
    for case_id, volume in pseudo.items():
        truth = read_volume(truth_files[case_id], dtype=np.uint8)
        if truth.array.shape != volume.array.shape:
            raise ValueError(f"{case_id}: pseudo-label shape {volume.array.shape} differs from the truth's {truth.array.shape}")
        scores[case_id] = mean_dice(volume.array, truth.array, classes)
    return scores


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):  # average the ranks of tied values
        sums = np.bincount(inverse, weights=ranks)
        counts = np.bincount(inverse)
        ranks = (sums / counts)[inverse]
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties averaged); ``None`` with fewer than 3 pairs or a constant variable."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"spearman of {len(a)} and {len(b)} values")
    if len(a) < 3:
        return None
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass
class CropWeightRecorder:
    """Collects (crop origin, ALNT weight, step) of one training round; scores them against the truth afterwards.

    Use as ``train_round(store, weight_observer=recorder)``.
    """

    records: list[tuple[int, CropOrigin, float]] = field(default_factory=list)
    steps: int = 0

    def __call__(self, origins: tuple[CropOrigin, ...], weights: np.ndarray) -> None:
        for origin, weight in zip(origins, np.asarray(weights, dtype=np.float64).ravel()):
            self.records.append((self.steps, origin, float(weight)))
        self.steps += 1

    def summary(self, pseudo: Mapping[str, Volume], truth_files: Mapping[str, Path], classes: Sequence[int],
                target_spacing_kji: tuple[float, float, float]) -> dict[str, Any]:
        """Weight against true crop Dice over the recorded crops.

        Args:
            pseudo: case id -> the pseudo-label the round trained on (own grid).
            truth_files: case id -> ground-truth label file.
            classes: foreground class values.
            target_spacing_kji: the round's planned spacing (mm, k, j, i): crops were cut on that grid.

        Returns:
            ``crops`` (scored), ``spearman`` (all crops), ``spearman_foreground`` (crops where pseudo-label or truth
            has foreground), ``concordance`` (share of steps with unequal weights where the heavier crop's Dice is
            higher; ties in Dice count one half) and ``concordance_steps``, ``mean_crop_dice``, ``mean_weight``.
            Correlations are ``None`` where undefined.
        """
        planned: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for case_id in {origin.case_id for _, origin, _ in self.records}:
            if case_id not in pseudo:
                continue
            truth = read_volume(truth_files[case_id], dtype=np.uint8)
            planned[case_id] = (
                resample_volume(pseudo[case_id], target_spacing_kji, is_label=True).array,
                resample_volume(truth, target_spacing_kji, is_label=True).array,
            )
        scored: list[tuple[int, float, float, bool]] = []  # (step, weight, crop Dice, any foreground)
        for step, origin, weight in self.records:
            if origin.case_id not in planned:
                continue
            label, truth = (array[origin.slices()] for array in planned[origin.case_id])
            scored.append((step, weight, mean_dice(label, truth, classes), bool(label.any() or truth.any())))
        weights = [s[1] for s in scored]
        dice = [s[2] for s in scored]
        foreground = [s for s in scored if s[3]]
        by_step: dict[int, list[tuple[float, float]]] = {}
        for step, weight, crop_dice, _ in scored:
            by_step.setdefault(step, []).append((weight, crop_dice))
        agreements: list[float] = []
        for pairs in by_step.values():
            for a in range(len(pairs)):
                for b in range(a + 1, len(pairs)):
                    (wa, da), (wb, db) = pairs[a], pairs[b]
                    if wa == wb:
                        continue
                    agreements.append(0.5 if da == db else float((wa > wb) == (da > db)))
        return {
            "crops": len(scored),
            "spearman": spearman(weights, dice),
            "spearman_foreground": spearman([s[1] for s in foreground], [s[2] for s in foreground]),
            "foreground_crops": len(foreground),
            "concordance": float(np.mean(agreements)) if agreements else None,
            "concordance_steps": len(agreements),
            "mean_crop_dice": float(np.mean(dice)) if dice else None,
            "mean_weight": float(np.mean(weights)) if weights else None,
        }
