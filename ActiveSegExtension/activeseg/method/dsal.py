"""DSAL: M-DSC uncertainty from deep-supervision side outputs, confidence, and strong/weak routing.

Zhao et al., "DSAL: Deeply supervised active learning from strong and weak labelers", IEEE JBHI 2021.
One deterministic forward pass per case (no dropout, no repeats) gives the main and two auxiliary heads.

On a full-size CT the three heads' probability volumes do not fit comfortably in memory (3 x C x voxels x 4 B), so
ranking folds them slab by slab into :class:`RankingAccumulator` while the sliding window moves
(:func:`activeseg.model.predictor.stream_heads`): per-class voxel counts for M-DSC
(:func:`activeseg.method.metrics.dice_counts`, summed over slabs), a running sum for the confidence, and the main
head's label map. M-DSC and the foreground count are exactly those of :func:`mdsc` on the whole label maps (the
same counts and arithmetic, from :mod:`activeseg.method.metrics`); the confidence is summed in float64
instead of numpy's float32 mean over the volume, so it differs from :func:`confidence` by float rounding only
(below 1e-6; tested).

Where this differs from the paper (the empty-mask convention of M-DSC and what follows from it, the range of
the confidence histogram) is listed once, in the README's "Deviations"; the functions below state their rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from activeseg.config import DsalConfig
from activeseg.method.metrics import dice_counts, dice_from_counts, dice_per_class, mean_dice, mean_of_counted

__all__ = [
    "CaseScore", "dice_agreement", "mdsc", "mdsc_per_class", "confidence", "RankingAccumulator", "weak_quota", "route_cases",
]


@dataclass(frozen=True)
class CaseScore:
    """DSAL scores of one case.

    Attributes:
        case_id: the case.
        mdsc: mean Dice(main, auxiliary head) over the two auxiliary heads, [0, 1]; low = uncertain.
        confidence: mean over voxels of the main head's max softmax probability, [1/C, 1].
        foreground_voxels: voxels the main head labels as any foreground class.
    """

    case_id: str
    mdsc: float
    confidence: float
    foreground_voxels: int


def dice_agreement(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Dice between two integer label arrays of equal shape, averaged over the foreground classes
    ``1 .. num_classes - 1`` present in either (:func:`activeseg.method.metrics.mean_dice`).

    Returns 1.0 when no foreground class is present in either array (two empty masks agree).
    """
    return mean_dice(a, b, range(1, num_classes))


def mdsc(main: np.ndarray, auxiliaries: list[np.ndarray], num_classes: int) -> float:
    """M-DSC: mean over auxiliary heads of Dice(main, head); all arrays are argmax label maps."""
    if not auxiliaries:
        raise ValueError("M-DSC needs at least one auxiliary head")
    return float(np.mean([dice_agreement(main, aux, num_classes) for aux in auxiliaries]))


def mdsc_per_class(main: np.ndarray, auxiliaries: list[np.ndarray], num_classes: int) -> dict[int, float | None]:
    """M-DSC of each foreground class: mean over auxiliary heads of Dice(main, head) for that class alone.

    All arrays are argmax label maps of equal shape. A head in which the class is absent from both it and ``main``
    agrees on it (1.0, as :func:`dice_agreement` scores a pair with nothing in it); a class absent from ``main``
    and every head is not counted (``None``). With one foreground class the value is :func:`mdsc` (``None`` where
    that is 1.0).

    Returns:
        ``{class value 1 .. num_classes - 1: M-DSC in [0, 1] or None}``.
    """
    if not auxiliaries:
        raise ValueError("M-DSC needs at least one auxiliary head")
    classes = range(1, num_classes)
    per_head = [dice_per_class(main, aux, classes) for aux in auxiliaries]
    return {value: None if all(d[value] is None for d in per_head)
            else float(np.mean([1.0 if d[value] is None else d[value] for d in per_head])) for value in classes}


def confidence(probabilities: np.ndarray) -> float:
    """Mean over voxels of the max class probability; ``probabilities`` is (C, ...) softmax output."""
    return float(probabilities.max(axis=0).mean())


class RankingAccumulator:
    """One case's DSAL scores and main label map, accumulated slab by slab during the ranking pass.

    Feed it every :class:`activeseg.model.predictor.HeadSlab` of :func:`activeseg.model.predictor.stream_heads`
    (any slab order, each slice once), then read :meth:`score` and :attr:`main_labels`. Holds one uint8 label map
    (k, j, i) and a few counters instead of three (C, k, j, i) float32 probability volumes.

    Args:
        shape: the volume (k, j, i) on the grid the network sees.
        num_classes: C, background included (at most 256: label maps are uint8).

    Attributes:
        main_labels: (k, j, i) uint8 argmax of the main head (filled as slabs arrive).
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int) -> None:
        if not 2 <= num_classes <= 256:
            raise ValueError(f"num_classes must be 2..256 (uint8 label maps), got {num_classes}")
        self.num_classes = num_classes
        self.main_labels = np.zeros(shape, np.uint8)
        self._counts = [np.zeros((3, num_classes), np.int64) for _ in range(2)]  # main vs half, main vs quarter
        self._confidence_sum = 0.0
        self._slices = 0

    def add(self, start: int, main: np.ndarray, half: np.ndarray, quarter: np.ndarray) -> None:
        """Fold in the slices ``start .. start + n - 1``: softmax probabilities (C, n, j, i) of the three heads."""
        labels = [p.argmax(axis=0).astype(np.uint8) for p in (main, half, quarter)]
        stop = start + labels[0].shape[0]
        if labels[0].shape[1:] != self.main_labels.shape[1:] or not 0 <= start < stop <= self.main_labels.shape[0]:
            raise ValueError(f"slab {start}..{stop - 1} of shape {main.shape} does not fit a volume {self.main_labels.shape}")
        self.main_labels[start:stop] = labels[0]
        for counts, auxiliary in zip(self._counts, labels[1:]):
            counts += dice_counts(labels[0], auxiliary, self.num_classes)
        self._confidence_sum += float(main.max(axis=0).sum(dtype=np.float64))
        self._slices += stop - start

    def score(self, case_id: str) -> CaseScore:
        """The case's :class:`CaseScore` (M-DSC, confidence, foreground voxels on this grid).

        Raises:
            ValueError: not every slice was added exactly once.
        """
        if self._slices != self.main_labels.shape[0]:
            raise ValueError(f"{self._slices} slice(s) added, the volume has {self.main_labels.shape[0]}")
        voxels = self.main_labels.size
        return CaseScore(
            case_id=case_id,
            mdsc=float(np.mean([mean_of_counted(dice_from_counts(counts, range(1, self.num_classes)))
                                for counts in self._counts])),
            confidence=self._confidence_sum / voxels,
            foreground_voxels=int(voxels - self._counts[0][0, 0]),
        )


def weak_quota(round_index: int, settings: DsalConfig) -> int:
    """Pseudo-labels to write after training round ``round_index`` (1-based).

    DSAL: none before ``weak_start_round``, then ``weak_initial + weak_increment * (t - start)``
    (original: start 5, 20 + 20 (t - 5)).
    """
    if round_index < settings.weak_start_round:
        return 0
    return settings.weak_initial + settings.weak_increment * (round_index - settings.weak_start_round)


def route_cases(
    scores: list[CaseScore], strong_count: int, weak_count: int, settings: DsalConfig, weak_eligible: set[str] | None = None
) -> tuple[list[str], list[str]]:
    """Split scored cases into the strong queue and the weak (pseudo-label) set; the two are disjoint.

    Args:
        scores: candidates' scores.
        strong_count: K, the lowest-M-DSC cases to queue for the radiologist.
        weak_count: how many pseudo-labels to write.
        settings: histogram bins and tie-break.
        weak_eligible: ids that may be pseudo-labelled (default: all); e.g. rejected cases are not.

    Returns:
        (strong ids most uncertain first, weak ids most agreeing first).
    """
    def uncertainty_key(score: CaseScore) -> tuple[float, float, str]:
        tiebreak = score.confidence if settings.foreground_tiebreak else 0.0
        return (round(score.mdsc, 6), tiebreak, score.case_id)

    ordered = sorted(scores, key=uncertainty_key)
    strong = [s.case_id for s in ordered[: max(0, strong_count)]]
    if weak_count <= 0 or not scores:
        return strong, []
    values = np.array([s.confidence for s in scores])
    low, high = float(values.min()), float(values.max())
    threshold = high - (high - low) / settings.confidence_bins if high > low else low
    taken = set(strong)
    candidates = [
        s for s in scores
        if s.confidence >= threshold
        and s.case_id not in taken
        and s.foreground_voxels > 0
        and (weak_eligible is None or s.case_id in weak_eligible)
    ]
    candidates.sort(key=lambda s: (-s.mdsc, -s.confidence, s.case_id))
    return strong, [s.case_id for s in candidates[:weak_count]]
