"""DSAL: M-DSC, confidence, weak schedule and strong/weak routing."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.config import DsalConfig
from activeseg.method.dsal import CaseScore, confidence, dice_agreement, mdsc, route_cases, weak_quota


def blob(shape: tuple[int, int, int], start: int, stop: int, value: int = 1) -> np.ndarray:
    array = np.zeros(shape, dtype=np.uint8)
    array[start:stop, start:stop, start:stop] = value
    return array


def test_identical_heads_give_one() -> None:
    main = blob((12, 12, 12), 2, 8)
    assert mdsc(main, [main.copy(), main.copy()], num_classes=2) == pytest.approx(1.0)


def test_disjoint_heads_give_zero() -> None:
    main = blob((12, 12, 12), 0, 4)
    other = blob((12, 12, 12), 6, 10)
    assert mdsc(main, [other, other], num_classes=2) == pytest.approx(0.0)


def test_partial_overlap_is_the_dice() -> None:
    main = np.zeros((4, 4, 4), np.uint8)
    aux = np.zeros((4, 4, 4), np.uint8)
    main[0, 0, :4] = 1  # 4 voxels
    aux[0, 0, :2] = 1  # 2 voxels, both inside main
    assert dice_agreement(main, aux, 2) == pytest.approx(2 * 2 / 6)
    assert mdsc(main, [aux, main], 2) == pytest.approx((2 * 2 / 6 + 1.0) / 2)


def test_two_empty_masks_agree_by_convention() -> None:
    empty = np.zeros((8, 8, 8), np.uint8)
    assert mdsc(empty, [empty, empty], num_classes=3) == 1.0


def test_absent_class_does_not_inflate_agreement() -> None:
    """Multi-class: a class absent from both masks is skipped, not counted as a perfect 1."""
    main = blob((12, 12, 12), 0, 4, value=1)
    aux = blob((12, 12, 12), 6, 10, value=1)
    assert dice_agreement(main, aux, num_classes=3) == pytest.approx(0.0)


def test_confidence_is_mean_max_probability() -> None:
    probabilities = np.zeros((2, 2, 1, 1), np.float32)
    probabilities[:, 0] = [[[0.9]], [[0.1]]]
    probabilities[:, 1] = [[[0.4]], [[0.6]]]
    assert confidence(probabilities) == pytest.approx((0.9 + 0.6) / 2)


def test_weak_schedule_follows_settings() -> None:
    settings = DsalConfig(weak_start_round=5, weak_initial=20, weak_increment=20)
    assert [weak_quota(t, settings) for t in (1, 4, 5, 6, 8)] == [0, 0, 20, 40, 80]


def scores(n: int, seed: int = 0) -> list[CaseScore]:
    rng = np.random.default_rng(seed)
    return [CaseScore(f"c{i:02d}", float(rng.uniform()), float(rng.uniform(0.5, 1.0)), int(rng.integers(1, 100))) for i in range(n)]


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_strong_queue_is_k_lowest_mdsc(k: int) -> None:
    cases = scores(20)
    strong, _ = route_cases(cases, k, 0, DsalConfig())
    expected = [s.case_id for s in sorted(cases, key=lambda s: s.mdsc)[:k]]
    assert strong == expected


def test_strong_and_weak_are_disjoint_and_weak_is_top_confidence_bin() -> None:
    cases = scores(60, seed=1)
    # make the most confident cases also the least agreeing, so they compete for both sets
    settings = DsalConfig(confidence_bins=4)
    strong, weak = route_cases(cases, 10, 5, settings)
    assert not set(strong) & set(weak)
    assert len(strong) == 10 and 0 < len(weak) <= 5
    values = [s.confidence for s in cases]
    threshold = max(values) - (max(values) - min(values)) / 4
    by_id = {s.case_id: s for s in cases}
    assert all(by_id[c].confidence >= threshold for c in weak)
    candidates = sorted((s for s in cases if s.confidence >= threshold and s.case_id not in strong), key=lambda s: -s.mdsc)
    assert weak == [s.case_id for s in candidates[: len(weak)]]


def test_weak_excludes_empty_predictions_and_ineligible_cases() -> None:
    cases = [CaseScore("empty", 1.0, 0.99, 0), CaseScore("rejected", 0.95, 0.99, 50), CaseScore("ok", 0.9, 0.99, 50)]
    _, weak = route_cases(cases, 0, 3, DsalConfig(), weak_eligible={"empty", "ok"})
    assert weak == ["ok"]


def test_tiebreak_ranks_less_confident_first() -> None:
    cases = [CaseScore("sure", 1.0, 0.99, 0), CaseScore("unsure", 1.0, 0.6, 0)]
    strong, _ = route_cases(cases, 1, 0, DsalConfig(foreground_tiebreak=True))
    assert strong == ["unsure"]
