"""The uncertainty-vs-error benchmark (Testing/benchmarks/bench_uncertainty_vs_error.py): per-class M-DSC, k-centre
and cosine distances on hand-built arrays, and its --quick run's records checked for sanity."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from activeseg.config import DsalConfig
from activeseg.method.dsal import CaseScore, mdsc, mdsc_per_class
from Testing.benchmarks import bench_uncertainty_vs_error as bench
from Testing.benchmarks.jsonl_results import append_record, read_records


def _row(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.uint8).reshape(1, 1, -1)


def test_mdsc_per_class_on_hand_built_heads() -> None:
    main = _row(0, 1, 1, 1, 1, 2, 2, 0)
    half = main.copy()
    quarter = _row(0, 1, 1, 0, 0, 2, 2, 2)  # class 1: 2 of main's 4 -> 4/6; class 2: 2 of 2, 3 -> 4/5
    per_class = mdsc_per_class(main, [half, quarter], 4)
    assert set(per_class) == {1, 2, 3}
    assert per_class[1] == pytest.approx((1 + 2 / 3) / 2)
    assert per_class[2] == pytest.approx((1 + 4 / 5) / 2)
    assert per_class[3] is None  # absent from every map: not counted
    # Every class counted in every head: the classes' mean is M-DSC.
    assert np.mean([per_class[1], per_class[2]]) == pytest.approx(mdsc(main, [half, quarter], 4))
    assert bench.worst_of(per_class.values()) == pytest.approx(5 / 6)


def test_mdsc_per_class_counts_agreement_on_absence_per_head() -> None:
    main = _row(0, 0, 1, 1)
    half = _row(0, 0, 1, 1)
    quarter = _row(2, 0, 1, 0)  # class 2 only in the quarter head: half agrees (1), quarter 0 -> 0.5
    per_class = mdsc_per_class(main, [half, quarter], 3)
    assert per_class == {1: pytest.approx((1 + 2 / 3) / 2), 2: pytest.approx(0.5)}
    # One foreground class: the class's value is M-DSC.
    single_main, single_aux = _row(0, 1, 1, 0), [_row(0, 0, 0, 0), _row(0, 1, 0, 0)]
    assert mdsc_per_class(single_main, single_aux, 2)[1] == pytest.approx(mdsc(single_main, single_aux, 2))
    assert mdsc_per_class(single_main, [_row(0, 0, 0, 0)], 2)[1] == 0.0
    assert mdsc_per_class(_row(0, 0), [_row(0, 0)], 2) == {1: None}
    with pytest.raises(ValueError):
        mdsc_per_class(main, [], 3)


def test_worst_of_ignores_uncounted_and_is_one_without_any() -> None:
    assert bench.worst_of([None, 0.3, 0.7]) == 0.3
    assert bench.worst_of([None, None]) == 1.0
    assert bench.worst_of([]) == 1.0


def _angles(*degrees: float) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_k_centre_takes_the_farthest_point_each_time() -> None:
    features = _angles(0, 10, 90, 80, 180)
    # From row 0: 180 degrees away (distance 2); then 90 degrees (min distance 1 to both) beats 80 (0.83) and 10.
    assert bench.k_centre(features, 3) == [0, 4, 2]
    assert bench.k_centre(features, 1) == [0]
    assert bench.k_centre(features, 0) == []
    assert sorted(bench.k_centre(features, 5)) == [0, 1, 2, 3, 4]
    # Scale does not matter to cosine distance.
    assert bench.k_centre(features * np.array([[1.0], [5.0], [0.1], [2.0], [3.0]]), 3) == [0, 4, 2]
    with pytest.raises(ValueError):
        bench.k_centre(features, 6)


def test_k_centre_ties_go_to_the_higher_priority_row_and_picks_stay_distinct() -> None:
    assert bench.k_centre(_angles(0, 90, 90), 2) == [0, 1]
    assert bench.k_centre(_angles(0, 0, 0, 0), 3) == [0, 1, 2]  # all at distance 0: distinct rows, in order
    # A zero vector is at distance 1 from every row: it ties with the orthogonal row 1 and loses (higher index).
    assert bench.k_centre(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), 2) == [0, 1]


def test_cosine_distances_and_their_pairwise_mean() -> None:
    features = _angles(0, 90, 180)
    distances = bench.cosine_distances(features)
    assert np.allclose(distances, [[0, 1, 2], [1, 0, 1], [2, 1, 0]])
    assert bench.mean_pairwise_cosine_distance(features) == pytest.approx(4 / 3)
    assert bench.mean_pairwise_cosine_distance(features[:1]) is None
    # Over a pool, the mean over all pairs is the exact expectation for a random K-subset.
    pool = np.random.default_rng(0).normal(size=(6, 5))
    subsets = [bench.mean_pairwise_cosine_distance(pool[list(s)]) for s in itertools.combinations(range(6), 3)]
    assert float(np.mean(subsets)) == pytest.approx(bench.mean_pairwise_cosine_distance(pool))


def test_standardise_features_centres_and_scales_each_channel() -> None:
    raw = np.array([[0.40, 1.0, 5.0], [0.41, 3.0, 5.0], [0.39, 2.0, 5.0]])
    standardised = bench.standardise_features(raw)
    assert np.allclose(standardised, [[0, -1, 0], [1, 1, 0], [-1, 0, 0]])  # sd 0.01 and 1; a constant column is 0
    assert np.array_equal(bench.standardise_features(raw[:1]), np.zeros((1, 3)))
    # Nearly parallel raw vectors (a common offset, as the network's pooled features have) are far apart once
    # standardised: columns -> (0, 1, -1) and (0, -1, 1); row 0 becomes the zero vector (distance 1 to all).
    parallel = np.array([[0.40, 0.39], [0.41, 0.38], [0.39, 0.40]])
    assert bench.cosine_distances(parallel).max() < 2e-3
    assert np.allclose(bench.cosine_distances(bench.standardise_features(parallel)), [[0, 1, 1], [1, 0, 2], [1, 2, 0]])


def test_ablation_selections_on_hand_built_scores() -> None:
    # Five cases: DSAL's order is e, d, c, b, a (M-DSC 0.1 .. 0.5); class-aware order by mdsc_worst with a tie
    # (b and c at 0.2) broken by confidence; features put d right beside e, c orthogonal to both, b opposite e.
    mdsc_values = {"a": 0.5, "b": 0.4, "c": 0.3, "d": 0.2, "e": 0.1}
    worst = {"a": 0.05, "b": 0.2, "c": 0.2, "d": 0.6, "e": 0.3}
    confidences = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.9, "e": 0.9}
    features = {"a": [0.0, -1.0], "b": [-1.0, 0.0], "c": [0.0, 1.0], "d": [1.0, 0.1], "e": [1.0, 0.0]}
    cases = [{"case": c, "mdsc_worst": worst[c], "features": features[c]} for c in "abcde"]
    scores = [CaseScore(c, mdsc_values[c], confidences[c], 10) for c in "abcde"]
    class_aware, candidates, kcentre = bench.ablation_selections(cases, scores, 2, DsalConfig())
    assert class_aware == ["a", "c"]  # 0.05, then the tie at 0.2: lower confidence first
    assert candidates == ["e", "d", "c", "b"]  # DSAL's 2K, lowest M-DSC first
    # Standardised over the five cases, b is almost opposite e (distance ~2), c at ~1.2, d next to e.
    assert kcentre == ["e", "b"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One --quick seed into a fresh results file that already holds a version-1 line of seed 0 (never resumed)."""
    if not (bench.DATA / "dataset.json").is_file():
        pytest.skip(f"{bench.DATA} not found (the hippocampus set lives in ../shared/data beside the project)")
    out = tmp_path_factory.mktemp("uve") / "quick.jsonl"
    protocol = bench.Protocol.quick()
    append_record(out, {"key": protocol.legacy_key(), "seed": 0})
    tables = bench.run_benchmark([0], protocol, out)
    return out, tables


@pytest.mark.slow
@pytest.mark.shared_data
def test_quick_run_records_class_aware_mdsc_and_diversity(quick_run: tuple[Path, str]) -> None:
    out, tables = quick_run
    protocol = bench.Protocol.quick()
    lines = read_records(out)
    assert [r["key"] for r in lines] == [protocol.legacy_key(), protocol.key()]  # the old line was not resumed from
    assert json.loads(protocol.key())["record_version"] == bench.RECORD_VERSION
    check_record(lines[1], protocol)
    for heading in ("Class-aware M-DSC", "Diversity", "DSAL + k-centre K", "class-aware K"):
        assert heading in tables


def check_record(record: dict[str, Any], protocol: bench.Protocol) -> None:
    """The new fields of a version-2 seed record are sane (ranges, distinct selections, k-centre within the 2K)."""
    cases, k, selections = record["cases"], record["k"], record["selections"]
    pool = {c["case"] for c in cases}
    by_case = {c["case"]: c for c in cases}
    assert len(pool) == len(cases) == protocol.pool_size - protocol.initial

    lengths = {len(c["features"]) for c in cases}
    assert len(lengths) == 1 and lengths.pop() > 0
    for c in cases:
        assert np.all(np.isfinite(c["features"]))
        assert set(c["mdsc_class"]) == set(record["labels"])
        counted = [m for m in c["mdsc_class"].values() if m is not None]
        assert all(0.0 <= m <= 1.0 for m in counted)
        assert c["mdsc_worst"] == (min(counted) if counted else 1.0)
        assert 0.0 <= c["dice_worst"] <= c["dice_mean"] + 1e-12 <= 1.0 + 1e-12

    for name in ("dsal", "entropy", "worst", "mdsc_worst", "dsal_kcentre"):
        assert len(selections[name]) == k and len(set(selections[name])) == k and set(selections[name]) <= pool, name
    candidates = selections["dsal_candidates"]
    assert len(candidates) == min(2 * k, len(cases)) == len(set(candidates)) and set(candidates) <= pool
    assert candidates[:k] == selections["dsal"] and record["checks"]["dsal_candidates_start_with_dsal"]
    assert set(selections["dsal_kcentre"]) <= set(candidates) and selections["dsal_kcentre"][0] == candidates[0]
    # Class-aware DSAL's K: lowest worst-class M-DSC, ties by confidence (DSAL's foreground tie-break), then id.
    assert selections["mdsc_worst"] == [c["case"] for c in sorted(
        cases, key=lambda c: (round(c["mdsc_worst"], 6), c["confidence"], c["case"]))[:k]]
    # k-centre: from the lowest M-DSC, each next pick the candidate farthest from its nearest pick (standardised).
    standardised = dict(zip(pool_order := [c["case"] for c in cases],
                            bench.standardise_features(np.array([c["features"] for c in cases]))))
    picks = selections["dsal_kcentre"]
    for n in range(1, k):
        gap = {c: min(bench.cosine_distances(np.array([standardised[c], standardised[p]]))[0, 1] for p in picks[:n])
               for c in candidates if c not in picks[:n]}
        assert gap[picks[n]] == pytest.approx(max(gap.values()), abs=1e-12), (n, pool_order)

    summary = record["summary"]
    aware, diversity = summary["class_aware"], summary["diversity"]
    for rho in ("spearman_mdsc_worst", "spearman_mdsc_worst_dice_worst", "spearman_mdsc_dice_worst"):
        assert aware[rho] is None or -1.0 <= aware[rho] <= 1.0
    assert 0 <= aware["shared_with_dsal"] <= k and 0 <= diversity["shared_with_dsal"] <= k
    for key in ("dsal", "mdsc_worst", "dsal_kcentre", "fg_random", "worst"):
        assert 0.0 <= aware["selected_mean"][key] <= 1.0 and 0.0 <= aware["selected_dice_worst"][key] <= 1.0
    assert aware["selected_mean"]["mdsc_worst"] == pytest.approx(
        np.mean([by_case[c]["dice_mean"] for c in selections["mdsc_worst"]]))
    distances = diversity["mean_distance"]
    assert all(0.0 <= d <= 2.0 for d in distances.values())
    raw = np.array([c["features"] for c in cases])
    features = (raw - raw.mean(axis=0)) / raw.std(axis=0, ddof=1)  # columns are not constant on a real pass
    norms = np.linalg.norm(features, axis=1)
    brute = [1 - features[i] @ features[j] / (norms[i] * norms[j])
             for i, j in itertools.combinations(range(len(cases)), 2)]
    assert distances["random"] == pytest.approx(float(np.mean(brute)), abs=1e-9)
    assert 0.0 <= diversity["dsal_min"] <= distances["dsal"] + 1e-12
    assert diversity["feature_length"] == features.shape[1]


@pytest.mark.slow
@pytest.mark.shared_data
def test_summarise_shows_version_one_records_with_dashes(quick_run: tuple[Path, str]) -> None:
    out, _ = quick_run
    record: dict[str, Any] = json.loads(json.dumps(read_records(out)[1]))
    for case in record["cases"]:
        for field in ("features", "mdsc_class", "mdsc_worst", "dice_worst"):
            del case[field]
    for name in ("mdsc_worst", "dsal_kcentre", "dsal_candidates"):
        del record["selections"][name]
    del record["summary"]
    record["key"] = bench.Protocol.quick().legacy_key()
    tables = bench.summarise([record])
    assert "| 0 | - | - |" in tables  # the diversity row: no features
    assert bench.seed_summary(record)["selected_mean"]["dsal_kcentre"] is None
