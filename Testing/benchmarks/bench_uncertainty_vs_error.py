"""Do DSAL's M-DSC and predictive entropy find the pool cases the model gets wrong? (issue 11, "find out why")

The hippocampus campaign (RESULTS.md, "Issue 11") found DSAL+ALNT, entropy and fg-random level. This benchmark
asks why, on the campaign's own round-0 state: does an uncertainty score rank the unlabelled pool by the model's
true error, and is there much error to find at all?

Per seed it rebuilds exactly the campaign's round 0 with the simulation's own machinery
(:mod:`activeseg.experiments.simulation`: ``plan_splits``, ``SimulationSettings``, ``_start``, ``_train``; the
campaign protocol :data:`CAMPAIGN_OVERRIDES` with pool 40, 4 initial labels, K = 4, test 0.1875, validation 0.0375):
the same test/validation split, initial labelled set and datastore, and the same round-0 model. The model comes from
``--round0-cache DIR`` when an entry for this seed is there (used read-only: nothing is ever written to or deleted
from DIR); the entry is looked up under the simulation's current key and, failing that, under the key of the
campaign's code (commit ce595fc, before the training fields :data:`FIELDS_AFTER_CAMPAIGN` existed; only when those
fields are at their defaults). Without an entry round 0 is trained with the current code (about 3 minutes on one
thread) and kept nowhere but in the result's ``round0`` record.

Then, with that model, one deterministic pass per unlabelled pool case (36 per seed;
:meth:`~activeseg.model.predictor.Predictor.prepare` + ``predict_prepared``, no TTA, as the entropy strategy runs it)
gives, from the same probabilities:

* true Dice of the main head's argmax against the ground truth on the case's own grid (probabilities resampled
  back as :meth:`~activeseg.model.predictor.Predictor.predict` does), per foreground class and their mean, with the
  conventions of :mod:`activeseg.method.metrics` (exactly what the campaign's test evaluation computes);
* DSAL's M-DSC and confidence (:func:`activeseg.pipeline.ranking_round.score_case`, planned grid);
* predictive entropy (:func:`activeseg.experiments.strategies.predictive_entropy` of the main head, planned grid);
* predicted foreground voxels (planned grid, as fg-random counts them).

The selections are the strategies' own: ``DsalStrategy(write_pseudo=False).select`` (the engine's ``rank_round``:
lowest M-DSC, ties by confidence) and ``EntropyStrategy().select`` on the same datastore, a second and third pass per
case; the record says whether they agree with the selections recomputed from the measurement pass
(``route_cases``; highest entropy) and the largest score difference. With ``--campaign-runs DIR`` (the campaign's
results files ``dsal+alnt-seed<N>.json`` / ``entropy-seed<N>.json``, read-only) it also records whether the
campaign's round-0 selections were the same cases, the check that the state is the campaign's.

Reported per seed and pooled: spread of true Dice over the pool (min, quartiles, max, sd); Spearman(M-DSC, Dice),
Spearman(-entropy, Dice) and Spearman(confidence, Dice) (:func:`activeseg.experiments.pseudo_quality.spearman`;
positive = the score ranks cases by their true Dice, so the lowest-M-DSC / highest-entropy cases are the worst);
the mean true Dice of the K cases DSAL queries, of entropy's K, the expectation under fg-random (mean over the cases
with predicted foreground) and under random (pool mean), and of the K truly worst cases (what a perfect ranking
would query); the share of pool cases with some class below Dice 0.5 (where a label could fix something). Pooled:
spread and shares over all cases of all seeds, correlations and selection means averaged over seeds.

Two method changes of issue 11, ablated at the ranking level on the same pass (record version 2,
:data:`RECORD_VERSION`):

* class-aware M-DSC: per case the M-DSC of each foreground class (:func:`activeseg.method.dsal.mdsc_per_class` of
  the heads' label maps) and ``mdsc_worst``, its lowest class; "class-aware DSAL" queries the K lowest
  ``mdsc_worst`` (``route_cases`` on it, so ties go by confidence as in DSAL). Reported: Spearman(mdsc_worst, mean
  Dice), Spearman(mdsc_worst, worst-class Dice) and Spearman(M-DSC, worst-class Dice) beside Spearman(M-DSC, mean
  Dice); mean and worst-class true Dice of its K; how many of its K are DSAL's.
* diversity: per case the global average pool of the network's bottleneck (deepest encoder block) from the same
  sliding-window pass (a forward hook; :func:`_predict_with_features`). Reported: mean pairwise cosine distance
  within DSAL's K (and entropy's, class-aware DSAL's) against a random K (exactly the mean over all pool pairs),
  DSAL's closest pair against the pool's median nearest-neighbour distance (are the queries near-duplicates?); and
  "DSAL + k-centre": greedy farthest-first (:func:`k_centre`) among DSAL's 2K lowest-M-DSC cases starting from the
  lowest, its mean true Dice and pairwise distance. Distances are between features standardised per channel over
  the seed's pool (:func:`standardise_features`; raw pooled vectors of this instance-normalised network are nearly
  parallel). Centred vectors sum to zero, so a random K's expected distance is a little above 1 (about
  1 + 1/(N - 1) for N cases of equal norm); a selection is near-duplicates when its distance is well below that.

Version-1 lines (before these) are never resumed from; ``--summarise`` shows them with ``-`` in the new columns.

Results are appended to ``--out`` (JSON lines), one line per seed as it finishes; a re-run skips seeds already there
with the same protocol (resumable). One torch thread::

    OMP_NUM_THREADS=1 python -m Testing.benchmarks.bench_uncertainty_vs_error --round0-cache /tmp/camp/runs/round0 \\
        --campaign-runs /tmp/camp/runs --out bench_output/uncertainty_vs_error.jsonl
    OMP_NUM_THREADS=1 python -m Testing.benchmarks.bench_uncertainty_vs_error --summarise --out bench_output/uncertainty_vs_error.jsonl
    OMP_NUM_THREADS=1 python -m Testing.benchmarks.bench_uncertainty_vs_error --quick --out /tmp/uve_quick.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from activeseg.config import Config, DsalConfig, TrainingConfig
from activeseg.experiments import simulation as sim
from activeseg.experiments.pseudo_quality import spearman
from activeseg.experiments.strategies import DsalStrategy, EntropyStrategy, predictive_entropy, unlabelled_pool
from activeseg.io.volumes import Volume, read_volume
from activeseg.method.dsal import CaseScore, mdsc_per_class, route_cases
from activeseg.method.metrics import dice_per_class, mean_of_counted
from activeseg.model.predictor import HeadProbabilities, Predictor
from activeseg.model.preprocessing import resample_to_grid
from activeseg.pipeline.ranking_round import score_case
from Testing.benchmarks.jsonl_results import format_number, mean_present, read_records, run_missing_seeds

__all__ = ["Protocol", "measure_case", "worst_of", "standardise_features", "cosine_distances", "k_centre",
           "mean_pairwise_cosine_distance", "ablation_selections", "run_seed",
           "seed_summary", "summarise", "run_benchmark", "run", "main"]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hippocampus_mri"
# The campaign's --set options (RESULTS.md, "Issue 11"); training.seed=<seed> is added by SimulationSettings.
CAMPAIGN_OVERRIDES = (
    "network.base_channels=8", "training.patch_size=32,48,32", "training.num_threads=1", "training.steps_base=200",
    "training.steps_per_label=10", "training.max_steps=800", "training.warm_start=true", "training.epochs_first=8",
    "training.epochs_per_round=5",
)
# Training settings added after the campaign's commit ce595fc: its round-0 cache keys were hashed without them.
FIELDS_AFTER_CAMPAIGN = ("validate_from", "unlearned_class_dice", "unlearned_retries", "processes", "launcher",
                         "distributed_timeout_s")
DICE_BELOW = 0.5
# Version of a seed's record, part of its key: 2 added class-aware M-DSC, pooled encoder features and the
# selections built on them, so a resumed run never mixes version-1 lines (which lack them) with new ones.
RECORD_VERSION = 2

logger = logging.getLogger("activeseg.bench.uncertainty_vs_error")


@dataclasses.dataclass(frozen=True)
class Protocol:
    """The simulation protocol a seed's round 0 is rebuilt with (the campaign's by default).

    Attributes:
        pool_size: training pool (validation excluded), volumes.
        initial: expert-labelled volumes before round 0.
        per_round: K, the cases a strategy queries per round.
        rounds: R (enters nothing here but the settings; kept so the settings are the campaign's).
        test_fraction, val_fraction: shares of the dataset in the test and validation splits.
        overrides: ``section.name=value`` settings.
    """

    pool_size: int = 40
    initial: int = 4
    per_round: int = 4
    rounds: int = 3
    test_fraction: float = 0.1875
    val_fraction: float = 0.0375
    overrides: tuple[str, ...] = CAMPAIGN_OVERRIDES

    @classmethod
    def quick(cls) -> Protocol:
        """Tiny: a pool of 12 (8 unlabelled) and a 6-step round 0; checks that it runs, numbers mean nothing."""
        return cls(pool_size=12, overrides=(*CAMPAIGN_OVERRIDES, "training.steps_base=6", "training.steps_per_label=0",
                                            "training.max_steps=6", "training.epochs_first=2",
                                            "training.unlearned_retries=0"))

    def key(self) -> str:
        """What a seed's result depends on besides the seed and the data (JSON, with :data:`RECORD_VERSION`);
        results are resumed per key."""
        return json.dumps({**dataclasses.asdict(self), "record_version": RECORD_VERSION}, sort_keys=True)

    def legacy_key(self) -> str:
        """The key of version-1 records (before :data:`RECORD_VERSION`): ``--summarise`` still shows them, with
        ``-`` in the columns they lack; runs never resume from them."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def settings(self, seed: int, work_dir: Path, round0_cache: Path | None) -> sim.SimulationSettings:
        """The simulation settings of ``seed`` (strategy ``dsal`` with ALNT: the campaign's default curve)."""
        return sim.SimulationSettings(
            strategy="dsal", seed=seed, rounds=self.rounds, per_round=self.per_round, initial=self.initial,
            test_fraction=self.test_fraction, val_fraction=self.val_fraction, overrides=self.overrides,
            pool_size=self.pool_size, work_dir=work_dir, round0_cache=round0_cache,
        )


class _PrunedConfig:
    """Stands in for a :class:`Config` in ``_round0_key``: its ``to_dict()`` without the fields the campaign lacked."""

    def __init__(self, config: Config) -> None:
        self._settings = config.to_dict()
        self._settings["training"] = {k: v for k, v in self._settings["training"].items()
                                      if k not in FIELDS_AFTER_CAMPAIGN}

    def to_dict(self) -> dict[str, Any]:
        return self._settings


def _round0_entry(experiment: Any, cache_dir: Path | None) -> tuple[Path | None, str]:
    """The cache entry (weights file) of the experiment's round 0 in ``cache_dir`` and how it was found, or
    (None, "trained")."""
    if cache_dir is None:
        return None, "trained"
    config, seed = experiment.store.config, experiment.settings.seed
    current = cache_dir / f"round0-{sim._round0_key(config, seed, experiment.val_ids, experiment.first)}.pt"
    if current.is_file():
        return current, "cache (current key)"
    defaults = TrainingConfig()
    if all(getattr(config.training, name) == getattr(defaults, name) for name in FIELDS_AFTER_CAMPAIGN):
        legacy_key = sim._round0_key(cast(Config, _PrunedConfig(config)), seed, experiment.val_ids, experiment.first)
        legacy = cache_dir / f"round0-{legacy_key}.pt"
        if legacy.is_file():
            return legacy, "cache (campaign key, commit ce595fc)"
    return None, "trained"


def _source_grid_probabilities(probabilities: np.ndarray, planned: Any, volume: Volume) -> np.ndarray:
    """(C, k, j, i) probabilities on the planned grid resampled onto ``volume``'s grid, as ``Predictor.predict`` does."""
    if planned == volume.geometry:
        return probabilities
    return np.stack([resample_to_grid(channel, planned, volume.geometry, is_label=False) for channel in probabilities])


def measure_case(predictor: Predictor, case_id: str, volume: Volume, truth: np.ndarray, config: Config,
                 ) -> tuple[dict[str, Any], CaseScore]:
    """One deterministic pass over a pool case: true Dice, M-DSC, confidence, entropy, predicted foreground.

    Args:
        volume: the case's raw image (k, j, i) with its geometry.
        truth: ground-truth label map (k, j, i) uint8 on the same grid.
        config: the datastore's config (labels, classes).

    Returns:
        (the case's record, its DSAL :class:`CaseScore` on the planned grid for ``route_cases``). The record:
        ``case``, ``dice`` (class name -> Dice, ``None`` where the class is absent from truth and prediction),
        ``dice_mean`` (mean over counted classes, 1.0 when none is), ``dice_worst`` (:func:`worst_of` the classes),
        ``mdsc``, ``mdsc_class`` (class name -> :func:`activeseg.method.dsal.mdsc_per_class`, planned grid),
        ``mdsc_worst`` (:func:`worst_of` them), ``confidence``, ``entropy`` (nats), ``foreground_planned``
        (voxels the main head labels foreground, planned grid), ``truth_voxels`` and ``predicted_voxels`` (class
        name -> voxels on the case's grid), ``features`` (:func:`_predict_with_features`: the network's bottleneck
        channels, global average pool, same pass).
    """
    image, planned, pad = predictor.prepare(volume)
    heads, features = _predict_with_features(predictor, image, pad)
    score, main_planned = score_case(case_id, heads, config.num_classes)
    main, half, quarter = heads.label_maps()
    mdsc_class = mdsc_per_class(main, [half, quarter], config.num_classes)
    prediction = _source_grid_probabilities(heads.main, planned, volume).argmax(axis=0).astype(np.uint8)
    per_class = dice_per_class(prediction, truth, config.labels)
    record = {
        "case": case_id,
        "dice": {config.labels[value]: d for value, d in per_class.items()},
        "dice_mean": mean_of_counted(per_class),
        "dice_worst": worst_of(per_class.values()),
        "mdsc": score.mdsc,
        "mdsc_class": {config.labels[value]: m for value, m in mdsc_class.items()},
        "mdsc_worst": worst_of(mdsc_class.values()),
        "confidence": score.confidence,
        "entropy": predictive_entropy(heads.main),
        "foreground_planned": int((main_planned > 0).sum()),
        "truth_voxels": {name: int((truth == value).sum()) for value, name in config.labels.items()},
        "predicted_voxels": {name: int((prediction == value).sum()) for value, name in config.labels.items()},
        "features": [float(v) for v in features],
    }
    return record, score


def _predict_with_features(predictor: Predictor, image: np.ndarray, pad: float) -> tuple[HeadProbabilities, np.ndarray]:
    """``predictor.predict_prepared(image, pad)`` and, from the same pass, the case's pooled encoder features.

    A forward hook on the network's deepest encoder block (``model.encoders[-1]``, the bottleneck of
    :class:`activeseg.model.network.DeepSupervisedUNet3D`) takes each sliding window's global average pool of its
    output (B, C, d, h, w) -> (B, C); the case's vector is the mean over all windows (each window weighted equally;
    windows reaching past a small volume include the padding the network saw).

    Returns:
        (the heads' probabilities on the planned grid, float64 (C,) features, C = the plan's deepest channels).
    """
    pooled: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        pooled.append(output.detach().float().mean(dim=(2, 3, 4)).cpu())

    handle = predictor.model.encoders[-1].register_forward_hook(hook)
    try:
        heads = predictor.predict_prepared(image, pad)
    finally:
        handle.remove()
    return heads, torch.cat(pooled).mean(dim=0).double().numpy()


def worst_of(values: Iterable[float | None]) -> float:
    """The lowest of the counted values (``None`` = class not counted); 1.0 when none is counted, as
    :func:`activeseg.method.metrics.mean_of_counted` scores a pair with nothing in it."""
    counted = [v for v in values if v is not None]
    return float(min(counted)) if counted else 1.0


def standardise_features(features: np.ndarray) -> np.ndarray:
    """(N, D) ``features`` with each column centred and scaled to unit sample sd over the N rows (a constant
    column becomes 0).

    Why: the bottleneck block ends in instance norm + LeakyReLU, so each window's channel is standardised before
    the activation and its global average is nearly the same for every case (about 0.38-0.40 in every channel on
    the --quick model): raw pooled vectors all point the same way (cosine distances ~1e-4). Centring over the pool
    removes that common part; distances then measure how cases differ from one another.
    """
    x = np.asarray(features, dtype=np.float64)
    if len(x) < 2:
        return np.zeros_like(x)
    sd = x.std(axis=0, ddof=1)
    return np.divide(x - x.mean(axis=0), sd, out=np.zeros_like(x), where=sd > 0)


def cosine_distances(features: np.ndarray) -> np.ndarray:
    """(N, N) cosine distances ``1 - cos`` between the rows of (N, D) ``features``, in [0, 2], diagonal 0; a zero
    row (norm below 1e-9 of the largest, e.g. a case at the pool's mean after :func:`standardise_features`, whose
    direction is rounding noise) is at distance 1 from every other row."""
    x = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-9 * float(norms.max(initial=0.0)))
    distances = 1.0 - np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(distances, 0.0)
    return distances


def mean_pairwise_cosine_distance(features: np.ndarray) -> float | None:
    """Mean :func:`cosine_distances` over the unordered pairs of rows; ``None`` with fewer than 2 rows. Over a
    whole pool it is the exact expectation for a uniformly random K-subset (every pair is equally likely in one)."""
    n = len(features)
    if n < 2:
        return None
    return float(cosine_distances(features)[np.triu_indices(n, 1)].mean())


def k_centre(features: np.ndarray, k: int) -> list[int]:
    """Greedy k-centre (farthest-first traversal) in cosine distance over the rows of (N, D) ``features``.

    Starts from row 0 (the caller orders rows by priority: DSAL's candidates lowest M-DSC first), then adds the row
    farthest from its nearest chosen row; ties go to the lower row index (higher priority).

    Returns:
        the chosen row indices in the order chosen (``k`` distinct rows).

    Raises:
        ValueError: ``k`` is not in 0 .. N.
    """
    n = len(features)
    if not 0 <= k <= n:
        raise ValueError(f"k-centre of {k} among {n} rows")
    if k == 0:
        return []
    distances = cosine_distances(features)
    chosen = [0]
    nearest = distances[0].copy()
    while len(chosen) < k:
        gap = nearest.copy()
        gap[chosen] = -np.inf
        pick = int(np.argmax(gap))
        chosen.append(pick)
        nearest = np.minimum(nearest, distances[pick])
    return chosen


def ablation_selections(cases: Sequence[dict[str, Any]], scores: Sequence[CaseScore], k: int, settings: DsalConfig,
                        ) -> tuple[list[str], list[str], list[str]]:
    """The selections of the two method changes, from the measurement pass.

    Args:
        cases: :func:`measure_case` records of the pool (``mdsc_worst``, ``features``).
        scores: their DSAL :class:`CaseScore` s.
        k: K.
        settings: the datastore's DSAL settings (tie-break).

    Returns:
        (class-aware DSAL's K: ``route_cases`` on the worst class's M-DSC, so lowest first with DSAL's ties by
        confidence; DSAL's 2K lowest-M-DSC candidates, in DSAL's order; DSAL + k-centre's K: :func:`k_centre` among
        those candidates in the pool-standardised features, from the lowest M-DSC).
    """
    by_case = {c["case"]: c for c in cases}
    worst = route_cases([dataclasses.replace(s, mdsc=by_case[s.case_id]["mdsc_worst"]) for s in scores], k, 0,
                        settings)[0]
    candidates = route_cases(list(scores), 2 * k, 0, settings)[0]
    standardised = dict(zip(by_case, standardise_features(np.array([c["features"] for c in cases]))))
    chosen = k_centre(np.array([standardised[c] for c in candidates]), min(k, len(candidates)))
    return worst, candidates, [candidates[i] for i in chosen]


def _top_entropy(cases: Sequence[dict[str, Any]], k: int) -> list[str]:
    """The entropy strategy's order (highest first, ties to 1e-9 by case id), recomputed from the measurement pass."""
    return [c["case"] for c in sorted(cases, key=lambda c: (-round(c["entropy"], 9), c["case"]))[:k]]


def _campaign_selected(runs: Path | None, seed: int) -> dict[str, list[str] | None]:
    """Round-0 selections of the campaign's ``dsal+alnt`` and ``entropy`` runs of ``seed`` (None where absent)."""
    found: dict[str, list[str] | None] = {}
    for label in ("dsal+alnt", "entropy"):
        path = None if runs is None else runs / f"{label}-seed{seed}.json"
        found[label] = None
        if path is not None and path.is_file():
            found[label] = list(sim.load_results(path)["rounds"][0]["selected"])
    return found


def run_seed(seed: int, protocol: Protocol, dataset_dir: Path, cache_dir: Path | None, campaign_runs: Path | None,
             work: Path) -> dict[str, Any]:
    """Rebuild the seed's round 0 in ``work`` (emptied), measure every unlabelled pool case; the seed's record."""
    started = time.perf_counter()
    dataset = sim._read_dataset(dataset_dir)
    ids = sorted(cid for cid in dataset.images if cid in dataset.labels)
    plan = sim.plan_splits(ids, seed, protocol.test_fraction, protocol.val_fraction, protocol.pool_size)
    settings = protocol.settings(seed, work, None)
    work_dir, _ = sim._fresh_work_dir(settings)
    experiment = sim._start(dataset, plan, work_dir, settings)
    entry, source = _round0_entry(experiment, cache_dir)
    experiment.cache_file = entry  # _train reads an existing entry and never writes one when this is None
    setup_s = time.perf_counter() - started
    record0, train_s, cached = sim._train(experiment, 0)
    assert cached == (entry is not None)
    store, config, k = experiment.store, experiment.store.config, protocol.per_round
    logger.info("seed %d: round 0 %s (%.0f s), validation Dice %.3f", seed, source, train_s,
                record0.metrics["val_dice"]["mean"])

    measured_at = time.perf_counter()
    predictor = Predictor.from_checkpoint(record0.weights_path, experiment.device, config.training.amp)
    pool = unlabelled_pool(store)
    cases: list[dict[str, Any]] = []
    scores: list[CaseScore] = []
    for case_id in pool:
        truth = read_volume(experiment.oracle.labels[case_id], dtype=np.uint8).array
        case, score = measure_case(predictor, case_id, store.load_image(case_id), truth, config)
        cases.append(case)
        scores.append(score)
    measure_s = time.perf_counter() - measured_at

    rng = random.Random(seed * 7919 + 1)  # unused by these two (deterministic), the simulation's strategy rng
    dsal = DsalStrategy(write_pseudo=False).select(store, k, rng)
    entropy = EntropyStrategy().select(store, k, rng)
    by_case = {c["case"]: c for c in cases}
    own_dsal = route_cases(scores, k, 0, config.dsal)[0]
    own_entropy = _top_entropy(cases, k)
    mdsc_worst, candidates, kcentre = ablation_selections(cases, scores, k, config.dsal)
    # The campaign's selections are comparable only under the campaign's protocol (not --quick's).
    campaign = _campaign_selected(campaign_runs if protocol == Protocol() else None, seed)
    selections = {
        "dsal": list(dsal.strong), "entropy": list(entropy.strong),
        "worst": [c["case"] for c in sorted(cases, key=lambda c: (c["dice_mean"], c["case"]))[:k]],
        "mdsc_worst": mdsc_worst, "dsal_kcentre": kcentre, "dsal_candidates": candidates,
    }
    checks = {
        "dsal_same_as_measurement_pass": own_dsal == selections["dsal"],
        "entropy_same_as_measurement_pass": own_entropy == selections["entropy"],
        "dsal_candidates_start_with_dsal": candidates[:k] == selections["dsal"],
        "mdsc_max_abs_diff": max(abs(dsal.scores[c] - by_case[c]["mdsc"]) for c in pool),
        "entropy_max_abs_diff": max(abs(entropy.scores[c] - by_case[c]["entropy"]) for c in pool),
        "campaign_dsal_selected": campaign["dsal+alnt"],
        "campaign_entropy_selected": campaign["entropy"],
        "dsal_same_as_campaign": None if campaign["dsal+alnt"] is None else campaign["dsal+alnt"] == selections["dsal"],
        "entropy_same_as_campaign": None if campaign["entropy"] is None else campaign["entropy"] == selections["entropy"],
    }
    if not (checks["dsal_same_as_measurement_pass"] and checks["entropy_same_as_measurement_pass"]):
        logger.warning("seed %d: a strategy's selection differs from the measurement pass's: %s", seed, checks)
    seconds = {"setup": setup_s, "round0_train": 0.0 if cached else train_s, "measure": measure_s,
               "dsal_select": dsal.seconds, "entropy_select": entropy.seconds,
               "total": time.perf_counter() - started}
    record = {
        "key": protocol.key(), "seed": seed, "labels": list(config.labels.values()), "k": k,
        "round0": {"source": source, "entry": None if entry is None else str(entry),
                   "val_dice": record0.metrics["val_dice"], "initial_cases": sorted(experiment.first),
                   "train_s": train_s},
        "cases": cases, "selections": selections, "checks": checks, "seconds": seconds,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s)",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    record["summary"] = seed_summary(record)
    return record


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    """min, quartiles, max, mean and sample sd (None for sd with fewer than 2 values) of ``values``."""
    if not values:
        return {name: None for name in ("min", "q1", "median", "q3", "max", "mean", "sd")}
    q = np.percentile(np.asarray(values, dtype=np.float64), [0, 25, 50, 75, 100])
    return {"min": float(q[0]), "q1": float(q[1]), "median": float(q[2]), "q3": float(q[3]), "max": float(q[4]),
            "mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def _mean_of(cases: dict[str, dict[str, Any]], ids: Sequence[str] | None, value: Any) -> float | None:
    """Mean of ``value(case)`` over the cases ``ids`` where it is not None; None for ``ids`` None (a selection an
    older record lacks) or no value."""
    present = [v for v in (value(cases[c]) for c in ids or ()) if v is not None]
    return float(np.mean(present)) if present else None


def _fg_random_expected(cases: Sequence[dict[str, Any]], k: int, value: Any) -> float | None:
    """Expected mean of ``value`` over fg-random's K: uniform among cases with predicted foreground, the rest (when
    fewer than K have any) uniform among the others."""
    def mean(group: Sequence[dict[str, Any]]) -> float | None:
        present = [v for v in (value(c) for c in group) if v is not None]
        return float(np.mean(present)) if present else None
    with_fg = [c for c in cases if c["foreground_planned"] > 0]
    rest = [c for c in cases if c["foreground_planned"] == 0]
    if len(with_fg) >= k or not rest:
        return mean(with_fg)
    parts = [(len(with_fg), mean(with_fg)), (min(k, len(cases)) - len(with_fg), mean(rest))]
    total = sum(n for n, m in parts if m is not None)
    return sum(n * m for n, m in parts if m is not None) / total if total else None


def seed_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The statistics of one seed's record (see the module docstring); per class under ``per_class``."""
    cases, k, selections = record["cases"], record["k"], record["selections"]
    by_case = {c["case"]: c for c in cases}
    dice = [c["dice_mean"] for c in cases]

    def selection_means(value: Any) -> dict[str, float | None]:
        return {
            "dsal": _mean_of(by_case, selections["dsal"], value),
            "entropy": _mean_of(by_case, selections["entropy"], value),
            "mdsc_worst": _mean_of(by_case, selections.get("mdsc_worst"), value),
            "dsal_kcentre": _mean_of(by_case, selections.get("dsal_kcentre"), value),
            "fg_random": _fg_random_expected(cases, k, value),
            "random": _mean_of(by_case, list(by_case), value),
            "worst": _mean_of(by_case, selections["worst"], value),
        }

    per_class: dict[str, Any] = {}
    for name in record["labels"]:
        values = [c["dice"][name] for c in cases if c["dice"][name] is not None]
        per_class[name] = {
            "spread": _spread(values),
            "below": float(np.mean([v < DICE_BELOW for v in values])) if values else None,
            "selected_mean": selection_means(lambda c, name=name: c["dice"][name]),
        }
    return {
        "n": len(cases),
        "spread": _spread(dice),
        "any_class_below": float(np.mean([any(d is not None and d < DICE_BELOW for d in c["dice"].values())
                                          for c in cases])) if cases else None,
        "spearman_mdsc": spearman([c["mdsc"] for c in cases], dice),
        "spearman_neg_entropy": spearman([-c["entropy"] for c in cases], dice),
        "spearman_confidence": spearman([c["confidence"] for c in cases], dice),
        "spearman_mdsc_neg_entropy": spearman([c["mdsc"] for c in cases], [-c["entropy"] for c in cases]),
        "selected_mean": selection_means(lambda c: c["dice_mean"]),
        "per_class": per_class,
        "class_aware": _class_aware_summary(record, selection_means),
        "diversity": _diversity_summary(record),
    }


def _class_aware_summary(record: dict[str, Any], selection_means: Any) -> dict[str, Any]:
    """Class-aware M-DSC of one seed: Spearman of worst-class M-DSC and of mean M-DSC with worst-class and mean
    true Dice, mean and worst-class true Dice of each selection, and how many of the worst-class M-DSC's K are
    DSAL's. All values None for a version-1 record (no ``mdsc_worst``)."""
    cases = record["cases"]
    names = ("spearman_mdsc_worst", "spearman_mdsc_worst_dice_worst", "spearman_mdsc_dice_worst", "selected_mean",
             "selected_dice_worst", "shared_with_dsal")
    if not cases or any("mdsc_worst" not in c for c in cases):
        return {name: None for name in names}
    worst_mdsc = [c["mdsc_worst"] for c in cases]
    dice_worst = [c["dice_worst"] for c in cases]
    return {
        "spearman_mdsc_worst": spearman(worst_mdsc, [c["dice_mean"] for c in cases]),
        "spearman_mdsc_worst_dice_worst": spearman(worst_mdsc, dice_worst),
        "spearman_mdsc_dice_worst": spearman([c["mdsc"] for c in cases], dice_worst),
        "selected_mean": selection_means(lambda c: c["dice_mean"]),
        "selected_dice_worst": selection_means(lambda c: c["dice_worst"]),
        "shared_with_dsal": len(set(record["selections"]["mdsc_worst"]) & set(record["selections"]["dsal"])),
    }


def _diversity_summary(record: dict[str, Any]) -> dict[str, Any]:
    """Pooled encoder features of one seed (:func:`standardise_features` over the pool): mean pairwise cosine
    distance within each selection (``dsal``,
    ``entropy``, ``mdsc_worst``, ``dsal_kcentre``, ``dsal_candidates``: the 2K k-centre chose from) and over all
    pool pairs (``random``: the expectation for a random K); the closest pair among DSAL's K (``dsal_min``) against
    the median over pool cases of the distance to their nearest other case (``pool_nearest_median``); feature
    length; how many of the k-centre's K are DSAL's. All None for a version-1 record (no ``features``)."""
    cases, selections = record["cases"], record["selections"]
    groups = ("dsal", "entropy", "mdsc_worst", "dsal_kcentre", "dsal_candidates")
    if len(cases) < 2 or any("features" not in c for c in cases):
        return {"mean_distance": {name: None for name in (*groups, "random")}, "dsal_min": None,
                "pool_nearest_median": None, "feature_length": None, "shared_with_dsal": None}
    index = {c["case"]: i for i, c in enumerate(cases)}
    features = standardise_features(np.array([c["features"] for c in cases], dtype=np.float64))
    distances = cosine_distances(features)
    dsal = [index[c] for c in selections["dsal"]]
    off_diagonal = distances + np.diag(np.full(len(cases), np.inf))
    return {
        "mean_distance": {**{name: mean_pairwise_cosine_distance(features[[index[c] for c in selections[name]]])
                             for name in groups}, "random": mean_pairwise_cosine_distance(features)},
        "dsal_min": float(distances[np.ix_(dsal, dsal)][np.triu_indices(len(dsal), 1)].min()) if len(dsal) > 1 else None,
        "pool_nearest_median": float(np.median(off_diagonal.min(axis=1))),
        "feature_length": int(features.shape[1]),
        "shared_with_dsal": len(set(selections["dsal_kcentre"]) & set(selections["dsal"])),
    }




def summarise(records: list[dict[str, Any]]) -> str:
    """Markdown tables of the records of one protocol: per seed, and pooled over seeds. Summaries are recomputed
    from each record's cases (:func:`seed_summary`), so records of version 1 show ``-`` where they lack a field."""
    if not records:
        return "no results"
    records = [{**r, "summary": seed_summary(r)} for r in sorted(records, key=lambda r: r["seed"])]
    labels, k = records[0]["labels"], records[0]["k"]
    protocol = json.loads(records[0]["key"])
    lines = [
        f"Hippocampus MRI, round-0 model of the campaign protocol (pool {protocol['pool_size']}, "
        f"{protocol['initial']} initial labels, K = {k}); true Dice = mean over {' / '.join(labels)} of the main head's "
        f"prediction on each unlabelled pool case. rho: Spearman with true Dice (positive = the score ranks the "
        f"worst cases first). Selected: mean true Dice of the K cases each strategy queries (fg-random, random: "
        f"expected; worst: the K truly worst).",
        "",
        "| seed | round 0 | pool | Dice min / q1 / median / q3 / max | sd | some class < 0.5 | rho M-DSC | "
        "rho -entropy | rho confidence | rho M-DSC vs -entropy | DSAL K | entropy K | fg-random | random | worst K |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, source: str, n: int, spread: dict[str, Any], summaries: list[dict[str, Any]],
            below: float | None) -> str:
        s = summaries
        chosen = {key: mean_present([x["selected_mean"][key] for x in s]) for key in ("dsal", "entropy", "fg_random", "random", "worst")}
        return (f"| {name} | {source} | {n} | " + " / ".join(format_number(spread[q]) for q in ("min", "q1", "median", "q3", "max"))
                + f" | {format_number(spread['sd'])} | {format_number(below, 2)} | {format_number(mean_present([x['spearman_mdsc'] for x in s]), 2)} | "
                f"{format_number(mean_present([x['spearman_neg_entropy'] for x in s]), 2)} | {format_number(mean_present([x['spearman_confidence'] for x in s]), 2)} | "
                f"{format_number(mean_present([x['spearman_mdsc_neg_entropy'] for x in s]), 2)} | "
                + " | ".join(format_number(chosen[key]) for key in ("dsal", "entropy", "fg_random", "random", "worst")) + " |")

    for r in records:
        source = "cached" if r["round0"]["source"].startswith("cache") else "trained"
        lines.append(row(str(r["seed"]), source, r["summary"]["n"], r["summary"]["spread"], [r["summary"]],
                         r["summary"]["any_class_below"]))
    all_cases = [c for r in records for c in r["cases"]]
    if len(records) > 1:
        pooled_below = float(np.mean([any(d is not None and d < DICE_BELOW for d in c["dice"].values()) for c in all_cases]))
        lines.append(row(f"pooled ({len(records)} seeds)", "", len(all_cases), _spread([c["dice_mean"] for c in all_cases]),
                         [r["summary"] for r in records], pooled_below))
    groups = [(str(r["seed"]), [r]) for r in records] + ([(f"pooled ({len(records)} seeds)", records)] if len(records) > 1 else [])

    def mean_over(group: list[dict[str, Any]], value: Any) -> float | None:
        return mean_present([value(r["summary"]) for r in group])

    lines += ["", "Class-aware M-DSC (worst class's M-DSC instead of the mean over classes): rho of M-DSC and of "
              "worst-class M-DSC with mean and with worst-class true Dice; mean true Dice and worst-class true Dice of "
              "the K cases DSAL (mean M-DSC) and class-aware DSAL (worst-class M-DSC, ties by confidence) query; "
              "shared: how many of class-aware DSAL's K are DSAL's.", "",
              "| seed | rho M-DSC | rho worst M-DSC | rho M-DSC vs worst-class Dice | rho worst M-DSC vs worst-class Dice | "
              "Dice: DSAL K | class-aware K | fg-random | worst K | worst-class Dice: DSAL K | class-aware K | fg-random | "
              "shared |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def aware(summary: dict[str, Any], name: str, key: str | None = None) -> Any:
        value = summary["class_aware"][name]
        return value if key is None or value is None else value[key]

    for group_name, group in groups:
        lines.append(
            f"| {group_name} | {format_number(mean_over(group, lambda x: x['spearman_mdsc']), 2)} | "
            + " | ".join(format_number(mean_over(group, lambda x, n=n: aware(x, n)), 2)
                         for n in ("spearman_mdsc_worst", "spearman_mdsc_dice_worst", "spearman_mdsc_worst_dice_worst"))
            + " | " + " | ".join(format_number(mean_over(group, lambda x, key=key: aware(x, "selected_mean", key)))
                                 for key in ("dsal", "mdsc_worst", "fg_random", "worst"))
            + " | " + " | ".join(format_number(mean_over(group, lambda x, key=key: aware(x, "selected_dice_worst", key)))
                                 for key in ("dsal", "mdsc_worst", "fg_random"))
            + f" | {format_number(mean_over(group, lambda x: aware(x, 'shared_with_dsal')), 1)} |")
    lines += ["", "Diversity (pooled bottleneck features of the same pass, standardised per channel over the pool, cosine distance): mean pairwise distance "
              "within DSAL's K, entropy's K, class-aware DSAL's K, DSAL + k-centre's K (farthest-first among DSAL's 2K "
              "lowest-M-DSC cases, from the lowest) and those 2K, against a random K (the mean over all pool pairs); "
              "DSAL's closest pair against the median distance of a pool case to its nearest other case; mean true "
              "Dice of DSAL's and DSAL + k-centre's K; shared: how many of k-centre's K are DSAL's.", "",
              "| seed | features | DSAL K | entropy K | class-aware K | DSAL + k-centre K | DSAL 2K | random K | "
              "DSAL closest pair | pool nearest (median) | Dice: DSAL K | DSAL + k-centre K | fg-random | shared |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for group_name, group in groups:
        lengths = {r["summary"]["diversity"]["feature_length"] for r in group} - {None}
        lines.append(
            f"| {group_name} | {'/'.join(map(str, sorted(lengths))) or '-'} | "
            + " | ".join(format_number(mean_over(group, lambda x, key=key: x["diversity"]["mean_distance"][key]))
                         for key in ("dsal", "entropy", "mdsc_worst", "dsal_kcentre", "dsal_candidates", "random"))
            + " | " + " | ".join(format_number(mean_over(group, lambda x, key=key: x["diversity"][key]))
                                 for key in ("dsal_min", "pool_nearest_median"))
            + " | " + " | ".join(format_number(mean_over(group, lambda x, key=key: x["selected_mean"][key]))
                                 for key in ("dsal", "dsal_kcentre", "fg_random"))
            + f" | {format_number(mean_over(group, lambda x: x['diversity']['shared_with_dsal']), 1)} |")
    lines += ["", "Per class: pool mean / min / share < 0.5; mean true Dice of DSAL's K, class-aware DSAL's K, DSAL + "
              "k-centre's K, entropy's K, fg-random (expected), worst K.", "",
              "| seed | class | pool mean | min | < 0.5 | DSAL K | class-aware K | DSAL + k-centre K | entropy K | "
              "fg-random | worst K |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in labels:
        for group_name, group in groups:
            values = [c["dice"][name] for r in group for c in r["cases"] if c["dice"][name] is not None]
            cls = [r["summary"]["per_class"][name]["selected_mean"] for r in group]
            lines.append(f"| {group_name} | {name} | {format_number(mean_present(values))} | {format_number(min(values) if values else None)} | "
                         f"{format_number(float(np.mean([v < DICE_BELOW for v in values])) if values else None, 2)} | "
                         + " | ".join(format_number(mean_present([x[key] for x in cls]))
                                      for key in ("dsal", "mdsc_worst", "dsal_kcentre", "entropy", "fg_random", "worst"))
                         + " |")
    checks = [r["checks"] for r in records]
    lines += ["", "Checks: strategies' selections equal the measurement pass's: "
              + ", ".join(f"seed {r['seed']}: dsal {r['checks']['dsal_same_as_measurement_pass']}, entropy "
                          f"{r['checks']['entropy_same_as_measurement_pass']}" for r in records)
              + f"; largest score difference M-DSC {max(c['mdsc_max_abs_diff'] for c in checks):.2g}, entropy "
                f"{max(c['entropy_max_abs_diff'] for c in checks):.2g}; same as the campaign's round-0 selections: "
              + ", ".join(f"seed {r['seed']}: dsal {r['checks']['dsal_same_as_campaign']}, entropy "
                          f"{r['checks']['entropy_same_as_campaign']}" for r in records)
              + "; DSAL's 2K candidates begin with its K: "
              + ", ".join(f"seed {r['seed']}: {r['checks'].get('dsal_candidates_start_with_dsal', '-')}" for r in records) + ".",
              "Seconds per seed (round 0 training when not cached + measurement pass + DSAL and entropy selection): "
              + ", ".join(f"seed {r['seed']}: {r['seconds']['total']:.0f} (train {r['seconds']['round0_train']:.0f}, "
                          f"measure {r['seconds']['measure']:.0f}, select {r['seconds']['dsal_select'] + r['seconds']['entropy_select']:.0f})"
                          for r in records) + "."]
    return "\n".join(lines)


def run_benchmark(seeds: list[int], protocol: Protocol, out: Path, dataset_dir: Path = DATA,
                  cache_dir: Path | None = None, campaign_runs: Path | None = None) -> str:
    """Run the seeds not yet in ``out`` under ``protocol`` (appending each as it finishes); the tables of them."""
    if not (dataset_dir / "dataset.json").is_file():
        return f"skipped: {dataset_dir} not found (the hippocampus set lives in ../shared/data beside the project)"
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="uncertainty-vs-error-"))

    def one_seed(seed: int) -> dict[str, Any]:
        record = run_seed(seed, protocol, dataset_dir, cache_dir, campaign_runs, work / f"seed{seed}")
        logger.info("seed %d took %.1f min", seed, record["seconds"]["total"] / 60)
        shutil.rmtree(work / f"seed{seed}", ignore_errors=True)
        return record

    try:
        records = run_missing_seeds(seeds, protocol.key(), out, one_seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summarise(records)


def run(quick: bool) -> str:
    """For ``make bench`` (``run_all``): seeds 0-4 of the campaign protocol (about 3 minutes per seed on one thread
    without a round-0 cache), or with ``quick`` one tiny seed. Results: ``bench_output/uncertainty_vs_error.jsonl``."""
    protocol = Protocol.quick() if quick else Protocol()
    return run_benchmark([0] if quick else [0, 1, 2, 3, 4], protocol, Path("bench_output") / "uncertainty_vs_error.jsonl")


def main(argv: list[str] | None = None) -> int:
    """Command line; returns an exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2 3 4 (--quick: 0)")
    parser.add_argument("--out", type=Path, default=Path("bench_output") / "uncertainty_vs_error.jsonl",
                        help="JSON-lines results file (appended; seeds already there with the same protocol are skipped)")
    parser.add_argument("--round0-cache", type=Path, default=None,
                        help="a simulation round-0 cache folder, read only (e.g. the campaign's runs/round0)")
    parser.add_argument("--campaign-runs", type=Path, default=None,
                        help="the campaign's results folder, read only: its round-0 selections are compared with ours")
    parser.add_argument("--dataset", type=Path, default=DATA, help="MSD-style hippocampus folder")
    parser.add_argument("--quick", action="store_true", help="tiny: one seed, pool of 12, 6 training steps; checks that it runs")
    parser.add_argument("--summarise", action="store_true", help="print the tables of --out for this protocol and exit")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1, 2, 3, 4]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    protocol = Protocol.quick() if args.quick else Protocol()
    if args.summarise:
        # Version-1 records too ("-" where they lack a field); a seed recorded under both keys shows its current one.
        by_seed: dict[int, dict[str, Any]] = {}
        for wanted in (protocol.legacy_key(), protocol.key()):
            by_seed.update({r["seed"]: r for r in read_records(args.out) if r.get("key") == wanted and r["seed"] in args.seeds})
        sys.stdout.write(summarise(list(by_seed.values())) + "\n")
        return 0
    sys.stdout.write(run_benchmark(args.seeds, protocol, args.out, args.dataset, args.round0_cache, args.campaign_runs) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
