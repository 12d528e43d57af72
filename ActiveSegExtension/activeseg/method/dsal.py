"""DSAL: M-DSC uncertainty from deep-supervision side outputs, confidence, and strong/weak routing.

Zhao et al., "DSAL: Deeply supervised active learning from strong and weak labelers", IEEE JBHI 2021.
One deterministic forward pass per case (no dropout, no repeats) gives the main and two auxiliary heads.

Where this differs from the paper (the empty-mask convention of M-DSC and what follows from it, the range of
the confidence histogram) is listed once, in the README's "Deviations"; the functions below state their rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from activeseg.config import DsalConfig
from activeseg.method.metrics import mean_dice

__all__ = ["CaseScore", "dice_agreement", "mdsc", "confidence", "weak_quota", "route_cases"]


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


def confidence(probabilities: np.ndarray) -> float:
    """Mean over voxels of the max class probability; ``probabilities`` is (C, ...) softmax output."""
    return float(probabilities.max(axis=0).mean())


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
