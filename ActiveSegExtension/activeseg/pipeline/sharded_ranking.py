"""Sharded ranking: the pool's network passes split across data-parallel ranks, the scores gathered on rank 0.

Ranking a pool of hundreds of full-size CTs after every round is the part of the loop that grows with the pool.
:func:`rank_round_sharded` gives every rank (:class:`~activeseg.model.distributed.DataParallel`, e.g. one per GPU
under torchrun) every ``world_size``-th candidate that needs a pass (candidates with stored scores under the
ranking model keep them, as in :func:`~activeseg.pipeline.ranking_round.rank_round`). A rank runs the one-process
per-case code on its share (:func:`~activeseg.pipeline.ranking_round._score_and_map`: DSAL scores from one
streamed pass, and the case's uncertainty overlay written to the datastore), then rank 0 gathers every rank's
scores and runs :func:`~activeseg.pipeline.ranking_round.rank_round` with them: routing, queue, predictions,
pseudo-labels and the commit are the one-process code, so the outcome is the one-process ranking
(``Testing/engine/test_distributed_ranking.py`` compares them on 2 gloo processes).

Cost: a case's label map stays with the rank that scored it, so rank 0 runs one more pass for each case it routes to
the queue or to a pseudo-label that another rank scored (``strong_per_round`` plus the weak quota, about half of them
with 2 ranks): a few passes against a pool's worth shared out.

Cancelling: rank 0's progress callback returning False stops every rank after its current case (one small
all-reduce per case; ranks with a shorter share take part in it all the same).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist

from activeseg.errors import TrainingCancelled
from activeseg.method.dsal import CaseScore
from activeseg.model.distributed import DataParallel
from activeseg.model.predictor import Predictor
from activeseg.pipeline.ranking_round import (
    CANDIDATE_STATES, RankResult, _model_or_active, _score_and_map, pending_token, rank_round,
)
from activeseg.store.datastore import Datastore, ModelRecord, StoreCommit

__all__ = ["ShardedRankResult", "rank_round_sharded", "score_shared", "shard"]

logger = logging.getLogger(__name__)


@dataclass
class ShardedRankResult(RankResult):
    """:class:`RankResult` plus how the passes were shared.

    Attributes:
        passes_by_rank: scoring passes each rank ran, in rank order (rank 0's passes for routed cases that other
            ranks scored are counted in ``inferred`` only).
    """

    passes_by_rank: list[int] = field(default_factory=list)


def shard(case_ids: list[str], group: DataParallel) -> list[str]:
    """This rank's cases: every ``world_size``-th from position ``rank`` (shares differ by at most one case)."""
    return case_ids[group.rank::group.world_size]


def score_shared(
    store: Datastore, group: DataParallel, weights: Path, version: int,
    progress: Callable[[dict[str, Any]], bool | None] | None = None,
) -> tuple[dict[str, CaseScore], list[int]] | None:
    """The passes of a ranking with model ``version`` (checkpoint ``weights``), shared by the ranks: every rank
    scores its share of the candidates without stored scores under that version and writes their uncertainty
    overlays; rank 0 gathers the scores.

    Every rank calls it. The version may be staged and not yet registered (a training job's; its file exists).

    Returns:
        Rank 0: ``(scores by case id, passes per rank)``; other ranks: None.

    Raises:
        TrainingCancelled: rank 0's ``progress`` returned False (on every rank).
    """
    settings = store.config.training
    stored = store.scores(version)
    candidates = [c.case_id for c in store.cases(split="train") if c.state in CANDIDATE_STATES]
    to_score = [case_id for case_id in candidates if case_id not in stored]
    mine = shard(to_score, group)
    predictor = Predictor.from_checkpoint(weights, group.device, settings.amp, settings.tta_flips)
    started = time.perf_counter()
    scores: list[CaseScore] = []
    stop = False
    for index in range(math.ceil(len(to_score) / group.world_size)):
        if index < len(mine):
            score, _, _ = _score_and_map(store, predictor, mine[index], pending_token(version))
            scores.append(score)
        done = min(len(to_score), (index + 1) * group.world_size)
        elapsed = time.perf_counter() - started
        if group.is_main and progress is not None and progress({
            "phase": "rank", "step": done, "steps": len(to_score), "elapsed_s": elapsed,
            "eta_s": elapsed / done * (len(to_score) - done), "processes": group.world_size,
        }) is False:
            stop = True
        stop, _ = group.sync_step(stop, 0.0)
        if stop:
            raise TrainingCancelled("ranking cancelled")
    gathered: list[list[CaseScore]] | None = [[] for _ in range(group.world_size)] if group.is_main else None
    dist.gather_object(scores, gathered, dst=0, group=group.group)
    if gathered is None:
        return None
    elapsed = time.perf_counter() - started
    count = sum(len(part) for part in gathered)
    logger.info("%d pass(es) on %d processes in %.1f s (%.2f cases/s)", count, group.world_size, elapsed,
                count / max(elapsed, 1e-9))
    return {score.case_id: score for part in gathered for score in part}, [len(part) for part in gathered]


def rank_round_sharded(
    store: Datastore, group: DataParallel, progress: Callable[[dict[str, Any]], bool | None] | None = None,
    write_pseudo: bool = True, commit: StoreCommit | None = None, model: ModelRecord | None = None,
) -> ShardedRankResult | None:
    """:func:`~activeseg.pipeline.ranking_round.rank_round` with the passes shared by the ranks (module docstring).

    Every rank calls it with the same store and model. Args as :func:`rank_round`; ``progress`` and ``commit`` are
    used on rank 0 only.

    Returns:
        Rank 0: the round's :class:`ShardedRankResult` (``inferred`` counts the passes of every rank); other ranks:
        None.

    Raises:
        ModelVersionError: no model has been trained yet.
        TrainingCancelled: rank 0's ``progress`` returned False (on every rank; nothing is changed).
    """
    record = _model_or_active(store, model)
    started = time.perf_counter()
    shared = score_shared(store, group, record.weights_path, record.version, progress if group.is_main else None)
    if shared is None:
        return None
    precomputed, passes = shared
    result = rank_round(store, progress, write_pseudo, commit, model=record, precomputed=precomputed)
    result.inferred += len(precomputed)
    result.seconds = time.perf_counter() - started
    return ShardedRankResult(**vars(result), passes_by_rank=passes)
