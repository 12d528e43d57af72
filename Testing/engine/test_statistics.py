"""Issue 11: the statistics of label-efficiency curves (AULC, paired bootstrap) and pseudo-label quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activeseg.experiments.pseudo_quality import CropWeightRecorder, pseudo_label_dice, spearman
from activeseg.experiments.statistics import (
    collect_curves, compare_to_reference, hierarchical_bootstrap, normalised_aulc, pseudo_label_report,
)
from activeseg.io.volumes import Geometry, Volume, write_volume
from activeseg.model.sampling import CropOrigin


def _run(label: str, seed: int, budgets: list[int], per_case: list[dict[str, float]], strategy: str | None = None) -> dict:
    rows = [{"labelled": b, "test_per_case": cases, "pseudo": 0} for b, cases in zip(budgets, per_case)]
    return {"metadata": {"label": label, "strategy": strategy or label, "seed": seed}, "rounds": rows}


def test_normalised_aulc_is_the_mean_dice_over_the_budget_range() -> None:
    assert normalised_aulc([4, 8, 12], np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5)
    # linear from 0.4 to 0.8 over [4, 12]: mean 0.6; unequal spacing is weighted by width
    assert normalised_aulc([4, 8, 12], np.array([0.4, 0.6, 0.8])) == pytest.approx(0.6)
    assert normalised_aulc([4, 6, 12], np.array([0.0, 1.0, 1.0])) == pytest.approx((1 * 2 / 2 + 6) / 8)
    per_case = normalised_aulc([1, 2], np.array([[0.0, 1.0], [1.0, 1.0]]))
    assert per_case.tolist() == pytest.approx([0.5, 1.0])
    with pytest.raises(ValueError):
        normalised_aulc([4], np.array([0.5]))


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_more_data() -> None:
    constant = hierarchical_bootstrap([np.full(10, 0.02), np.full(10, 0.02)])
    assert (constant.mean, constant.low, constant.high) == pytest.approx((0.02, 0.02, 0.02))
    rng = np.random.default_rng(0)
    small = hierarchical_bootstrap([rng.normal(0.01, 0.05, 10) for _ in range(3)])
    large = hierarchical_bootstrap([rng.normal(0.01, 0.05, 200) for _ in range(20)])
    assert small.low <= small.mean <= small.high
    assert (large.high - large.low) < (small.high - small.low)
    assert hierarchical_bootstrap([np.arange(5.0)], seed=3) == hierarchical_bootstrap([np.arange(5.0)], seed=3)


def test_seed_level_variation_widens_the_interval() -> None:
    """Two seeds that disagree entirely: resampling seeds must show that, not only resampling cases."""
    interval = hierarchical_bootstrap([np.full(30, -0.1), np.full(30, 0.1)])
    assert interval.low == pytest.approx(-0.1) and interval.high == pytest.approx(0.1)


def test_a_strategy_better_on_every_case_is_significantly_above_the_reference() -> None:
    rng = np.random.default_rng(1)
    budgets = [4, 8, 12]
    runs = []
    for seed in range(3):
        cases = [f"c{n}" for n in range(20)]
        base = [{c: float(v) for c, v in zip(cases, rng.uniform(0.5, 0.8, 20) + 0.05 * step)} for step in range(3)]
        better = [{c: v + (0.0 if step == 0 else 0.05) for c, v in row.items()} for step, row in enumerate(base)]
        runs += [_run("fg-random", seed, budgets, base), _run("dsal+alnt", seed, budgets, better)]
    runs.append(_run("full", 0, [4, 8, 40], [{"c0": 0.1}, {"c0": 0.2}, {"c0": 0.9}]))
    summary = compare_to_reference(collect_curves(runs))
    versus = summary["curves"]["dsal+alnt"]["versus_reference"]
    assert versus["per_budget"][0]["mean"] == pytest.approx(0.0)
    assert [p["significantly_above"] for p in versus["per_budget"]] == [False, True, True]
    assert not any(p["significantly_below"] for p in versus["per_budget"])
    # AULC difference: 0 at 4, 0.05 at 8 and 12 -> trapezoid (0.025*4 + 0.05*4) / 8
    assert versus["aulc"]["mean"] == pytest.approx(0.0375)
    assert "versus_reference" not in summary["curves"]["fg-random"]
    assert [p["labelled"] for p in summary["curves"]["full"]["per_budget"]] == [40]  # the ceiling: its last round


def test_results_without_per_case_dice_are_refused() -> None:
    run = {"metadata": {"label": "random", "strategy": "random", "seed": 0}, "rounds": [{"labelled": 4}]}
    with pytest.raises(ValueError, match="per-case"):
        collect_curves([run])


def test_spearman_matches_hand_computed_ranks() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get average ranks: x ranks (1.5, 1.5, 3, 4), y ranks (1, 2, 3, 4) -> Pearson of the ranks
    expected = np.corrcoef([1.5, 1.5, 3, 4], [1, 2, 3, 4])[0, 1]
    assert spearman([5, 5, 6, 7], [1, 2, 3, 4]) == pytest.approx(expected)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1, 2], [1, 2]) is None


def _grid(shape: tuple[int, int, int]) -> Geometry:
    return Geometry(size=(shape[2], shape[1], shape[0]), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _label_file(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / f"{name}.nii.gz"
    write_volume(array.astype(np.uint8), _grid(array.shape), path)
    return path


def test_crop_weights_are_scored_against_the_truth_inside_each_crop(tmp_path: Path) -> None:
    truth = np.zeros((8, 16, 16), np.uint8)
    truth[2:6, 2:6, 2:6] = 1
    truth[2:6, 10:14, 10:14] = 2
    pseudo = truth.copy()
    pseudo[2:6, 10:14, 10:14] = 0  # right half of the pseudo-label misses class 2
    truth_files = {"a": _label_file(tmp_path, "a", truth)}
    volumes = {"a": Volume(pseudo, _grid(pseudo.shape))}
    assert pseudo_label_dice(volumes, truth_files, [1, 2]) == {"a": pytest.approx(0.5)}
    recorder = CropWeightRecorder()
    good = CropOrigin("a", ((0, 8), (0, 8), (0, 8)))    # class 1 only, right: Dice 1
    bad = CropOrigin("a", ((0, 8), (8, 16), (8, 16)))   # class 2 missed: Dice 0
    empty = CropOrigin("a", ((0, 8), (0, 8), (8, 16)))  # no foreground in either: Dice 1 by convention
    for _ in range(3):
        recorder((good, bad), np.array([0.9, 0.1]))
    recorder((empty, bad), np.array([0.5, 0.5]))  # equal weights: no concordance information
    summary = recorder.summary(volumes, truth_files, [1, 2], (1.0, 1.0, 1.0))
    assert summary["crops"] == 8 and summary["foreground_crops"] == 7
    assert summary["concordance"] == 1.0 and summary["concordance_steps"] == 3
    # foreground crops: weights (.9 x3, .1 x3, .5) against Dice (1 x3, 0 x4): ranks (6,6,6,2,2,2,4) vs (6,6,6,2.5 x4)
    expected = np.corrcoef([6, 6, 6, 2, 2, 2, 4], [6, 6, 6, 2.5, 2.5, 2.5, 2.5])[0, 1]
    assert summary["spearman_foreground"] == pytest.approx(expected) and summary["spearman"] > 0.5
    assert summary["mean_crop_dice"] == pytest.approx(4 / 8)


def test_pseudo_label_report_pairs_a_round_with_the_pseudo_labels_it_trained_on() -> None:
    rows = [
        {"labelled": 4, "pseudo": 0, "pseudo_dice_mean": 0.7, "alnt_weight_vs_dice": {}},
        {"labelled": 8, "pseudo": 2, "pseudo_dice_mean": 0.8, "alnt_weight_vs_dice": {"spearman": 0.2, "concordance": 0.6}},
        {"labelled": 12, "pseudo": 4, "pseudo_dice_mean": None, "alnt_weight_vs_dice": {"spearman": -0.1}},
    ]
    run = {"metadata": {"label": "dsal+alnt", "seed": 0}, "rounds": rows}
    report = pseudo_label_report([run])
    assert [(e["labelled"], e["pseudo_dice"], e["spearman"], e["positive_seeds"]) for e in report] == [
        (8, 0.7, 0.2, 1), (12, 0.8, -0.1, 0)]
    without_alnt = {"metadata": {"label": "dsal", "seed": 0}, "rounds": [dict(r, alnt_weight_vs_dice={}) for r in rows]}
    assert [e["positive_seeds"] for e in pseudo_label_report([without_alnt])] == [None, None]
