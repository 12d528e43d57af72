"""The one Dice (activeseg.method.metrics): exact values, the empty-mask convention, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.method.metrics import dice_per_class, mean_dice, summarise_dice


def _reference(prediction: np.ndarray, truth: np.ndarray, value: int) -> float | None:
    """Dice of one class by its definition, 2|P∩T| / (|P| + |T|), with boolean masks."""
    p, t = prediction == value, truth == value
    total = p.sum() + t.sum()
    return None if total == 0 else 2.0 * np.logical_and(p, t).sum() / total


def test_matches_the_definition_on_random_label_maps() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        prediction = rng.integers(0, 4, size=(5, 6, 7))
        truth = rng.integers(0, 3, size=(5, 6, 7)).astype(np.uint8)
        got = dice_per_class(prediction, truth, [1, 2, 3, 7])
        assert got == {value: _reference(prediction, truth, value) for value in [1, 2, 3, 7]}
        assert got[7] is None


def test_hand_computed_values() -> None:
    prediction = np.array([0, 1, 1, 2, 2, 2])
    truth = np.array([0, 1, 2, 2, 0, 0])
    # class 1: |P| = 2, |T| = 1, overlap 1 -> 2/3; class 2: |P| = 3, |T| = 2, overlap 1 -> 2/5
    assert dice_per_class(prediction, truth, [1, 2]) == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 5)}
    assert mean_dice(prediction, truth, [1, 2]) == pytest.approx((2 / 3 + 2 / 5) / 2)


def test_empty_mask_convention() -> None:
    empty = np.zeros((4, 4), np.uint8)
    one = empty.copy()
    one[0, 0] = 1
    assert dice_per_class(empty, empty, [1]) == {1: None}  # absent from both: not counted
    assert mean_dice(empty, empty, [1, 2]) == 1.0  # nothing counted: the two agree
    assert dice_per_class(one, empty, [1]) == {1: 0.0}  # present in one only: 0
    assert dice_per_class(empty, one, [1]) == {1: 0.0}
    # an absent class neither raises nor lowers the mean of the counted ones
    assert mean_dice(one, one, [1, 2]) == 1.0
    assert mean_dice(one, empty, [1, 2]) == 0.0


def test_summary_over_cases_counts_a_class_only_where_present() -> None:
    per_case = [{1: 0.5, 2: None}, {1: 1.0, 2: 0.25}, {1: None, 2: None}]
    summary = summarise_dice(per_case, {1: "lung", 2: "lesion", 3: "never"})
    assert summary == {"lung": 0.75, "lesion": 0.25, "never": 1.0, "mean": pytest.approx((0.75 + 0.25 + 1.0) / 3)}


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        dice_per_class(np.zeros((2, 3), int), np.zeros((3, 2), int), [1])
    with pytest.raises(TypeError, match="integer label maps"):
        dice_per_class(np.zeros(3, float), np.zeros(3, int), [1])
    with pytest.raises(ValueError, match="non-negative"):
        dice_per_class(np.array([-1, 0]), np.array([0, 0]), [1])
