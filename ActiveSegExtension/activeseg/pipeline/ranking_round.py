"""A ranking round: score every candidate case with the active model (one deterministic pass each),
queue the K most uncertain for the radiologist, and write pseudo-labels for the confident, agreeing ones.

Candidates are training-split cases without a trusted label: ``unlabeled``, ``queued``, ``pseudo`` and
``rejected`` (rejected cases may be queued for the radiologist but are never pseudo-labelled again).
Unlabelled validation cases are queued too (route ``validation``): validation Dice needs them, and
they are never trained on or pseudo-labelled.

**Incremental**: a case's scores depend only on the model and the image, so a candidate that already has scores
under the ranking model (a re-rank after the radiologist labelled some queued cases, or after a rollback to a model
that ranked before) keeps them without a pass; only the cases it then routes to the queue or to a pseudo-label and
that have no label map in memory get one pass each. A new model re-scores every candidate.

**Memory**: a pass streams the heads' probabilities slab by slab into running statistics
(:func:`activeseg.model.predictor.stream_heads`, :class:`activeseg.method.dsal.RankingAccumulator`) instead of
holding three (C, k, j, i) probability volumes, and candidates' label maps wait on disk (:class:`ArraySpill`) until
routing decides which are written, so a round holds about one case's image, label map and uncertainty map at a time.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from activeseg.io.atomic import atomic_write
from activeseg.store.datastore import Datastore, ModelRecord, ScoreRecord, StoreCommit
from activeseg.method.uncertainty_map import (
    pending_uncertainty_path, uncertainty_map, uncertainty_map_path, write_uncertainty_volume,
)
from activeseg.method.dsal import CaseScore, RankingAccumulator, confidence, mdsc, route_cases, weak_quota
from activeseg.method.metrics import collapsed_classes
from activeseg.errors import ModelVersionError, TrainingCancelled
from activeseg.io.volumes import Geometry
from activeseg.model.predictor import HeadProbabilities, Predictor, select_device
from activeseg.model.preprocessing import resample_to_grid
from activeseg.io.seg_nrrd import write_segmentation_file
from activeseg.io.spill import ArraySpill

__all__ = ["RankResult", "score_case", "rank_round", "pseudo_label_round"]

logger = logging.getLogger(__name__)

CANDIDATE_STATES = ("unlabeled", "queued", "pseudo", "rejected")


@dataclass
class RankResult:
    """What a ranking round decided.

    Attributes:
        model_version: the model that scored.
        scores: every candidate's scores.
        strong: case ids queued for the radiologist, most uncertain first.
        weak: case ids that received a pseudo-label.
        seconds: wall time of the round.
        inferred: candidates given a network pass (scored, or re-run for a label map).
        reused: candidates whose stored scores under this model were kept.
    """

    model_version: int
    scores: list[CaseScore] = field(default_factory=list)
    strong: list[str] = field(default_factory=list)
    weak: list[str] = field(default_factory=list)
    seconds: float = 0.0
    inferred: int = 0
    reused: int = 0


def _predictor(store: Datastore, model: ModelRecord) -> Predictor:
    """The predictor of ``model`` with the store's device and inference settings."""
    settings = store.config.training
    return Predictor.from_checkpoint(model.weights_path, select_device(settings.device), settings.amp, settings.tta_flips)


def _voxel_ratio(planned: Geometry, source: Geometry) -> float:
    """Source voxels per planned voxel (volume ratio), to report foreground counts on the source grid."""
    return float(np.prod(planned.spacing) / np.prod(source.spacing))


def score_case(case_id: str, heads: HeadProbabilities, num_classes: int) -> tuple[CaseScore, np.ndarray]:
    """DSAL scores from the three heads' probabilities; also returns the main head's label map (k, j, i)."""
    main, half, quarter = heads.label_maps()
    score = CaseScore(
        case_id=case_id,
        mdsc=mdsc(main, [half, quarter], num_classes),
        confidence=confidence(heads.main),
        foreground_voxels=int((main > 0).sum()),
    )
    return score, main


def _write_segmentation(store: Datastore, target: Path, labelmap: np.ndarray, geometry: Geometry) -> Path:
    """Write a labelmap atomically as a Slicer ``.seg.nrrd`` with the datastore's label names, colours and codes."""
    return atomic_write(target, lambda path: write_segmentation_file(path, labelmap, geometry, store.config))


def _write_pseudo(store: Datastore, case_id: str, labelmap: np.ndarray, geometry: Geometry) -> Path:
    target = store.meta_dir / "pseudo" / f"{case_id}.{uuid.uuid4().hex[:12]}.seg.nrrd"
    return _write_segmentation(store, target, labelmap, geometry)


def _write_predictions(store: Datastore, commit: StoreCommit, version: int,
                       predictions: dict[str, tuple[np.ndarray, Geometry]]) -> str:
    """Write the queued cases' predictions (starting segmentations for the annotator) as a new prediction set;
    return its name. The committed set, and its files, stay until ``commit`` switches to this one."""
    (store.meta_dir / "predictions").mkdir(exist_ok=True)
    prediction_set = store.new_prediction_set()
    for case_id, (labelmap, geometry) in predictions.items():
        target = commit.new_path(store.prediction_file(case_id, version, prediction_set))
        _write_segmentation(store, target, labelmap, geometry)
    return prediction_set


def pending_token(version: int) -> str:
    """The pending-map token of a ranking with model ``version`` (:func:`pending_uncertainty_path`)."""
    return f"v{version}"


def _score_and_map(store: Datastore, predictor: Predictor, case_id: str, pending: str,
                   ) -> tuple[CaseScore, np.ndarray, Geometry]:
    """One pass over a case: its scores (foreground voxels counted on the source grid), the main head's label map
    on the image's own grid, and the image's geometry; writes the case's uncertainty overlay from the same pass,
    under its pending name (``pending``: :func:`pending_token`) until the ranking commits.

    The heads' probabilities arrive slab by slab and are folded into the scores, the label map and the uncertainty
    map as they come (the same values :func:`score_case` and :func:`uncertainty_map` give on whole volumes)."""
    volume = store.load_image(case_id)
    image, planned, pad = predictor.prepare(volume)
    geometry = volume.geometry
    del volume  # the raw intensities are not needed after normalisation
    statistics = RankingAccumulator(image.shape, store.config.num_classes)
    # The voxel-wise map Slicer overlays (where the heads disagree or the main head is unsure), from the same pass.
    uncertainty = np.empty(image.shape, np.float32)
    for slab in predictor.stream_prepared(image, pad):
        statistics.add(slab.start, slab.main, slab.half, slab.quarter)
        uncertainty[slab.start:slab.stop] = uncertainty_map(slab.main, slab.half, slab.quarter)
    del image
    write_uncertainty_volume(store.meta_dir, case_id, resample_to_grid(uncertainty, planned, geometry, is_label=False),
                             geometry, pending=pending)
    del uncertainty
    score = statistics.score(case_id)
    score = replace(score, foreground_voxels=int(round(score.foreground_voxels * _voxel_ratio(planned, geometry))))
    return score, resample_to_grid(statistics.main_labels, planned, geometry, is_label=True), geometry


def _model_or_active(store: Datastore, model: ModelRecord | None) -> ModelRecord:
    """``model``, else the active model. Raises ModelVersionError when there is none."""
    if model is not None:
        return model
    version = store.active_version()
    if version is None:
        raise ModelVersionError("no model yet: run a training round before ranking")
    return store.model(version)


def rank_round(
    store: Datastore, progress: Callable[[dict[str, Any]], bool | None] | None = None, write_pseudo: bool = True,
    commit: StoreCommit | None = None, model: ModelRecord | None = None,
    precomputed: dict[str, CaseScore] | None = None,
) -> RankResult:
    """Score candidates with the active model, set the strong queue, rebuild the pseudo-label set.

    The round's effects (scores, queue, prediction files, pseudo-label set) become visible together: new files
    are written under fresh names, one transaction switches the rows, and the replaced files are deleted after
    it. A round that fails or is killed before that leaves the previous queue and its files as they were.

    Args:
        commit: stage the effects on it instead of committing them before returning (a job commits them together
            with its other effects and its own status).
        model: the model that ranks (default: the active one); a training job passes the version it has staged.
        precomputed: candidates' scores under ``model`` from passes other processes ran
            (:mod:`activeseg.pipeline.sharded_ranking`): used without a pass, counted in neither ``inferred`` nor
            ``reused``.

    Raises:
        ModelVersionError: no model has been trained yet.
        TrainingCancelled: ``progress`` returned False (nothing is changed).
    """
    record = _model_or_active(store, model)
    version = record.version
    config = store.config
    # No pseudo-labels from a model that has not learned a class: every one of them would miss that class, and ALNT
    # did not down-weight such labels (issue-11 campaign, seed 2: Posterior missing, pseudo-label Dice 0.43).
    unlearned = collapsed_classes(record.metrics.get("val_dice") or {}, config.labels, config.training.unlearned_class_dice)
    predictor = _predictor(store, record)
    round_index = int(record.metrics.get("round", version))
    candidates = [c for c in store.cases(split="train") if c.state in CANDIDATE_STATES]
    started = time.perf_counter()
    result = RankResult(model_version=version)
    # Scores come from the planned grid (M-DSC and confidence are ratios and means, so the grid hardly matters and
    # it is the cheaper one); label maps written for Slicer are resampled back onto each image's own grid.
    main_maps = ArraySpill(store.meta_dir)  # on disk until routing picks the few that are written
    geometries: dict[str, Geometry] = {}
    stored = store.scores(version)
    token = pending_token(version)
    for index, record in enumerate(candidates, start=1):
        known = stored.get(record.case_id)
        if precomputed is not None and record.case_id in precomputed:
            result.scores.append(precomputed[record.case_id])
            geometries[record.case_id] = store.image_geometry(record.case_id)
        elif known is not None:
            geometry = store.image_geometry(record.case_id)
            voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
            result.scores.append(CaseScore(record.case_id, known.mdsc, known.confidence,
                                           int(round(known.foreground_ml / voxel_ml))))
            geometries[record.case_id] = geometry
            result.reused += 1
        else:
            score, main_maps[record.case_id], geometries[record.case_id] = _score_and_map(
                store, predictor, record.case_id, token)
            result.scores.append(score)
            result.inferred += 1
        elapsed = time.perf_counter() - started
        if progress is not None and progress({
            "phase": "rank", "step": index, "steps": len(candidates), "elapsed_s": elapsed,
            "eta_s": elapsed / index * (len(candidates) - index),
        }) is False:
            raise TrainingCancelled("ranking cancelled")

    eligible = {c.case_id for c in candidates if c.state != "rejected"}
    quota = weak_quota(round_index, config.dsal) if write_pseudo and not unlearned else 0
    if write_pseudo and unlearned and weak_quota(round_index, config.dsal):
        logger.warning("model v%d has not learned %s: no pseudo-labels this round", version, ", ".join(unlearned))
    result.strong, result.weak = route_cases(result.scores, config.dsal.strong_per_round, quota, config.dsal, eligible)
    for case_id in [c for c in result.strong + result.weak if c not in main_maps]:  # routed on reused scores
        _, main_maps[case_id], _ = _score_and_map(store, predictor, case_id, token)
        result.inferred += 1
    voxel_ml = {cid: float(np.prod(geometry.spacing)) / 1000.0 for cid, geometry in geometries.items()}
    routes = {cid: "strong" for cid in result.strong} | {cid: "weak" for cid in result.weak}
    with store.committing(commit) as commit:
        # The new overlays (this process's passes and the other ranks' of a sharded ranking) replace the served
        # ones only once the ranking commits; a discarded commit removes them.
        for case_id in list(geometries):
            pending = pending_uncertainty_path(store.meta_dir, case_id, token)
            if pending.is_file():
                commit.new_path(pending)
                commit.after(functools.partial(os.replace, pending, uncertainty_map_path(store.meta_dir, case_id)))
        store.stage_scores(commit, [
            ScoreRecord(s.case_id, version, s.mdsc, s.confidence, s.foreground_voxels * voxel_ml[s.case_id],
                        routes.get(s.case_id, "none"))
            for s in result.scores
        ])
        validation_queue = [c.case_id for c in store.cases(split="val") if c.state in ("unlabeled", "queued")]
        # "write" events report progress only: the scores are computed, so the round finishes rather than cancels.
        to_write = len(result.strong) + (len(result.weak) if write_pseudo else 0)
        if progress is not None:
            progress({"phase": "write", "step": 0, "steps": to_write})
        prediction_set = _write_predictions(store, commit, version,
                                            {cid: (main_maps[cid], geometries[cid]) for cid in result.strong})
        if progress is not None:
            progress({"phase": "write", "step": len(result.strong), "steps": to_write})
        if write_pseudo:
            # The pseudo-label set is replaced before the queue is set: a case the previous set held and this
            # ranking routes strong is then ``unlabeled`` again and can be queued (a ``pseudo`` case cannot).
            written = {cid: _write_pseudo(store, cid, main_maps[cid], geometries[cid]) for cid in result.weak}
            store.stage_pseudo_labels(commit, version, written)
            if progress is not None:
                progress({"phase": "write", "step": to_write, "steps": to_write})
        store.stage_queue(commit, validation_queue + result.strong, version, prediction_set)
    main_maps.close()
    result.seconds = time.perf_counter() - started
    logger.info(
        "ranked %d case(s) with model v%d in %.1f s (%d passes, %d stored scores kept; %.2f cases/s): %d queued, "
        "%d pseudo-labelled", len(candidates), version, result.seconds, result.inferred, result.reused,
        len(candidates) / max(result.seconds, 1e-9), len(result.strong), len(result.weak),
    )
    return result


def pseudo_label_round(store: Datastore, progress: Callable[[dict[str, Any]], bool | None] | None = None,
                       commit: StoreCommit | None = None) -> dict[str, Path]:
    """(Re)write pseudo-labels for the cases the active model's stored scores routed ``weak``.

    Useful after a rollback or when pseudo-label files should be rebuilt without re-ranking. ``commit``: stage the
    new set on it (a job commits it with its status); without it the set is replaced before this returns.

    Raises:
        ModelVersionError: no active model, or it has no stored scores.
    """
    version = store.active_version()
    if version is None:
        raise ModelVersionError("no model yet: run a training round first")
    scores = store.scores(version)
    weak = [cid for cid, s in scores.items() if s.route == "weak"]
    if not scores:
        raise ModelVersionError(f"model v{version} has not ranked the pool yet: run a ranking job first")
    predictor = _predictor(store, store.model(version))
    written: dict[str, Path] = {}
    with store.committing(commit) as commit:
        for index, case_id in enumerate(weak, start=1):
            volume = store.load_image(case_id)
            written[case_id] = commit.new_path(_write_pseudo(store, case_id, predictor.segment(volume), volume.geometry))
            if progress is not None and progress({"phase": "pseudo-label", "step": index, "steps": len(weak)}) is False:
                raise TrainingCancelled("pseudo-labelling cancelled")
        store.stage_pseudo_labels(commit, version, written)
    return written
