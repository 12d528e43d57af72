"""Statistics of label-efficiency curves: normalised AULC and paired bootstrap confidence intervals.

The unit of evidence is one test case's Dice under one seed. Strategies that share a seed share the test split,
the validation split, the initial labelled set and the round-0 model, so a strategy and the reference (``fg-random``)
are compared **paired**: per seed and test case, ``d = Dice(strategy) - Dice(reference)``.

Confidence intervals come from a two-level (hierarchical) bootstrap: resample the seeds with replacement, then within
each drawn seed its test cases with replacement, and take the mean; the 2.5th and 97.5th percentiles of those means
are the 95 % interval. Resampling both levels carries both sources of variation a reader cares about (another seed's
split and initial set; other patients) and is what issue 11 asks for ("over seeds and test cases").

AULC (area under the learning curve) is normalised by the budget range, so it reads as the mean Dice over the budgets:
``AULC = trapz(dice, budgets) / (budgets[-1] - budgets[0])``, in [0, 1]. It is computed per seed and test case (each
case's own curve), which makes the paired AULC difference a per-case quantity that the same bootstrap resamples.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "normalised_aulc", "hierarchical_bootstrap", "Interval", "CurveData", "collect_curves", "compare_to_reference",
    "pseudo_label_report",
]

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap confidence interval (same unit as the data: Dice)."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def normalised_aulc(budgets: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Area under the curve(s) over ``budgets`` divided by the budget range (trapezoid rule).

    Args:
        budgets: increasing x values (labelled volumes), at least two.
        values: (..., len(budgets)) Dice along the last axis.

    Returns:
        (...) normalised areas (mean Dice over the budget range).
    """
    x = np.asarray(budgets, dtype=np.float64)
    if len(x) < 2 or np.any(np.diff(x) <= 0):
        raise ValueError(f"AULC needs at least two increasing budgets, got {list(x)}")
    y = np.asarray(values, dtype=np.float64)
    area = ((y[..., 1:] + y[..., :-1]) * np.diff(x) / 2.0).sum(axis=-1)
    return area / (x[-1] - x[0])


def hierarchical_bootstrap(per_seed: Sequence[np.ndarray], samples: int = BOOTSTRAP_SAMPLES, level: float = 0.95,
                           seed: int = 0) -> Interval:
    """Mean of per-case values and its two-level bootstrap interval (seeds, then cases within each seed).

    Args:
        per_seed: one 1-D array per seed of per-case values (for example paired Dice differences).
        samples: bootstrap replicates.
        level: confidence level.
        seed: the bootstrap's own generator seed (results are repeatable).

    Returns:
        The mean over all cases of all seeds (each seed weighted by its case count) and the percentile interval.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in per_seed if len(g)]
    if not groups:
        raise ValueError("bootstrap of no values")
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for index in range(samples):
        drawn = rng.integers(0, len(groups), len(groups))
        totals = counts = 0.0
        for g in drawn:
            values = groups[g]
            totals += values[rng.integers(0, len(values), len(values))].sum()
            counts += len(values)
        means[index] = totals / counts
    tail = (1.0 - level) / 2.0
    overall = float(np.concatenate(groups).mean())
    return Interval(overall, float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail)))


@dataclass
class CurveData:
    """One curve label's per-case test Dice: seed -> (budgets, cases, array (n budgets, n cases))."""

    label: str
    per_seed: dict[int, tuple[list[int], list[str], np.ndarray]] = field(default_factory=dict)

    def seeds(self) -> list[int]:
        return sorted(self.per_seed)

    def budgets(self) -> list[int]:
        """Budgets present in every seed (sorted)."""
        common: set[int] | None = None
        for budgets, _, _ in self.per_seed.values():
            common = set(budgets) if common is None else common & set(budgets)
        return sorted(common or ())

    def values(self, seed: int, budgets: Sequence[int], cases: Sequence[str]) -> np.ndarray:
        """(len(budgets), len(cases)) Dice of ``seed`` at ``budgets`` on ``cases``."""
        own_budgets, own_cases, array = self.per_seed[seed]
        rows = [own_budgets.index(b) for b in budgets]
        columns = [own_cases.index(c) for c in cases]
        return array[np.ix_(rows, columns)]


def collect_curves(runs: Sequence[dict[str, Any]]) -> dict[str, CurveData]:
    """Per-case test Dice of simulation results, grouped by curve label and seed.

    ``full`` runs keep only their last round (the ceiling); a later run of the same label and seed replaces an
    earlier one.

    Raises:
        ValueError: a results file without per-case test Dice (written before ``test_per_case`` existed).
    """
    curves: dict[str, CurveData] = defaultdict(lambda: CurveData(""))
    for run in runs:
        meta = run["metadata"]
        rows = run["rounds"][-1:] if meta["strategy"] == "full" else run["rounds"]
        if any("test_per_case" not in row for row in rows):
            raise ValueError(f"{meta['label']} seed {meta['seed']}: results have no per-case test Dice; re-run them")
        cases = sorted(rows[0]["test_per_case"])
        budgets = [int(row["labelled"]) for row in rows]
        array = np.array([[row["test_per_case"][c] for c in cases] for row in rows], dtype=np.float64)
        curve = curves[meta["label"]]
        curve.label = meta["label"]
        curve.per_seed[int(meta["seed"])] = (budgets, cases, array)
    return dict(curves)


def _summary_of(curve: CurveData, budgets: list[int]) -> dict[str, Any]:
    per_budget = []
    for index, budget in enumerate(budgets):
        groups = [curve.values(s, budgets, curve.per_seed[s][1])[index] for s in curve.seeds()]
        per_budget.append({"labelled": budget, **hierarchical_bootstrap(groups).to_dict(),
                           "seed_means": [float(g.mean()) for g in groups]})
    result: dict[str, Any] = {"label": curve.label, "seeds": curve.seeds(), "per_budget": per_budget}
    if len(budgets) >= 2:
        aulc = [normalised_aulc(budgets, curve.values(s, budgets, curve.per_seed[s][1]).T) for s in curve.seeds()]
        result["aulc"] = hierarchical_bootstrap(aulc).to_dict()
    return result


def _paired(curve: CurveData, reference: CurveData, budgets: list[int]) -> dict[str, Any] | None:
    seeds = sorted(set(curve.seeds()) & set(reference.seeds()))
    if not seeds:
        return None
    differences = {}
    for s in seeds:
        cases = sorted(set(curve.per_seed[s][1]) & set(reference.per_seed[s][1]))
        differences[s] = curve.values(s, budgets, cases) - reference.values(s, budgets, cases)
    per_budget = []
    for index, budget in enumerate(budgets):
        interval = hierarchical_bootstrap([differences[s][index] for s in seeds])
        per_budget.append({"labelled": budget, **interval.to_dict(), "significantly_below": interval.high < 0,
                           "significantly_above": interval.low > 0})
    result: dict[str, Any] = {"seeds": seeds, "per_budget": per_budget}
    if len(budgets) >= 2:
        result["aulc"] = hierarchical_bootstrap([normalised_aulc(budgets, differences[s].T) for s in seeds]).to_dict()
    return result


def compare_to_reference(curves: dict[str, CurveData], reference: str = "fg-random") -> dict[str, Any]:
    """Mean curves with 95 % intervals, AULC, and paired differences to ``reference`` (per budget and in AULC).

    Budgets compared are those every seed of both curves has. ``full`` (one budget) gets its mean only.

    Returns:
        ``{"reference": name, "curves": {label: {"seeds", "per_budget": [{labelled, mean, low, high, seed_means}],
        "aulc"?: {mean, low, high}, "versus_reference"?: {"seeds", "per_budget": [{labelled, mean, low, high,
        significantly_below, significantly_above}], "aulc": {...}}}}}``.
    """
    result: dict[str, Any] = {"reference": reference, "curves": {}}
    base = curves.get(reference)
    for label, curve in curves.items():
        budgets = curve.budgets()
        summary = _summary_of(curve, budgets)
        if base is not None and label != reference and len(budgets) >= 2:
            shared = [b for b in budgets if b in base.budgets()]
            if len(shared) >= 2:
                summary["versus_reference"] = _paired(curve, base, shared)
        result["curves"][label] = summary
    return result


def pseudo_label_report(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pseudo-label quality per curve and round, over seeds (runs that trained on pseudo-labels only).

    Per (label, round): ``pseudo_dice`` (mean true Dice of the pseudo-labels that round trained on; they were
    written by the previous round's ranking), ``spearman`` / ``spearman_foreground`` / ``concordance`` (ALNT weight
    of a pseudo crop against its true Dice; means over the seeds where defined), ``positive_seeds`` (seeds with a
    positive all-crop Spearman; ``None`` for runs without ALNT weights), ``seeds``.
    """
    grouped: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        label = run["metadata"]["label"]
        rows = run["rounds"]
        for previous, row in zip(rows, rows[1:]):
            if not row.get("pseudo"):
                continue
            bucket = grouped[(label, int(row["labelled"]))]
            if previous.get("pseudo_dice_mean") is not None:
                bucket["pseudo_dice"].append(float(previous["pseudo_dice_mean"]))
            agreement = row.get("alnt_weight_vs_dice") or {}
            for key in ("spearman", "spearman_foreground", "concordance"):
                if agreement.get(key) is not None:
                    bucket[key].append(float(agreement[key]))
            bucket["seeds"].append(float(run["metadata"]["seed"]))
    report = []
    for (label, labelled), bucket in sorted(grouped.items()):
        entry: dict[str, Any] = {"label": label, "labelled": labelled, "seeds": len(bucket["seeds"])}
        for key in ("pseudo_dice", "spearman", "spearman_foreground", "concordance"):
            entry[key] = float(np.mean(bucket[key])) if bucket[key] else None
        entry["positive_seeds"] = sum(1 for value in bucket["spearman"] if value > 0) if bucket["spearman"] else None
        report.append(entry)
    return report
