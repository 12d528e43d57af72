"""Query strategies for label-efficiency experiments, registered by name behind one method.

Every strategy answers one question per active-learning round: *which K unlabelled training-split cases
should the (simulated) radiologist label next?* ::

    strategy = get_strategy("mc-dropout")
    selection = strategy.select(store, k=4, rng=random.Random(0))
    selection.strong   # case ids, most wanted first

Strategies see only the datastore (the active model, the training split's states): never a test split,
which the simulation keeps out of the datastore altogether.

Registered names (where a baseline differs from its source is listed in the README's "Deviations"):

* ``dsal``: DSAL's M-DSC strong queue plus its weak pseudo-labels, by calling
  :func:`activeseg.pipeline.ranking_round.rank_round` (the engine's own ranking, not a copy). Its pseudo-label set is
  rebuilt in the datastore every round and trains the next round (ALNT-weighted when ``alnt.enabled``).
* ``random``: uniform among unlabelled cases. No model pass.
* ``fg-random``: foreground-aware random (nnActive, TMLR 2025): uniform among unlabelled cases in which
  the active model's main head predicts any foreground voxel; when fewer than K such cases remain, the rest
  are drawn uniformly from the others (so every strategy labels the same budget).
* ``entropy``: predictive entropy of one deterministic pass (nnActive's strongest uncertainty method, and like
  DSAL one pass per case): mean over the volume of the per-voxel entropy (natural log) of the main head's
  softmax; the K highest-entropy cases.
* ``mc-dropout``: MONAI Label's "epistemic" strategy: T stochastic passes with decoder dropout active
  (:func:`activeseg.model.predictor.enable_mc_dropout`), mean softmax of the main head, per-voxel entropy
  (natural log), averaged over the volume; the K highest-entropy cases (MONAI Label's own score is
  variance-based). Each pass runs :meth:`activeseg.model.predictor.Predictor.predict_prepared`,
  which also computes the two auxiliary heads' softmax: a small overhead MC-dropout would not need
  (``bench_ranking_cost.py`` measures it both ways).
* ``full``: no querying; the simulation labels the whole pool before the first round (the ceiling).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from activeseg.store.datastore import Datastore
from activeseg.store.cases import TRAINED_STATES
from activeseg.errors import ConfigError, ModelVersionError
from activeseg.io.volumes import Volume
from activeseg.model.predictor import Predictor, enable_mc_dropout, select_device
from activeseg.pipeline.ranking_round import rank_round

__all__ = [
    "Selection",
    "QueryStrategy",
    "STRATEGIES",
    "get_strategy",
    "unlabelled_pool",
    "predictive_entropy",
    "DsalStrategy",
    "RandomStrategy",
    "ForegroundRandomStrategy",
    "EntropyStrategy",
    "McDropoutStrategy",
    "FullStrategy",
]

logger = logging.getLogger(__name__)


@dataclass
class Selection:
    """What one strategy decided in one round.

    Attributes:
        strong: case ids for the radiologist, most wanted first (at most K).
        weak: case ids that received a pseudo-label this round (DSAL only; empty otherwise).
        scores: the strategy's score per scored case (M-DSC for dsal, entropy in nats for mc-dropout,
            predicted foreground voxels for fg-random); empty for strategies that score nothing.
        seconds: wall time of the selection, including every model pass (s).
    """

    strong: list[str]
    weak: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


class QueryStrategy(Protocol):
    """The one-method interface every strategy implements.

    Attributes:
        name: registry name (``dsal``, ``random``, ...).
        labels_everything: True for ``full``: the simulation labels the whole pool up front.
        uses_pseudo_labels: True when the strategy writes pseudo-labels into the datastore.
    """

    name: str
    labels_everything: bool
    uses_pseudo_labels: bool

    def select(self, store: Datastore, k: int, rng: random.Random) -> Selection:
        """Choose up to ``k`` unlabelled training-split cases of ``store`` for the radiologist.

        Args:
            store: the datastore, with an active model for model-based strategies.
            k: how many cases to choose.
            rng: the experiment's random generator (the only source of randomness besides torch's,
                which model-based strategies seed from it).
        """
        ...


def unlabelled_pool(store: Datastore) -> list[str]:
    """Training-split case ids a strategy may query: not expert-labelled or accepted, sorted.

    Pseudo-labelled and queued cases count as unlabelled (DSAL may still queue them for the expert).
    """
    return [c.case_id for c in store.cases(split="train") if c.state not in TRAINED_STATES]


def predictive_entropy(probabilities: np.ndarray) -> float:
    """Mean over voxels of the entropy of class probabilities.

    Args:
        probabilities: (C, k, j, i) softmax (e.g. the mean over MC-dropout passes).

    Returns:
        Mean voxel entropy in nats, in [0, ln C].
    """
    clipped = np.clip(probabilities, 1e-8, 1.0)
    return float(-(clipped * np.log(clipped)).sum(axis=0).mean())


def _active_predictor(store: Datastore) -> Predictor:
    version = store.active_version()
    if version is None:
        raise ModelVersionError("no model yet: train a round before a model-based strategy selects")
    settings = store.config.training
    return Predictor.from_checkpoint(store.model(version).weights_path, select_device(settings.device), settings.amp)


class DsalStrategy:
    """DSAL: the engine's :func:`activeseg.pipeline.ranking_round.rank_round` (M-DSC strong queue, weak pseudo-labels).

    ``dsal.strong_per_round`` is set to ``k`` for the call, in memory only. Pseudo-labels follow the
    datastore's ``dsal.weak_*`` settings and are rebuilt each round; ``write_pseudo=False`` ranks only.
    """

    name = "dsal"
    labels_everything = False
    uses_pseudo_labels = True

    def __init__(self, write_pseudo: bool = True) -> None:
        self.write_pseudo = write_pseudo

    def select(self, store: Datastore, k: int, rng: random.Random) -> Selection:  # noqa: ARG002 - deterministic
        """Rank the pool once (one deterministic pass per case) and return the K lowest-M-DSC cases."""
        store.config.dsal.strong_per_round = k
        result = rank_round(store, write_pseudo=self.write_pseudo)
        return Selection(
            strong=list(result.strong), weak=list(result.weak), scores={s.case_id: s.mdsc for s in result.scores},
            seconds=result.seconds,
        )


class RandomStrategy:
    """Uniformly random unlabelled cases (no model pass)."""

    name = "random"
    labels_everything = False
    uses_pseudo_labels = False

    def select(self, store: Datastore, k: int, rng: random.Random) -> Selection:
        """Draw ``k`` cases without replacement from the sorted unlabelled pool."""
        started = time.perf_counter()
        pool = unlabelled_pool(store)
        return Selection(strong=rng.sample(pool, min(k, len(pool))), seconds=time.perf_counter() - started)


class ForegroundRandomStrategy:
    """Random among unlabelled cases where the active model predicts foreground (one pass per case)."""

    name = "fg-random"
    labels_everything = False
    uses_pseudo_labels = False

    def select(self, store: Datastore, k: int, rng: random.Random) -> Selection:
        """One deterministic main-head pass per unlabelled case; sample among those with foreground."""
        started = time.perf_counter()
        predictor = _active_predictor(store)
        foreground: dict[str, float] = {}
        pool = unlabelled_pool(store)
        for case_id in pool:
            main = predictor.predict(store.load_image(case_id), on_source_grid=False).main
            foreground[case_id] = float((main.argmax(axis=0) > 0).sum())
        with_fg = [cid for cid in pool if foreground[cid] > 0]
        chosen = rng.sample(with_fg, min(k, len(with_fg)))
        if len(chosen) < k:  # too few predicted-foreground cases: fill up uniformly (README, "Deviations")
            rest = [cid for cid in pool if cid not in chosen]
            chosen += rng.sample(rest, min(k - len(chosen), len(rest)))
        return Selection(strong=chosen, scores=foreground, seconds=time.perf_counter() - started)


def _top_k(scores: dict[str, float], k: int) -> list[str]:
    """The ``k`` highest-scoring case ids; ties (to 1e-9) broken by case id so selections are reproducible."""
    return sorted(scores, key=lambda cid: (-round(scores[cid], 9), cid))[:k]


class EntropyStrategy:
    """Predictive entropy of one deterministic pass per case (nnActive, TMLR 2025): top-K mean voxel entropy."""

    name = "entropy"
    labels_everything = False
    uses_pseudo_labels = False

    def select(self, store: Datastore, k: int, rng: random.Random) -> Selection:  # noqa: ARG002 - deterministic
        """Score every unlabelled case by the mean voxel entropy of the main head's softmax; highest first."""
        started = time.perf_counter()
        predictor = _active_predictor(store)
        entropy = {
            case_id: predictive_entropy(predictor.predict(store.load_image(case_id), on_source_grid=False).main)
            for case_id in unlabelled_pool(store)
        }
        return Selection(strong=_top_k(entropy, k), scores=entropy, seconds=time.perf_counter() - started)


class McDropoutStrategy:
    """MC-dropout predictive entropy ("epistemic"): T stochastic passes per case, top-K entropy."""

    name = "mc-dropout"
    labels_everything = False
    uses_pseudo_labels = False

    def __init__(self, passes: int = 10) -> None:
        """Args:
            passes: T, stochastic forward passes per case (MONAI Label: 5-10; CEAL: 20).
        """
        if passes < 1:
            raise ValueError(f"mc-dropout needs at least one pass, got {passes}")
        self.passes = passes

    def select(self, store: Datastore, k: int, rng: random.Random) -> Selection:
        """Score every unlabelled case by mean voxel entropy of the T-pass mean softmax; highest first."""
        started = time.perf_counter()
        predictor = _active_predictor(store)
        if not any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in predictor.model.modules()):
            raise ConfigError("mc-dropout needs a network trained with dropout (network.dropout > 0): without it the "
                              "T passes are identical and the score is one pass's entropy")
        enable_mc_dropout(predictor.model)
        # Dropout masks come from torch's global generator: seed it from the experiment's rng so the
        # same seed gives the same selections.
        torch.manual_seed(rng.randrange(2**31))
        entropy: dict[str, float] = {}
        for case_id in unlabelled_pool(store):
            entropy[case_id] = predictive_entropy(mc_mean_probabilities(predictor, store.load_image(case_id), self.passes))
        return Selection(strong=_top_k(entropy, k), scores=entropy, seconds=time.perf_counter() - started)


def mc_mean_probabilities(predictor: Predictor, volume: Volume, passes: int) -> np.ndarray:
    """Mean main-head softmax over ``passes`` stochastic passes, (C, k, j, i) on the planned grid; the predictor's
    model in MC-dropout mode (:func:`activeseg.model.predictor.enable_mc_dropout`)."""
    image, _, pad = predictor.prepare(volume)
    total: np.ndarray | None = None
    for _ in range(passes):
        main = predictor.predict_prepared(image, pad).main
        total = main if total is None else total + main
    assert total is not None
    return total / passes


class FullStrategy:
    """Full supervision: every pool case is labelled before the first round; nothing to query."""

    name = "full"
    labels_everything = True
    uses_pseudo_labels = False

    def select(self, store: Datastore, k: int, rng: random.Random) -> Selection:  # noqa: ARG002
        """Nothing to choose: returns an empty selection."""
        return Selection(strong=[])


STRATEGIES: dict[str, type] = {
    "dsal": DsalStrategy,
    "random": RandomStrategy,
    "fg-random": ForegroundRandomStrategy,
    "entropy": EntropyStrategy,
    "mc-dropout": McDropoutStrategy,
    "full": FullStrategy,
}


def get_strategy(name: str, **options: object) -> QueryStrategy:
    """A strategy instance by registry name.

    Args:
        name: one of :data:`STRATEGIES`.
        options: constructor options (``passes`` for mc-dropout, ``write_pseudo`` for dsal); options a
            strategy does not take are ignored.

    Raises:
        ValueError: unknown name.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from {sorted(STRATEGIES)}")
    cls = STRATEGIES[name]
    accepted = {"dsal": ("write_pseudo",), "mc-dropout": ("passes",)}.get(name, ())
    return cls(**{key: value for key, value in options.items() if key in accepted})
