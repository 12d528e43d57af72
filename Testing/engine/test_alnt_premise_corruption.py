"""The bad pseudo-labels of the ALNT premise benchmark (Testing/benchmarks/bench_alnt_premise.py): exact corruptions."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.errors import ConfigError
from activeseg.io.volumes import Geometry
from activeseg.model.case_cache import CachedCase
from activeseg.model.plan import CaseStatistics
from Testing.benchmarks.bench_alnt_premise import corrupt_label, pseudo_case


def _label() -> np.ndarray:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 3, size=(6, 7, 8)).astype(np.uint8)
    label[0, 0, 0] = 5  # a value the corruption must leave alone
    return label


def test_swap_exchanges_the_two_classes_and_nothing_else() -> None:
    label = _label()
    before = label.copy()
    swapped = corrupt_label(label, "swap")
    assert np.array_equal(label, before), "the input was modified"
    assert np.array_equal(swapped == 1, label == 2) and np.array_equal(swapped == 2, label == 1)
    assert np.array_equal(swapped == 0, label == 0) and swapped[0, 0, 0] == 5
    assert swapped.dtype == label.dtype
    assert np.array_equal(corrupt_label(swapped, "swap"), label)


def test_erase_removes_the_posterior_class_only() -> None:
    label = _label()
    erased = corrupt_label(label, "erase")
    assert not (erased == 2).any()
    assert np.array_equal(erased == 1, label == 1) and erased[0, 0, 0] == 5
    assert np.array_equal(erased == 0, (label == 0) | (label == 2))


def test_unknown_corruption_is_refused() -> None:
    with pytest.raises(ConfigError):
        corrupt_label(_label(), "flip")


def test_pseudo_case_moves_the_foreground_locations_with_the_label() -> None:
    label = _label()
    locations = {value: np.argwhere(label == value).astype(np.int32) for value in (1, 2)}
    case = CachedCase("c", np.zeros(label.shape, np.float32), label, Geometry(label.shape[::-1], (1.0,) * 3, (0.0,) * 3,
                      (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)), 0.0, 1.0, 0.0, locations,
                      CaseStatistics((1.0,) * 3, label.shape, np.zeros(0, np.float32), [0, 0, 0]))
    assert pseudo_case(case, None) is case
    swapped = pseudo_case(case, "swap")
    assert np.array_equal(swapped.label, corrupt_label(label, "swap")) and case.label is label
    for value, voxels in swapped.locations.items():
        assert (swapped.label[tuple(voxels.T)] == value).all()
    erased = pseudo_case(case, "erase")
    assert set(erased.locations) == {1} and np.array_equal(erased.locations[1], locations[1])
