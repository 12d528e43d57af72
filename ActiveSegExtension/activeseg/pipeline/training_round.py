"""One training round: plan from the labelled set, train on expert labels (weight 1) and pseudo-labels (ALNT
re-weighted), select the step by Dice on the fixed validation split, register a new model version.

How a round runs:

1. **Cases**: train-split cases with an expert or accepted label, train-split pseudo-labelled cases, and the
   validation split's labelled cases (never trained on). Each is preprocessed once into the on-disk cache
   (:mod:`activeseg.model.case_cache`): resampled to the plan's spacing, foreground locations sampled.
2. **Plan** (:mod:`activeseg.model.plan`): from the expert cases' fingerprint, with the user's explicit settings on
   top; stored in the checkpoint and, once the round registers its model, in ``STORE/.activeseg/plan.json``
   (``activeseg status`` shows it: a round that keeps its parent leaves the parent's plan there). A warm-started
   round keeps its parent's plan (the weights are tied to it).
3. **Budget**: ``steps_base + steps_per_label * labelled volumes`` optimiser steps (at most ``max_steps``), so a
   round grows with what the radiologist has labelled; validated ``epochs`` times evenly over the round.
4. **Optimiser**: AdamW with linear warm-up and cosine decay (default) or SGD with Nesterov momentum and poly
   decay (nnU-Net). Every round restarts the schedule, warm-started or not: a warm start at full learning rate
   with fresh optimiser moments is the shock that made fine-tuning rounds collapse a class.
5. **Selection**: the step with the best mean validation Dice (on the planned grid) is kept. A round with a parent
   then compares its pick with the parent on the validation split, both on the source grids; when the parent
   scores higher no version is registered: the parent stays active and the round's :class:`RoundResult` says so
   (``kept_parent`` in its metrics and :attr:`RoundResult.message`, so how often it fires is measured).

Length (~490 lines): the round's stages are kept in one file, in the order they run, because each passes its
results to the next (cases -> plan -> budget -> loop -> selection -> registration); the parts that stand alone
(plan, cache, sampling, loss, predictor) live in ``activeseg.model``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from activeseg.config import Config
from activeseg.errors import CaseStateError, TrainingCancelled
from activeseg.io.atomic import TEMP_MARKER, atomic_write
from activeseg.io.seg_nrrd import read_segmentation_labelmap
from activeseg.io.volumes import Geometry, read_geometry
from activeseg.method.alnt import alnt_backward, pseudo_share
from activeseg.method.metrics import collapsed_classes, dice_per_class, summarise_dice
from activeseg.model.case_cache import CachedCase, CaseCache, source_key
from activeseg.model.distributed import DataParallel
from activeseg.model.loss import DeepSupervisionLoss, balanced_class_weights
from activeseg.model.network import DeepSupervisedUNet3D, build_network
from activeseg.model.plan import (
    CaseStatistics, Plan, fingerprint_of, make_plan, mirror_axes_for, override_plan, target_spacing_of,
)
from activeseg.model.predictor import Predictor, load_checkpoint, predict_heads, save_checkpoint, select_device
from activeseg.model.preprocessing import normalise, pad_value
from activeseg.model.sampling import CropOrigin, CropStream
from activeseg.store.datastore import TRAINED_STATES, CaseState, Datastore, ModelRecord, StoreCommit

__all__ = [
    "TrainingData", "ProgressCallback", "WeightObserver", "load_training_data", "plan_round", "round_steps", "validation_dice",
    "train_model", "train_round", "RoundResult", "round_message", "validated_epochs", "run_round", "finish_round",
    "register_weights", "TrainedRound",
]

logger = logging.getLogger(__name__)

# Receives progress events; returning False asks to cancel.
ProgressCallback = Callable[[dict[str, Any]], "bool | None"]
# Receives one ALNT step's pseudo-labelled crops and their final weights, (B,) float32 in the same order.
WeightObserver = Callable[[tuple[CropOrigin, ...], np.ndarray], None]


@dataclass
class TrainingData:
    """The round's cases, preprocessed and cached (arrays memory-mapped)."""

    experts: list[CachedCase] = field(default_factory=list)
    pseudo: list[CachedCase] = field(default_factory=list)
    validation: list[CachedCase] = field(default_factory=list)


@dataclass(frozen=True)
class RoundResult:
    """What a training round left behind.

    Attributes:
        model: the active version after the round: the new one, or the parent when the parent scored higher on
            validation (then nothing was registered).
        metrics: this round's metrics, as JSON types (the new version's stored metrics when one was registered).
        registered: whether the round registered a new version.
    """

    model: ModelRecord
    metrics: dict[str, Any]
    registered: bool

    @property
    def version(self) -> int:
        """The active version after the round."""
        return self.model.version

    @property
    def weights_path(self) -> Path:
        """The active version's weights file."""
        return self.model.weights_path

    @property
    def message(self) -> str:
        """One line for the radiologist: what the round did (see :func:`round_message`)."""
        return round_message(self.metrics, self.model.version, self.registered)


def round_message(metrics: dict[str, Any], version: int, registered: bool) -> str:
    """What a round did, in one line: ``"registered model v3 (validation Dice 0.712)"`` or ``"kept the previous
    model v2: the new weights scored 0.039 against 0.127 (mean validation Dice on the source grids)"``; a model that
    has not learned a class says so (``"...; not learned: Posterior"``)."""
    collapsed = metrics.get("collapsed_classes") or []
    warning = f"; not learned: {', '.join(collapsed)} (label more cases that show it, or train longer)" if collapsed else ""
    return _round_outcome(metrics, version, registered) + warning


def _round_outcome(metrics: dict[str, Any], version: int, registered: bool) -> str:
    if not registered:
        new = (metrics.get("source_val_dice") or {}).get("mean")
        old = (metrics.get("parent_val_dice") or {}).get("mean")
        if isinstance(new, (int, float)) and isinstance(old, (int, float)):
            return (f"kept the previous model v{version}: the new weights scored {new:.3f} against {old:.3f} "
                    "(mean validation Dice on the source grids)")
        return f"kept the previous model v{version}: the new weights did not score higher on validation"
    dice = (metrics.get("val_dice") or {}).get("mean")
    scored = f" (validation Dice {dice:.3f})" if isinstance(dice, (int, float)) else " (no labelled validation case)"
    return f"registered model v{version}{scored}"


def _expert_geometries(store: Datastore) -> dict[str, Geometry]:
    """Header geometry (LPS) of every expert-labelled training case, read once per round."""
    return {
        r.case_id: read_geometry(r.image_path)
        for r in store.cases(split="train") if r.state in TRAINED_STATES and r.label_path is not None
    }


def _target_spacing(config: Config, geometries: dict[str, Geometry]) -> tuple[float, float, float]:
    """The planned spacing (k, j, i) from the expert cases' headers (nnU-Net's rule), or the user's setting."""
    if config.training.target_spacing:
        return tuple(float(s) for s in config.training.target_spacing)  # type: ignore[return-value]
    return target_spacing_of(np.asarray([tuple(reversed(g.spacing)) for g in geometries.values()]))[0]


def load_training_data(store: Datastore, spacing: tuple[float, float, float]) -> TrainingData:
    """The round's cases at ``spacing`` (k, j, i), mm, from the on-disk cache (preprocessing cache misses).

    Training: train-split cases in ``labeled``/``accepted`` state (experts) and in ``pseudo`` state.
    Validation: val-split cases with a label. Validation cases never train and never get pseudo-labels.
    """
    config, cache = store.config, CaseCache(store.meta_dir / "cache")
    data = TrainingData()
    for record in store.cases():
        if record.state in TRAINED_STATES and record.label_path is not None:
            label_path, target = record.label_path, data.validation if record.split == "val" else data.experts
            load_label = (lambda cid=record.case_id: store.load_label(cid))
        elif record.state == CaseState.PSEUDO and record.pseudo_path is not None and record.split == "train":
            label_path, target = record.pseudo_path, data.pseudo
            load_label = (lambda path=record.pseudo_path: read_segmentation_labelmap(path, config.labels))
        else:
            continue
        try:
            target.append(cache.get(
                record.case_id, source_key(record.image_path, label_path), spacing,
                lambda cid=record.case_id: store.load_image(cid), load_label, config.num_classes,
            ))
        except FileNotFoundError:
            # Reviewed or relabelled between listing and reading (accept/reject removes the pseudo file, a new
            # submission replaces the label): this round trains without it rather than failing.
            logger.warning("case %s: its label changed while the round started; left out of this round", record.case_id)
    return data


def plan_round(store: Datastore, data: TrainingData, spacing: tuple[float, float, float], device: torch.device,
               geometries: dict[str, Geometry]) -> tuple[Plan, dict[str, Any]]:
    """The plan of a round trained from scratch: fingerprint of the expert cases (their source ``geometries``, from
    :func:`_expert_geometries`), then the user's overrides.

    Returns:
        The plan and the content of ``plan.json`` (plan and fingerprint summary), which :func:`train_round` writes
        only when it registers the model trained with this plan (``activeseg status`` shows the active model's).
    """
    config = store.config
    statistics = []
    for case in data.experts:
        source = geometries[case.case_id]
        statistics.append(CaseStatistics(
            tuple(reversed(source.spacing)), source.array_shape,  # type: ignore[arg-type]
            case.statistics.foreground_samples, case.statistics.class_voxels,
        ))
    fingerprint = fingerprint_of(statistics, "ct" if config.intensity.mode == "ct" else "mri")
    budget = config.training.max_patch_voxels or (128**3 if device.type == "cuda" else 64**3)
    mirror = mirror_axes_for(len(config.labels), config.training.mirroring, config.training.flip_axes)
    plan = make_plan(fingerprint, max_patch_voxels=budget, base_channels=config.network.base_channels,
                     max_channels=config.network.max_channels, batch_size=config.training.batch_size, mirror_axes=mirror)
    plan.target_spacing = spacing
    plan = override_plan(plan, patch_size=config.training.patch_size, channels=config.network.channels)
    summary = {k: v for k, v in fingerprint.to_dict().items() if k not in ("spacings", "shapes")} | {
        "median_spacing": np.median(fingerprint.spacings, axis=0).tolist(),
        "median_shape": np.median(fingerprint.shapes, axis=0).tolist(),
    }
    return plan, {"plan": plan.to_dict(), "fingerprint": summary}


def round_steps(config: Config, n_labelled: int) -> int:
    """Optimiser steps of a round: ``steps_base + steps_per_label * n_labelled``, capped at ``max_steps``."""
    settings = config.training
    return max(1, min(settings.max_steps, settings.steps_base + settings.steps_per_label * n_labelled))


def validation_dice(model: DeepSupervisedUNet3D, cases: list[CachedCase], plan: Plan, config: Config,
                    device: torch.device) -> dict[str, float]:
    """Dice of the main head's argmax on whole validation volumes, on the planned grid (cheap: no resampling).

    Returns:
        ``{label name: Dice}`` averaged over cases where the class is in the truth or the prediction, plus
        ``"mean"`` over classes. Empty when there are no cases.
    """
    if not cases:
        return {}
    model.eval()
    per_case = []
    for case in cases:
        mean, sd = (case.mean, case.sd) if plan.normalisation == "zscore" else (None, None)
        image = normalise(np.asarray(case.image), plan, mean, sd)
        heads = predict_heads(model, image, plan.patch_size, device, config.training.amp, pad=pad_value(float(image.min())))
        per_case.append(dice_per_class(heads.main.argmax(axis=0), np.asarray(case.label), config.labels))
    return summarise_dice(per_case, config.labels)


def source_grid_dice(predictor: Predictor, store: Datastore, case_ids: list[str]) -> dict[str, float]:
    """Validation Dice of a predictor on the cases' own (source) grids: the fair ground to compare two models
    whose plans may differ."""
    per_case = [
        dice_per_class(predictor.segment(store.load_image(cid)), store.load_label(cid).array, store.config.labels)
        for cid in case_ids
    ]
    return summarise_dice(per_case, store.config.labels) if per_case else {}


def _optimiser(model: torch.nn.Module, config: Config, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with linear warm-up and cosine decay to 1 %, or SGD (Nesterov 0.99) with warm-up and poly decay."""
    settings = config.training
    warmup = max(1, int(settings.warmup_fraction * steps))
    if settings.optimizer == "sgd":
        optimiser: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(), lr=settings.learning_rate, momentum=0.99, nesterov=True, weight_decay=settings.weight_decay)

        def decay(progress: float) -> float:
            return (1.0 - progress) ** 0.9
    else:
        optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)

        def decay(progress: float) -> float:
            return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return decay(min(1.0, (step - warmup) / max(1, steps - warmup)))

    return optimiser, torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def _stream(cases: list[CachedCase], plan: Plan, batch: int, seed: int, config: Config) -> DataLoader:
    settings = config.training
    stream = CropStream(cases, plan, batch, seed, settings.foreground_crop_fraction, settings.augment)
    workers = settings.loader_workers
    return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None)


def validated_epochs(config: Config, epochs: int, steps_per_epoch: int) -> list[int]:
    """The epochs (1-based) whose weights are validated: those ending at or after ``training.validate_from`` of the
    round's steps, and always the last."""
    threshold = config.training.validate_from * epochs * steps_per_epoch
    return [epoch for epoch in range(1, epochs + 1) if epoch == epochs or epoch * steps_per_epoch >= threshold]


def epoch_budget(config: Config, steps: int, epochs: int) -> tuple[int, int]:
    """(epochs, optimiser steps per epoch) that :func:`train_model` runs for a budget of ``steps`` over ``epochs``."""
    epochs = max(1, min(epochs, steps))
    return epochs, config.training.steps_per_epoch or math.ceil(steps / epochs)


def train_model(
    model: DeepSupervisedUNet3D,
    data: TrainingData,
    plan: Plan,
    config: Config,
    steps: int,
    epochs: int,
    device: torch.device,
    progress: ProgressCallback | None = None,
    seed: int = 0,
    weight_observer: WeightObserver | None = None,
    group: DataParallel | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` optimiser steps; keep the weights with the best validation Dice.

    Each step draws ``plan.batch_size`` expert crops. When pseudo-labelled cases exist it also draws
    ``alnt.pseudo_batch_size`` pseudo crops: with ALNT on, their per-sample losses are weighted by ALNT
    (:func:`activeseg.method.alnt.alnt_backward`, fused with the expert backward when dropout is 0); with ALNT off
    they join the batch at the experts' weight. Validation runs after the epochs of :func:`validated_epochs`.
    ``weight_observer``, when given, receives every ALNT step's pseudo crops (their origins) and final weights.

    Data-parallel (``group``, every rank calls this with the same model and data): DDP wraps the network for plain
    steps and ALNT steps exchange what keeps them exact (:mod:`activeseg.method.alnt`); each rank draws its own crops
    (expert stream ``seed + 2 * rank``, pseudo stream ``seed + 2 * rank + 1``: rank 0 draws what one process would)
    and ``plan.batch_size`` of them, so a step's global batch is ``world_size`` times larger. Rank 0 alone validates,
    keeps the best weights and reports progress; the ranks stop together (one small all-reduce per step carries
    rank 0's cancel and the mean loss). Other ranks return their last weights and metrics without validation.

    Returns:
        Metrics: loss and validation history (per epoch), best epoch, ALNT weight statistics, seconds per phase.

    Raises:
        TrainingCancelled: ``progress`` returned False (data-parallel: on every rank, at the next step).
    """
    settings = config.training
    rank = group.rank if group is not None else 0
    main_rank = rank == 0
    torch.manual_seed(seed + rank)
    epochs, steps_per_epoch = epoch_budget(config, steps, epochs)
    steps = steps_per_epoch * epochs
    to_validate = set(validated_epochs(config, epochs, steps_per_epoch))
    optimiser, schedule = _optimiser(model, config, steps)
    use_alnt = bool(data.pseudo) and config.alnt.enabled
    share = pseudo_share(len(data.pseudo), len(data.experts), config.alnt)
    class_weights = (
        balanced_class_weights([np.asarray(c.label) for c in data.experts], config.num_classes).to(device)
        if settings.class_balance else None
    )
    loss_fn = DeepSupervisionLoss(class_weights)
    autocast_on = settings.amp and device.type == "cuda"
    experts = iter(_stream(data.experts, plan, plan.batch_size, seed + 2 * rank, config))
    pseudo = iter(_stream(data.pseudo, plan, config.alnt.pseudo_batch_size, seed + 2 * rank + 1, config)) if data.pseudo else None
    network: torch.nn.Module = model
    if group is not None:
        network = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    stop_requested = False  # data-parallel: rank 0's progress asked to cancel; every rank stops at the next sync
    started = time.perf_counter()
    phase_seconds = {"train": 0.0, "validate": 0.0}
    loss_history: list[float] = []
    val_history: list[dict[str, float]] = []  # one entry per validated epoch (with its "epoch")
    alnt_history: list[dict[str, float]] = []
    best_score, best_state, best_epoch, best_dice = -math.inf, None, 0, {}

    def report(event: dict[str, Any]) -> None:
        nonlocal stop_requested
        if progress is not None and progress(event) is False:
            if group is None:
                raise TrainingCancelled("training cancelled")
            stop_requested = True

    def sync(loss_value: float) -> float:
        """Data-parallel: stop on every rank when any asked to; the mean loss over the ranks."""
        if group is None:
            return loss_value
        stop, mean_loss = group.sync_step(stop_requested, loss_value)
        if stop:
            raise TrainingCancelled("training cancelled")
        return mean_loss

    for epoch in range(1, epochs + 1):
        network.train()
        epoch_losses = []
        phase_started = time.perf_counter()
        for step in range(1, steps_per_epoch + 1):
            expert_batch = next(experts)
            images, labels = (t.to(device, non_blocking=True) for t in expert_batch[:2])
            step_stats: dict[str, float] = {}
            optimiser.zero_grad(set_to_none=True)
            if pseudo is not None and use_alnt:
                # Fused step: the expert backward doubles as ALNT's reference gradient g. Full precision
                # (forward-mode AD is not validated under autocast).
                pseudo_batch = next(pseudo)
                pseudo_images, pseudo_labels = (t.to(device, non_blocking=True) for t in pseudo_batch[:2])
                fused = alnt_backward(model, images, labels, pseudo_images, pseudo_labels, config.alnt,
                                      pseudo_scale=share, loss=loss_fn, group=group)
                loss, step_stats = fused.loss, fused.alnt.stats
                alnt_history.append(step_stats)
                if weight_observer is not None:
                    weight_observer(pseudo_batch.origins, fused.alnt.weights.detach().float().cpu().numpy())
            else:
                if pseudo is not None:  # ALNT off: pseudo-labelled crops join the batch at the experts' weight
                    pseudo_images, pseudo_labels = (t.to(device, non_blocking=True) for t in next(pseudo)[:2])
                    images, labels = torch.cat([images, pseudo_images]), torch.cat([labels, pseudo_labels])
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast_on):
                    loss = loss_fn.mean(network(images), labels)
                loss.backward()  # data-parallel: DDP averages the gradient over the ranks
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)  # nnU-Net's clip: one bad crop cannot wreck a round
            optimiser.step()
            schedule.step()
            epoch_losses.append(sync(float(loss.detach())))
            done = (epoch - 1) * steps_per_epoch + step
            elapsed = time.perf_counter() - started
            report({
                "phase": "train", "epoch": epoch, "epochs": epochs, "step": step, "steps": steps_per_epoch,
                "loss": epoch_losses[-1], "lr": schedule.get_last_lr()[0], "elapsed_s": elapsed,
                "eta_s": elapsed / done * (steps - done), **({"alnt": step_stats} if step_stats else {}),
            })
        phase_seconds["train"] += time.perf_counter() - phase_started
        loss_history.append(float(np.mean(epoch_losses)))
        if epoch not in to_validate or not main_rank:
            continue
        phase_started = time.perf_counter()
        report({"phase": "validate", "epoch": epoch, "epochs": epochs, "running": True})  # a pass starts
        dice = validation_dice(model, data.validation, plan, config, device)
        phase_seconds["validate"] += time.perf_counter() - phase_started
        val_history.append({"epoch": epoch, **dice})
        score = dice.get("mean", float(epoch))  # without validation labels, the last epoch wins
        if score >= best_score:
            best_score, best_epoch, best_dice = score, epoch, dice
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elapsed = time.perf_counter() - started
        done = epoch * steps_per_epoch
        report({
            "phase": "validate", "epoch": epoch, "epochs": epochs, "loss": loss_history[-1],
            "val_dice": dice.get("mean"), "elapsed_s": elapsed, "eta_s": elapsed / done * (steps - done),
        })
    sync(0.0)  # a cancel asked for during the last validation
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "loss_history": loss_history,
        "val_history": val_history,
        "best_epoch": best_epoch,
        "val_dice": best_dice,
        "steps": steps,
        "alnt": _summarise_alnt(alnt_history),
        "class_weights": class_weights.tolist() if class_weights is not None else None,
        "phase_seconds": phase_seconds,
        "seconds": time.perf_counter() - started,
    }


def _summarise_alnt(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each ALNT statistic over the round's steps (empty without ALNT)."""
    if not history:
        return {}
    keys = history[0].keys()
    return {key: float(np.nanmean([h.get(key, float("nan")) for h in history])) for key in keys}


def _notify(progress: ProgressCallback | None, event: dict[str, Any]) -> None:
    """Hand ``event`` to ``progress``; raise TrainingCancelled when it returns False."""
    if progress is not None and progress(event) is False:
        raise TrainingCancelled("training cancelled")


@dataclass
class TrainedRound:
    """A round's outcome before anything is registered (:func:`run_round`), for :func:`finish_round`.

    Attributes:
        model: the weights the round leaves active (the parent's when ``kept_parent``), eval mode.
        plan: their plan.
        metrics: the round's metrics (JSON types once registered).
        parent: the active version when the round started, or None.
        plan_record: ``plan.json`` of a round trained from scratch (written once its model registers), else None.
        kept_parent: the parent scored higher on validation: nothing is to be registered.
    """

    model: DeepSupervisedUNet3D
    plan: Plan
    metrics: dict[str, Any]
    parent: int | None
    plan_record: dict[str, Any] | None
    kept_parent: bool


def train_round(store: Datastore, progress: ProgressCallback | None = None,
                weight_observer: WeightObserver | None = None, commit: StoreCommit | None = None) -> RoundResult:
    """Train one round and register its model as a new, active version, unless the parent scores higher on the
    validation split: then nothing is registered and the parent stays active (``result.registered`` is False).

    ``commit``: stage the new version on it instead of registering it at once (a job commits it together with
    its other effects and its own status); the returned record is then the version as it will read back, and
    ``plan.json`` is written once it commits. Without it the version is registered before this returns.

    Progress events, in order: ``preprocess`` (then ``preprocess`` with ``ready``, ``validation_cases`` and
    ``compare_parent`` once the cases are cached), ``train`` per step and ``validate`` per epoch (see
    :func:`train_model`), ``compare_parent`` with ``step``/``steps`` (models scored of 2) when there is a parent.

    This runs in one process; :func:`activeseg.pipeline.distributed.train` runs the same round on several
    (``training.processes``).

    Raises:
        CaseStateError: no expert or accepted label in the training split.
        TrainingCancelled: the progress callback asked to stop (no version is written).
    """
    trained = run_round(store, progress, weight_observer)
    assert trained is not None  # one process is rank 0
    return finish_round(store, trained, commit)


#: Added to a round's seed per retry (:func:`_train_attempts`), far from the seeds of neighbouring rounds.
RETRY_SEED_STRIDE = 7919


def _train_attempts(warm_model: DeepSupervisedUNet3D | None, data: TrainingData, plan: Plan, config: Config, steps: int,
                    epochs: int, device: torch.device, progress: ProgressCallback | None, round_index: int,
                    weight_observer: WeightObserver | None, group: DataParallel | None,
                    ) -> tuple[DeepSupervisedUNet3D, dict[str, Any]]:
    """Train the round's model; a model that has not learned a class trains again, from scratch, with other seeds.

    ``warm_model``: the parent's weights to fine-tune in the first attempt, or None to build the network from the
    round's seed. Attempt ``a`` uses seed ``training.seed + round + RETRY_SEED_STRIDE * a`` for initialisation and
    crops (attempt 0 is the round's usual seed). Up to ``training.unlearned_retries`` more attempts run while the
    best one so far misses a class (:func:`activeseg.method.metrics.collapsed_classes` of its validation Dice); a
    retry always builds a fresh network on ``plan`` (a warm-started round's is the parent's), since fine-tuning a
    weak parent at a fresh optimiser's learning rate lost a class even on correct labels (RESULTS.md, issue 11,
    ALNT's premise, seed 0). The attempt with the best mean validation Dice is kept. Data-parallel: rank 0 decides
    (it alone validates) and one all-reduce tells the other ranks.

    Returns:
        The kept model and its metrics, with ``attempts`` (how many trained), ``attempt_val_dice`` (each
        attempt's mean validation Dice; None on ranks other than 0) and ``kept_attempt`` (index of the kept one).
    """
    settings = config.training
    attempts = 1 + settings.unlearned_retries
    main_rank = group is None or group.is_main
    best: tuple[DeepSupervisedUNet3D, dict[str, Any]] | None = None
    kept = 0
    history: list[float | None] = []
    for attempt in range(attempts):
        seed = settings.seed + round_index + RETRY_SEED_STRIDE * attempt
        if warm_model is not None and attempt == 0:
            model = warm_model
        else:
            torch.manual_seed(seed)
            model = build_network(config.num_classes, plan.channels, config.network.dropout, strides=plan.strides).to(device)
        metrics = train_model(model, data, plan, config, steps, epochs, device, progress, seed=seed,
                              weight_observer=weight_observer, group=group)
        score = metrics["val_dice"].get("mean") if main_rank else None
        history.append(score)
        best_score = None if best is None else best[1]["val_dice"].get("mean")
        if best is None or (score is not None and score > (-math.inf if best_score is None else best_score)):
            best, kept = (model, metrics), attempt
        unlearned = collapsed_classes(best[1]["val_dice"], config.labels, settings.unlearned_class_dice) if main_rank else []
        again = bool(unlearned) and attempt + 1 < attempts
        if group is not None:
            again, _ = group.sync_step(again, 0.0)
        if not again:
            break
        logger.warning("round %d: the model has not learned %s: training again from another initialisation "
                       "(attempt %d of %d)", round_index, ", ".join(unlearned), attempt + 2, attempts)
        _notify(progress, {"phase": "retry", "attempt": attempt + 2, "attempts": attempts, "unlearned": unlearned})
    assert best is not None
    model, metrics = best
    metrics.update({"attempts": len(history), "attempt_val_dice": history, "kept_attempt": kept})
    return model, metrics


def run_round(store: Datastore, progress: ProgressCallback | None = None,
              weight_observer: WeightObserver | None = None, group: DataParallel | None = None) -> TrainedRound | None:
    """Everything of :func:`train_round` but the registration: cases, plan, training, comparison with the parent.

    Data-parallel (``group``; every rank calls it): rank 0 prepares the cases first (the on-disk cache), then the
    others read them; all ranks train (:func:`train_model`); rank 0 alone validates, compares with the parent,
    reports progress and returns the outcome; the other ranks return None.

    Raises:
        CaseStateError: no expert or accepted label in the training split.
        TrainingCancelled: the progress callback asked to stop.
    """
    main_rank = group is None or group.is_main
    if not main_rank:
        progress = None
    _notify(progress, {"phase": "preprocess"})
    config = store.config
    settings = config.training
    if settings.num_threads:
        torch.set_num_threads(settings.num_threads)
    device = group.device if group is not None else select_device(settings.device)
    parent = store.active_version()
    round_index = 1 if parent is None else int(store.model(parent).metrics.get("round", parent)) + 1
    started = time.perf_counter()
    warm = parent is not None and settings.warm_start
    if warm and parent is not None:
        inherited = collapsed_classes(store.model(parent).metrics.get("val_dice") or {}, config.labels,
                                      settings.unlearned_class_dice)
        if inherited:
            # Fine-tuning a model that never learned a class kept it unlearned in the hippocampus campaign (issue 11,
            # seed 2: Posterior 0.000 at 4 and 8 labelled volumes); a fresh start can learn it from the new labels.
            warm = False
            if main_rank:
                logger.warning("round %d: the active model v%d has not learned %s: this round trains from scratch",
                               round_index, parent, ", ".join(inherited))
    geometries = _expert_geometries(store)
    if not geometries:
        raise CaseStateError("no expert labels in the training split yet: label at least one case before training")
    if warm:
        model, plan = load_checkpoint(store.model(parent).weights_path, device)
        if model.head.out_channels != config.num_classes:
            # A class was added to the labels since: the parent's heads cannot be fine-tuned into the new ones.
            warm = False
            if main_rank:
                logger.warning("round %d: the active model v%d predicts %d classes, the labels now name %d: this round "
                               "trains from scratch", round_index, parent, model.head.out_channels, config.num_classes)
    if warm:
        spacing = plan.target_spacing
    else:
        spacing = _target_spacing(config, geometries)
    if group is not None and not main_rank:
        group.barrier()  # rank 0 preprocesses cache misses; the others then read the cache
    data = load_training_data(store, spacing)
    if group is not None and main_rank:
        group.barrier()
    if not data.experts:  # every expert label changed while the round started
        raise CaseStateError("no expert labels in the training split yet: label at least one case before training")
    plan_record: dict[str, Any] | None = None  # plan.json of a from-scratch round, written if it registers
    if not warm:
        plan, plan_record = plan_round(store, data, spacing, device, geometries)
    preprocess_seconds = time.perf_counter() - started
    steps = round_steps(config, len(data.experts) + len(data.pseudo))
    epochs = settings.epochs_per_round if warm else settings.epochs_first
    planned_epochs, steps_per_epoch = epoch_budget(config, steps, epochs)
    _notify(progress, {"phase": "preprocess", "ready": True, "validation_cases": len(data.validation),
                       "compare_parent": parent is not None and bool(data.validation), "elapsed_s": preprocess_seconds,
                       "epochs": planned_epochs, "steps_per_epoch": steps_per_epoch,
                       "validation_passes": len(validated_epochs(config, planned_epochs, steps_per_epoch))})
    if main_rank:
        logger.info(
            "round %d: %d expert, %d pseudo, %d validation cases; %d steps (%s) on %s%s; patch %s at %s mm",
            round_index, len(data.experts), len(data.pseudo), len(data.validation), planned_epochs * steps_per_epoch,
            "warm start" if warm else "from scratch", device,
            f" x {group.world_size} processes" if group is not None else "", plan.patch_size, plan.target_spacing,
        )
    model, metrics = _train_attempts(model if warm else None, data, plan, config, steps, epochs, device, progress,
                                     round_index, weight_observer, group)
    if not main_rank:
        return None
    metrics["phase_seconds"]["preprocess"] = preprocess_seconds
    kept_parent = False
    if parent is not None and data.validation and settings.keep_better_parent:
        # The rule that a round never registers weights worse than its parent, judged on the source grids
        # (the two models' plans may differ). How often it fires is recorded in the metrics.
        compare_started = time.perf_counter()
        _notify(progress, {"phase": "compare_parent", "step": 0, "steps": 2})
        validation_ids = [c.case_id for c in data.validation]
        parent_predictor = Predictor.from_checkpoint(store.model(parent).weights_path, device, settings.amp, settings.tta_flips)
        new_dice = source_grid_dice(Predictor(model, plan, device, settings.amp, settings.tta_flips), store, validation_ids)
        _notify(progress, {"phase": "compare_parent", "step": 1, "steps": 2})
        # A parent that predates a label class cannot stand in for this round's model, whatever it scores.
        comparable = parent_predictor.model.head.out_channels == config.num_classes
        parent_dice = source_grid_dice(parent_predictor, store, validation_ids) if comparable else {}
        _notify(progress, {"phase": "compare_parent", "step": 2, "steps": 2})
        metrics["phase_seconds"]["compare_parent"] = time.perf_counter() - compare_started
        metrics["source_val_dice"], metrics["parent_val_dice"] = new_dice, parent_dice
        if comparable and parent_dice.get("mean", -1.0) > new_dice.get("mean", -1.0):
            kept_parent = True
            model, plan = parent_predictor.model, parent_predictor.plan
            logger.warning(
                "round %d: kept the parent model v%d: it scored %.3f on the validation split against %.3f",
                round_index, parent, parent_dice["mean"], new_dice["mean"],
            )
    metrics.update({
        "round": round_index,
        "parent": parent,
        "warm_start": warm and metrics["kept_attempt"] == 0,  # a retry trains from scratch
        "kept_parent": kept_parent,
        "plan": plan.to_dict(),
        "device": str(device),
        "processes": group.world_size if group is not None else 1,
        "n_expert": len(data.experts),
        "n_pseudo": len(data.pseudo),
        "n_validation": len(data.validation),
        "alnt_enabled": config.alnt.enabled,
        "expert_cases": [c.case_id for c in data.experts],
        # of the model the round leaves active
        "collapsed_classes": collapsed_classes(
            (store.model(parent).metrics.get("val_dice") or {}) if kept_parent and parent is not None else metrics["val_dice"],
            config.labels, settings.unlearned_class_dice),
    })
    return TrainedRound(model, plan, metrics, parent, plan_record, kept_parent)


def finish_round(store: Datastore, trained: TrainedRound, commit: StoreCommit | None = None) -> RoundResult:
    """Register what :func:`run_round` trained (see :func:`train_round` for ``commit``); a round that kept its parent
    registers nothing."""
    if trained.kept_parent and trained.parent is not None:
        # As a registered version's metrics read back: JSON types (lists, not tuples).
        return RoundResult(store.model(trained.parent), json.loads(json.dumps(trained.metrics)), registered=False)
    config = store.config
    fd, temp_name = tempfile.mkstemp(prefix=TEMP_MARKER, suffix=".pt", dir=store.meta_dir)
    os.close(fd)
    try:
        save_checkpoint(trained.model, trained.plan, config.num_classes, config.network.dropout, Path(temp_name))
        return register_weights(store, Path(temp_name), trained.metrics, trained.parent, trained.plan_record, commit)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def register_weights(store: Datastore, weights: Path, metrics: dict[str, Any], parent: int | None,
                     plan_record: dict[str, Any] | None, commit: StoreCommit | None = None) -> RoundResult:
    """Register a checkpoint file (:func:`activeseg.model.predictor.save_checkpoint`) as the round's new version.

    ``commit``: stage it there (see :func:`train_round`); ``plan_record``: ``plan.json`` to write once it commits.
    """
    def write_plan() -> None:
        if plan_record is not None:
            atomic_write(store.meta_dir / "plan.json", lambda p: p.write_text(json.dumps(plan_record, indent=2)))

    own_commit = commit is None
    with store.committing(commit) as commit:
        record = store.stage_model(commit, weights, metrics, parent)
        commit.after(write_plan)
    if own_commit:
        record = store.model(record.version)
    logger.info("round %s: model v%d, validation Dice %s", metrics.get("round"), record.version,
                (metrics.get("val_dice") or {}).get("mean"))
    return RoundResult(record, record.metrics, registered=True)
