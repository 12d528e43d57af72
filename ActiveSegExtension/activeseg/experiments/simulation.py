"""Label-efficiency experiments: the active-learning loop with the ground truth as the radiologist.

Length (~560 lines, over the project's ~400): the protocol (splits, test evaluation, round-0 cache) and the
small functions of the loop that runs it are read together; splitting them would split one description.

One call of :func:`run_simulation` (keyword form: :func:`simulate`) runs one strategy with one seed
on an MSD-style dataset::

    test split    drawn first (seeded), never enters the datastore: never trained on, never selected,
                  never pseudo-labelled; evaluated after every round by sliding-window inference.
    datastore     the remaining cases (optionally a seeded subset, ``pool_size``), created with
                  :func:`activeseg.store.initialise.init_datastore` (so intensity mode and labels come from the
                  dataset, e.g. z-score for MRI); its fixed validation split (``val_fraction`` of the
                  whole dataset) is drawn by the datastore from the same seed and labelled by the oracle
                  at the start; it selects the epoch of each round and is never queried.
    initial set   ``initial`` seeded-random training cases, labelled by the oracle.
    round 0       train from scratch (``training.epochs_first``), evaluate on the test split.
    round r=1..R  the strategy selects K = ``per_round`` cases -> the oracle labels them -> fine-tune
                  from the previous model (``training.epochs_per_round``) -> evaluate.

The split, the validation split and the initial set depend only on the seed and the dataset, so all
strategies with one seed start from identical data and an identical first model.

``full`` labels the whole pool before round 0 and then runs the same R + 1 training rounds (same
optimiser steps as the active strategies), so the ceiling gets the same training budget.

Where this protocol differs from the papers' (pseudo-label schedule, epoch selection, training budget) is
listed once, in the README's "Deviations"; the results record the full configuration.

Round-0 cache (``round0_cache``): the first model depends only on the seed, the splits, the initial
labels and the network/training settings, so strategies sharing a seed share it exactly. With a cache
folder, the first run trains it and later runs register a copy instead of re-training (their round-0
``train_s`` is the original run's, flagged ``round0_cached``). ``full`` never uses it (its round 0 trains
on the whole pool). Without a cache every run trains its own (identical) round 0.
"""

from __future__ import annotations

import datetime as _datetime
import hashlib
import json
import logging
import os
import platform
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activeseg.config import Config
from activeseg.store.datastore import Datastore, ModelRecord
from activeseg.store.cases import CaseState
from activeseg.errors import ConfigError
from activeseg.io.volumes import read_volume
from activeseg.model.predictor import Predictor, select_device
from activeseg.store.initialise import init_datastore
from activeseg.store.sources import find_source
from activeseg.experiments.oracle import SimulatedRadiologist
from activeseg.experiments.pseudo_quality import CropWeightRecorder, pseudo_label_dice
from activeseg.io.seg_nrrd import read_segmentation_labelmap
from activeseg.io.volumes import Volume
from activeseg.experiments.strategies import STRATEGIES, QueryStrategy, get_strategy
from activeseg.method.metrics import dice_per_class, summarise_dice
from activeseg.pipeline.training_round import ProgressCallback, RoundResult, train_round

__all__ = [
    "SplitPlan", "SimulationSettings", "plan_splits", "strategy_label", "evaluate_test_split", "run_simulation",
    "simulate", "load_results",
]

logger = logging.getLogger(__name__)

RESULTS_FORMAT = "activeseg-simulation/1"
# Decoder dropout of the mc-dropout baseline's network when the caller sets none.
MC_DROPOUT_RATE = 0.1


class SplitPlan:
    """The seeded data split of one experiment.

    Attributes:
        test: test case ids (outside the datastore).
        store: case ids that go into the datastore (validation + pool).
        n_val: validation cases the datastore draws among ``store``.
    """

    def __init__(self, test: list[str], store: list[str], n_val: int) -> None:
        self.test, self.store, self.n_val = test, store, n_val


def plan_splits(case_ids: list[str], seed: int, test_fraction: float, val_fraction: float, pool_size: int | None) -> SplitPlan:
    """Draw the test split, then the datastore's cases, from ``case_ids`` with ``seed``.

    Args:
        case_ids: all labelled cases of the dataset.
        test_fraction: share of all cases in the test split (at least 1).
        val_fraction: share of all cases in the validation split (at least 1).
        pool_size: cap on the training pool (validation excluded); ``None`` = all remaining cases.

    Raises:
        ConfigError: fractions out of range or nothing left for the pool.
    """
    if not (0.0 < test_fraction < 1.0 and 0.0 < val_fraction < 1.0 and test_fraction + val_fraction < 1.0):
        raise ConfigError(f"test_fraction and val_fraction must be in (0, 1) with sum < 1, got {test_fraction}, {val_fraction}")
    ordered = sorted(case_ids)
    random.Random(seed).shuffle(ordered)
    n_test = max(1, int(round(test_fraction * len(ordered))))
    n_val = max(1, int(round(val_fraction * len(ordered))))
    test, rest = ordered[:n_test], ordered[n_test:]
    n_pool = len(rest) - n_val if pool_size is None else min(pool_size, len(rest) - n_val)
    if n_pool < 1:
        raise ConfigError(f"no training pool left: {len(ordered)} cases, {n_test} test, {n_val} validation")
    return SplitPlan(sorted(test), sorted(rest[: n_val + n_pool]), n_val)


# A variant's name (see SimulationSettings.variant): it ends up in curve labels and results file names.
_VARIANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def strategy_label(strategy: str, alnt: bool, pseudo: bool) -> str:
    """Curve label: ``dsal+alnt``, ``dsal`` (pseudo-labels at expert weight), ``dsal-nopseudo``, or the name."""
    if strategy != "dsal":
        return strategy
    if not pseudo:
        return "dsal-nopseudo"
    return "dsal+alnt" if alnt else "dsal"


def evaluate_test_split(predictor: Predictor, cases: list[tuple[str, Path, Path]], config: Config) -> dict[str, Any]:
    """Dice of the main head's argmax on whole test volumes.

    Args:
        cases: (case id, image path, label path).

    Returns:
        ``{"per_class": {name: mean Dice}, "mean": mean over classes, "per_case": {id: {name: Dice}},
        "per_case_mean": {id: mean Dice over the classes counted for that case (1.0 when none is)}}``.
        A class absent from both truth and prediction of a case is not counted for that case; a class
        never counted scores 1 (the convention of :mod:`activeseg.method.metrics`, as validation uses).
    """
    scored: list[dict[int, float | None]] = []
    per_case: dict[str, dict[str, float]] = {}
    per_case_mean: dict[str, float] = {}
    for case_id, image_path, label_path in cases:
        truth = read_volume(label_path, dtype=np.uint8).array
        prediction = predictor.segment(read_volume(image_path))
        dice = dice_per_class(prediction, truth, config.labels)
        scored.append(dice)
        per_case[case_id] = {config.labels[value]: d for value, d in dice.items() if d is not None}
        per_case_mean[case_id] = float(np.mean(list(per_case[case_id].values()))) if per_case[case_id] else 1.0
    summary = summarise_dice(scored, config.labels)
    means = {name: summary[name] for name in config.labels.values()}
    return {"per_class": means, "mean": summary["mean"], "per_case": per_case, "per_case_mean": per_case_mean}


def _write_subset_dataset(folder: Path, source_json: dict[str, Any], images: dict[str, Path], labels: dict[str, Path], ids: list[str]) -> Path:
    """An MSD ``dataset.json`` listing only ``ids`` (absolute paths: no copy of the volumes)."""
    folder.mkdir(parents=True, exist_ok=True)
    subset = {key: value for key, value in source_json.items() if key not in ("training", "test", "numTraining", "numTest")}
    subset["training"] = [{"image": str(images[cid].resolve()), "label": str(labels[cid].resolve())} for cid in ids]
    subset["numTraining"] = len(ids)
    path = folder / "dataset.json"
    path.write_text(json.dumps(subset, indent=1) + "\n")
    return path


def _round0_key(config: Config, seed: int, val_ids: list[str], initial: list[str]) -> str:
    """Hash of everything the round-0 model depends on (ALNT and DSAL settings do not enter round 0)."""
    settings = config.to_dict()
    relevant = {k: settings[k] for k in ("labels", "network", "training", "intensity")}
    text = json.dumps([relevant, seed, sorted(val_ids), sorted(initial)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _store_round0(cache_file: Path, weights: Path, metrics: dict[str, Any]) -> None:
    """Write the cache entry atomically (metrics first, weights last: the weights mark it complete)."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    for target, write in (
        (cache_file.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(metrics))),
        (cache_file, lambda tmp: shutil.copyfile(weights, tmp)),
    ):
        temporary = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        write(temporary)
        os.replace(temporary, target)


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


@dataclass(frozen=True)
class SimulationSettings:
    """One label-efficiency experiment: the strategy, the seeded split and the round budget.

    Attributes:
        strategy: a name of :data:`activeseg.experiments.strategies.STRATEGIES`.
        seed: seeds the test split, the validation split, the initial set, random strategies, the
            network initialisation and training crops (``training.seed``), and dropout masks.
        rounds: R, query rounds after the initial training round (R + 1 models in all).
        per_round: K, cases the oracle labels per round.
        initial: expert-labelled training cases before round 0.
        test_fraction: share of the dataset held out as the test split.
        val_fraction: share of the dataset in the fixed validation split.
        overrides: ``section.name=value`` settings applied on top of the dataset-derived config.
        alnt: ALNT re-weighting of pseudo-labels (only matters for ``dsal``); False sets ``alnt.enabled=false``.
        pool_size: cap on the training pool (seeded subset); ``None`` = all non-test, non-validation cases.
        pseudo: DSAL's weak pseudo-labels (False = strong queue only).
        mc_passes: T of ``mc-dropout``.
        work_dir: folder for the datastore (replaced); default a fresh folder under the system temp dir.
        keep_work_dir: keep the datastore afterwards (default: removed when ``work_dir`` was not given).
        round0_cache: folder sharing the round-0 model between runs of one seed (see the module docstring).
        variant: name of a configuration (an ablation: ``scratch`` for ``training.warm_start=false``, say), appended
            to the curve label as ``<label>@<variant>`` so that variants of one strategy are curves of their own.
    """

    strategy: str
    seed: int = 0
    rounds: int = 5
    per_round: int = 4
    initial: int = 4
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    overrides: tuple[str, ...] = ()
    alnt: bool = True
    pool_size: int | None = None
    pseudo: bool = True
    mc_passes: int = 10
    work_dir: Path | None = None
    keep_work_dir: bool = False
    round0_cache: Path | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        if self.variant is not None and not _VARIANT_NAME.fullmatch(self.variant):
            raise ConfigError(f"variant {self.variant!r}: use letters, digits, '.', '_' or '-' (it becomes part of file names)")

    @property
    def label(self) -> str:
        """The curve label (:func:`strategy_label`, then ``@variant`` when one is named)."""
        label = strategy_label(self.strategy, self.alnt, self.pseudo)
        return label if self.variant is None else f"{label}@{self.variant}"

    def config_overrides(self) -> list[str]:
        """The settings the datastore is created with: the seed, the caller's overrides, ALNT off if asked."""
        settings = [f"training.seed={self.seed}", *self.overrides]
        if self.strategy == "mc-dropout" and not any(o.startswith("network.dropout=") for o in self.overrides):
            # MC-dropout samples dropout masks: its network trains with dropout (MONAI Label's networks do);
            # every other strategy keeps the engine's default (no dropout).
            settings.append(f"network.dropout={MC_DROPOUT_RATE}")
        if not self.alnt:
            settings.append("alnt.enabled=false")
        return settings


@dataclass(frozen=True)
class _Dataset:
    """An MSD-style dataset with ground truth: image and label file per case id, and its ``dataset.json``."""

    folder: Path
    images: dict[str, Path]
    labels: dict[str, Path]
    description: dict[str, Any]


@dataclass
class _Experiment:
    """A running experiment: its datastore, oracle and strategy, and what is fixed before round 0."""

    settings: SimulationSettings
    store: Datastore
    oracle: SimulatedRadiologist
    chooser: QueryStrategy
    plan: SplitPlan
    val_ids: list[str]
    pool: list[str]
    first: list[str]
    test_cases: list[tuple[str, Path, Path]]
    strategy_rng: random.Random
    device: torch.device
    cache_file: Path | None
    progress: ProgressCallback | None = None


def _read_dataset(dataset_dir: Path) -> _Dataset:
    """Read an MSD-style dataset. Raises ConfigError when it lists no labels."""
    found = find_source(dataset_dir)
    if not found.labels:
        raise ConfigError(f"{dataset_dir}: the dataset lists no labels; a simulation needs ground truth")
    description = json.loads(((dataset_dir / "dataset.json") if dataset_dir.is_dir() else dataset_dir).read_text())
    return _Dataset(dataset_dir, dict(found.images), found.labels, description)


def _fresh_work_dir(settings: SimulationSettings) -> tuple[Path, bool]:
    """The (emptied) folder for the datastore, and whether it is a temporary one of this run."""
    temporary = settings.work_dir is None
    if settings.work_dir is not None:
        work = Path(settings.work_dir)
    else:
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"activeseg-sim-{settings.strategy}-{settings.seed}-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    return work, temporary


def _create_store(dataset: _Dataset, plan: SplitPlan, work: Path, settings: SimulationSettings) -> Datastore:
    """The experiment's datastore over the planned cases (never the test split), settings applied."""
    subset = _write_subset_dataset(work / "source", dataset.description, dataset.images, dataset.labels, plan.store)
    config = Config()
    config.val_fraction = plan.n_val / len(plan.store)
    store, problems = init_datastore(work / "store", subset, overrides=settings.config_overrides(), seed=settings.seed, config=config)
    if problems:
        raise ConfigError(f"simulation data could not be imported: {problems}")
    if store.config.training.num_threads:
        torch.set_num_threads(store.config.training.num_threads)
    return store


def _start(dataset: _Dataset, plan: SplitPlan, work: Path, settings: SimulationSettings) -> _Experiment:
    """Create the datastore, label the validation split and the initial set, and fix the round-0 cache entry.

    Raises:
        ConfigError: ``initial`` larger than the pool, or the data cannot be imported.
    """
    store = _create_store(dataset, plan, work, settings)
    oracle = SimulatedRadiologist(dataset.labels)
    val_ids = [c.case_id for c in store.cases(split="val")]
    pool = [c.case_id for c in store.cases(split="train")]
    assert not set(plan.test) & set(pool + val_ids), "test cases leaked into the datastore"
    for case_id in val_ids:
        oracle.label(store, case_id)
    chooser = get_strategy(settings.strategy, passes=settings.mc_passes, write_pseudo=settings.pseudo)
    if chooser.labels_everything:
        first = list(pool)
    else:
        if settings.initial > len(pool):
            raise ConfigError(f"initial={settings.initial} exceeds the pool of {len(pool)} cases")
        first = random.Random(settings.seed).sample(pool, settings.initial)
    for case_id in first:
        oracle.label(store, case_id)
    config = store.config
    device = select_device(config.training.device)
    logger.info(
        "simulate %s (seed %d): %d test, %d validation, %d pool, %d initial, %d rounds x %d",
        settings.label, settings.seed, len(plan.test), len(val_ids), len(pool), len(first), settings.rounds, settings.per_round,
    )
    cache_file = None
    if settings.round0_cache is not None and not chooser.labels_everything:
        cache_file = Path(settings.round0_cache) / f"round0-{_round0_key(config, settings.seed, val_ids, first)}.pt"
    return _Experiment(
        settings=settings, store=store, oracle=oracle, chooser=chooser, plan=plan, val_ids=val_ids, pool=pool,
        first=first, test_cases=[(cid, dataset.images[cid], dataset.labels[cid]) for cid in plan.test],
        # Derived from the seed but independent of how many draws the initial set took, so strategies that
        # share a seed share the initial set exactly.
        strategy_rng=random.Random(settings.seed * 7919 + 1),
        device=device, cache_file=cache_file,
    )


def _pseudo_labels(store: Datastore) -> dict[str, Volume]:
    """The training split's current pseudo-labels, case id -> label map on the case's grid."""
    labels = store.config.labels
    return {
        c.case_id: read_segmentation_labelmap(c.pseudo_path, labels)
        for c in store.cases(split="train", state=CaseState.PSEUDO) if c.pseudo_path is not None
    }


def _alnt_agreement(experiment: _Experiment, recorder: CropWeightRecorder, record: ModelRecord | RoundResult) -> dict[str, Any]:
    """ALNT weight against true crop Dice for the round just trained (empty when no ALNT step ran)."""
    if not recorder.records:
        return {}
    spacing = tuple(float(s) for s in record.metrics["plan"]["target_spacing"])
    return recorder.summary(_pseudo_labels(experiment.store), experiment.oracle.labels, list(experiment.store.config.labels),
                            spacing)  # type: ignore[arg-type]


def _train(experiment: _Experiment, round_index: int, recorder: CropWeightRecorder | None = None,
           ) -> tuple[ModelRecord | RoundResult, float, bool]:
    """Train round ``round_index`` (or register the cached round-0 model): (model, train seconds, cached).

    ``recorder`` receives the round's ALNT weights per pseudo-labelled crop.
    """
    started = time.perf_counter()
    cache_file = experiment.cache_file
    if round_index == 0 and cache_file is not None and cache_file.is_file():
        metrics = json.loads(cache_file.with_suffix(".json").read_text())
        return experiment.store.add_model(cache_file, metrics, None), float(metrics["wall_s"]), True
    progress = experiment.progress
    forward = None if progress is None else (lambda event: progress({**event, "round": round_index}))
    record = train_round(experiment.store, progress=forward, weight_observer=recorder)
    train_s = time.perf_counter() - started
    if round_index == 0 and cache_file is not None:
        _store_round0(cache_file, record.weights_path, {**record.metrics, "wall_s": train_s})
    return record, train_s, False


def _evaluate(experiment: _Experiment, record: ModelRecord | RoundResult) -> tuple[dict[str, Any], float]:
    """Test Dice of a model (:func:`evaluate_test_split`) and the seconds it took."""
    predictor = Predictor.from_checkpoint(record.weights_path, experiment.device, experiment.store.config.training.amp)
    started = time.perf_counter()
    dice = evaluate_test_split(predictor, experiment.test_cases, experiment.store.config)
    return dice, time.perf_counter() - started


def _notify(experiment: _Experiment, event: dict[str, Any]) -> None:
    if experiment.progress is not None:
        experiment.progress(event)


def _run_round(experiment: _Experiment, round_index: int) -> dict[str, Any]:
    """Train and evaluate one round; before the last, the strategy selects and the oracle labels K cases."""
    settings, store = experiment.settings, experiment.store
    recorder = CropWeightRecorder()
    record, train_s, cached = _train(experiment, round_index, recorder)
    alnt_agreement = _alnt_agreement(experiment, recorder, record)
    _notify(experiment, {"phase": "evaluate", "round": round_index})
    dice, eval_s = _evaluate(experiment, record)
    trained_pseudo = [c.case_id for c in store.cases(state=CaseState.PSEUDO)]
    row: dict[str, Any] = {
        "round": round_index,
        "model_version": record.version,
        "labelled": record.metrics["n_expert"],
        "pseudo": record.metrics["n_pseudo"],
        "labelled_cases": sorted(record.metrics["expert_cases"]),
        "pseudo_cases": sorted(trained_pseudo),
        "test_dice": {**dice["per_class"], "mean": dice["mean"]},
        "test_per_case": dice["per_case_mean"],
        "val_dice": record.metrics["val_dice"],
        "best_epoch": record.metrics["best_epoch"],
        "alnt": record.metrics["alnt"],
        "alnt_weight_vs_dice": alnt_agreement,
        "kept_parent": bool(record.metrics.get("kept_parent", False)),
        "train_s": train_s,
        "round0_cached": cached,
        "eval_s": eval_s,
        "rank_s": 0.0,
        "selected": [],
        "new_pseudo": [],
        "pseudo_dice": {},
        "pseudo_dice_mean": None,
    }
    if round_index < settings.rounds and not experiment.chooser.labels_everything:
        _notify(experiment, {"phase": "select", "round": round_index})
        selection = experiment.chooser.select(store, settings.per_round, experiment.strategy_rng)
        assert not set(selection.strong) & set(experiment.plan.test)
        for case_id in selection.strong:
            experiment.oracle.label(store, case_id)
        row.update({"rank_s": selection.seconds, "selected": selection.strong, "new_pseudo": sorted(selection.weak)})
        if selection.weak:  # the truth is known here: how good are the pseudo-labels the next round trains on?
            quality = pseudo_label_dice(_pseudo_labels(store), experiment.oracle.labels, list(store.config.labels))
            row.update({"pseudo_dice": quality, "pseudo_dice_mean": float(np.mean(list(quality.values())))})
    _notify(experiment, {"phase": "round_done", "round": round_index, "labelled": row["labelled"],
                         "test_dice": dice["mean"]})
    logger.info(
        "%s seed %d round %d: %d labelled, %d pseudo, test Dice %.4f (%s), train %.0f s, rank %.0f s",
        settings.label, settings.seed, round_index, row["labelled"], row["pseudo"], dice["mean"],
        ", ".join(f"{k} {v:.3f}" for k, v in dice["per_class"].items()), train_s, row["rank_s"],
    )
    return row


def _metadata(experiment: _Experiment, dataset_dir: Path) -> dict[str, Any]:
    """What a results file records about the run besides its rounds."""
    settings, config = experiment.settings, experiment.store.config
    return {
        "strategy": settings.strategy,
        "label": settings.label,
        "variant": settings.variant,
        "seed": settings.seed,
        "dataset": str(dataset_dir.resolve()),
        "alnt": bool(settings.alnt and config.alnt.enabled),
        "pseudo": bool(settings.pseudo and experiment.chooser.uses_pseudo_labels),
        "rounds": settings.rounds,
        "per_round": settings.per_round,
        "initial": len(experiment.first),
        "test_fraction": settings.test_fraction,
        "val_fraction": settings.val_fraction,
        "pool_size": len(experiment.pool),
        "n_test": len(experiment.plan.test),
        "n_val": len(experiment.val_ids),
        "test_cases": experiment.plan.test,
        "val_cases": sorted(experiment.val_ids),
        "initial_cases": sorted(experiment.first),
        "mc_passes": settings.mc_passes if settings.strategy == "mc-dropout" else None,
        "overrides": settings.config_overrides(),
        "config": config.to_dict(),
        "machine": _machine(),
        "date": _datetime.datetime.now().isoformat(timespec="seconds"),
    }


def run_simulation(dataset_dir: Path, settings: SimulationSettings, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Run one label-efficiency experiment and return its results.

    Args:
        dataset_dir: an MSD-style folder (``dataset.json`` with ``training`` image/label pairs).
        settings: the experiment.
        progress: receives the training round's events (:func:`activeseg.pipeline.training_round.train_round`)
            and the simulation's own (``phase`` ``evaluate``, ``select``, ``round_done``), each with ``round``.

    Returns:
        JSON-ready ``{"format", "metadata": {...}, "rounds": [per-round dict], "seconds"}``. Each round:
        ``round``, ``labelled`` (expert training labels the model was trained on), ``pseudo`` (pseudo-
        labelled cases in its training), ``labelled_cases``, ``pseudo_cases``, ``test_dice`` (per class
        and ``mean``), ``test_per_case`` (case id -> mean Dice, for paired bootstraps), ``val_dice``,
        ``best_epoch``, ``alnt`` (weight statistics), ``alnt_weight_vs_dice`` (ALNT weight of each pseudo crop
        against its true Dice, :meth:`~activeseg.experiments.pseudo_quality.CropWeightRecorder.summary`),
        ``kept_parent``, ``train_s``, ``rank_s`` (the selection after this round's model; 0 after the last
        round), ``selected``, ``new_pseudo`` and their true Dice ``pseudo_dice`` / ``pseudo_dice_mean``.

    Raises:
        ConfigError: unknown strategy, bad fractions, or ``initial`` larger than the pool.
    """
    if settings.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {settings.strategy!r}; choose from {sorted(STRATEGIES)}")
    started = time.perf_counter()
    dataset_dir = Path(dataset_dir)
    dataset = _read_dataset(dataset_dir)
    ids = sorted(cid for cid in dataset.images if cid in dataset.labels)
    plan = plan_splits(ids, settings.seed, settings.test_fraction, settings.val_fraction, settings.pool_size)
    work, temporary = _fresh_work_dir(settings)
    experiment = _start(dataset, plan, work, settings)
    experiment.progress = progress
    rounds = [_run_round(experiment, round_index) for round_index in range(settings.rounds + 1)]
    metadata = _metadata(experiment, dataset_dir)
    seconds = time.perf_counter() - started
    if temporary and not settings.keep_work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return {"format": RESULTS_FORMAT, "metadata": metadata, "rounds": rounds, "seconds": seconds}


def simulate(
    dataset_dir: Path,
    strategy: str,
    seed: int = 0,
    rounds: int = 5,
    per_round: int = 4,
    initial: int = 4,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    overrides: list[str] | None = None,
    alnt: bool = True,
    work_dir: Path | None = None,
    pool_size: int | None = None,
    pseudo: bool = True,
    mc_passes: int = 10,
    keep_work_dir: bool = False,
    round0_cache: Path | None = None,
) -> dict[str, Any]:
    """Keyword form of :func:`run_simulation`; the arguments are :class:`SimulationSettings`' fields."""
    settings = SimulationSettings(
        strategy=strategy, seed=seed, rounds=rounds, per_round=per_round, initial=initial, test_fraction=test_fraction,
        val_fraction=val_fraction, overrides=tuple(overrides or ()), alnt=alnt, pool_size=pool_size, pseudo=pseudo,
        mc_passes=mc_passes, work_dir=work_dir, keep_work_dir=keep_work_dir, round0_cache=round0_cache,
    )
    return run_simulation(dataset_dir, settings)


def load_results(path: Path) -> dict[str, Any]:
    """Read a results file written by ``activeseg simulate``.

    Raises:
        ConfigError: not a simulation results file.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read simulation results ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ConfigError(f"{path}: not an activeseg simulation results file")
    return data
