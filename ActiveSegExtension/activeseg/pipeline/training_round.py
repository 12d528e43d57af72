"""One training round: fine-tune from the active model on expert labels (weight 1) and pseudo-labels
(ALNT re-weighted), select the epoch by Dice on the fixed validation split, register a new model version.

The previous version is never overwritten: each round's weights go into a new ``models/vNNNN/`` folder.
"""

from __future__ import annotations

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

from activeseg.io.atomic import TEMP_MARKER
from activeseg.config import Config
from activeseg.store.datastore import TRAINED_STATES, Datastore, ModelRecord
from activeseg.errors import CaseStateError, TrainingCancelled
from activeseg.model.predictor import load_checkpoint, predict_heads, save_checkpoint, select_device
from activeseg.method.alnt import alnt_backward, pseudo_share
from activeseg.model.loss import balanced_class_weights, per_sample_deep_supervision_loss
from activeseg.model.network import DeepSupervisedUNet3D, build_network
from activeseg.model.preprocessing import normalise_intensity, sample_crop
from activeseg.io.seg_nrrd import read_segmentation_labelmap

__all__ = ["Sample", "TrainingData", "ProgressCallback", "load_training_data", "validation_dice", "train_model", "train_round"]

logger = logging.getLogger(__name__)

# Receives progress events; returning False asks to cancel.
ProgressCallback = Callable[[dict[str, Any]], "bool | None"]


@dataclass
class Sample:
    """One case ready for training: normalised image and label, both (k, j, i)."""

    case_id: str
    image: np.ndarray
    label: np.ndarray


@dataclass
class TrainingData:
    """Expert (and accepted) samples, pseudo-labelled samples and the fixed validation samples."""

    experts: list[Sample] = field(default_factory=list)
    pseudo: list[Sample] = field(default_factory=list)
    validation: list[Sample] = field(default_factory=list)


def load_training_data(store: Datastore) -> TrainingData:
    """Read every usable labelled case of the datastore into memory.

    Training: train-split cases in ``labeled``/``accepted`` state (experts) and in ``pseudo`` state.
    Validation: val-split cases with a label. Validation cases never train and never get pseudo-labels.
    """
    data = TrainingData()
    settings = store.config.intensity
    for record in store.cases():
        if record.state in TRAINED_STATES and record.label_path is not None:
            label = store.load_label(record.case_id).array
            target = data.validation if record.split == "val" else data.experts
        elif record.state == "pseudo" and record.pseudo_path is not None and record.split == "train":
            label = read_segmentation_labelmap(record.pseudo_path, store.config.labels).array
            target = data.pseudo
        else:
            continue
        image = normalise_intensity(store.load_image(record.case_id).array, settings)
        target.append(Sample(record.case_id, image, label))
    return data


def _batch(samples: list[Sample], size: int, config: Config, rng: np.random.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random crops from random samples, as (B, 1, k, j, i) tensors on ``device``."""
    background = -1.0 if config.intensity.mode == "ct" else 0.0
    crops = [
        sample_crop(s.image, s.label, config.training.patch_size, rng, config.training.foreground_crop_fraction, background)
        for s in (samples[i] for i in rng.integers(0, len(samples), size))
    ]
    images = torch.from_numpy(np.stack([c[0] for c in crops])[:, None]).to(device)
    labels = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64)[:, None]).to(device)
    return images, labels


def validation_dice(model: DeepSupervisedUNet3D, samples: list[Sample], config: Config, device: torch.device) -> dict[str, float]:
    """Dice of the main head's argmax on whole validation volumes.

    Returns:
        ``{label name: Dice}`` averaged over cases where the class is in the truth or the prediction
        (a class absent from both is not counted), plus ``"mean"`` over classes. Empty when no samples.
    """
    if not samples:
        return {}
    model.eval()
    per_class: dict[int, list[float]] = {value: [] for value in config.labels}
    for sample in samples:
        prediction = predict_heads(model, sample.image, config.training.patch_size, device, config.training.amp).main.argmax(axis=0)
        for value in config.labels:
            truth, predicted = sample.label == value, prediction == value
            total = int(truth.sum()) + int(predicted.sum())
            if total:
                per_class[value].append(2.0 * int(np.logical_and(truth, predicted).sum()) / total)
    result = {config.labels[v]: float(np.mean(s)) if s else 1.0 for v, s in per_class.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result


def train_model(
    model: DeepSupervisedUNet3D,
    data: TrainingData,
    config: Config,
    epochs: int,
    device: torch.device,
    progress: ProgressCallback | None = None,
    seed: int = 0,
    keep_initial: bool = False,
) -> dict[str, Any]:
    """Train ``model`` in place; keep the weights of the epoch with the best validation Dice.

    With ``keep_initial`` (fine-tuning) the starting weights compete as "epoch 0": when no epoch beats them
    on the validation split, the round returns them unchanged (``best_epoch`` 0).

    Each step draws ``batch_size`` expert crops. When pseudo-labelled samples exist, it also draws
    ``alnt.pseudo_batch_size`` pseudo crops: with ALNT on, their per-sample losses are weighted by ALNT
    (:func:`activeseg.method.alnt.alnt_backward`, objective per ``alnt.objective``); with ALNT off they join the
    batch at the experts' weight. With ``network.dropout`` > 0 the ALNT step cannot reuse the expert
    backward (dropout masks differ between passes) and costs about one expert pass more.

    Returns:
        Metrics: loss history (per epoch), validation history, best epoch, ALNT weight statistics.

    Raises:
        TrainingCancelled: ``progress`` returned False.
    """
    settings = config.training
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    use_alnt = bool(data.pseudo) and config.alnt.enabled
    share = pseudo_share(len(data.pseudo), len(data.experts), config.alnt)
    class_weights = (
        balanced_class_weights([s.label for s in data.experts], config.num_classes).to(device)
        if settings.class_balance else None
    )
    autocast_on = settings.amp and device.type == "cuda"
    total_steps = max(1, epochs * settings.steps_per_epoch)
    started = time.perf_counter()
    loss_history: list[float] = []
    val_history: list[dict[str, float]] = []
    alnt_history: list[dict[str, float]] = []
    best_score, best_state, best_epoch, best_dice = -math.inf, None, 0, {}
    initial_dice: dict[str, float] = {}
    if keep_initial and data.validation:
        # Fine-tuning: the starting weights are a candidate too, so a round never selects weights that
        # are worse on the fixed validation split than the model it started from.
        initial_dice = best_dice = validation_dice(model, data.validation, config, device)
        best_score, best_epoch = initial_dice["mean"], 0
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def report(event: dict[str, Any]) -> None:
        if progress is not None and progress(event) is False:
            raise TrainingCancelled("training cancelled")

    for epoch in range(1, epochs + 1):
        model.train()
        epoch_losses = []
        for step in range(1, settings.steps_per_epoch + 1):
            images, labels = _batch(data.experts, settings.batch_size, config, rng, device)
            step_stats: dict[str, float] = {}
            optimiser.zero_grad(set_to_none=True)
            if use_alnt:
                # One fused step: the expert backward doubles as ALNT's reference gradient g. It runs in full
                # precision (forward-mode AD is not validated under autocast).
                pseudo_images, pseudo_labels = _batch(data.pseudo, config.alnt.pseudo_batch_size, config, rng, device)
                fused = alnt_backward(
                    model, images, labels, pseudo_images, pseudo_labels, config.alnt,
                    pseudo_scale=share, class_weights=class_weights,
                )
                loss, step_stats = fused.loss, fused.alnt.stats
                alnt_history.append(step_stats)
            else:
                if data.pseudo:  # ALNT off: pseudo-labelled crops join the batch at the experts' weight
                    pseudo_images, pseudo_labels = _batch(data.pseudo, config.alnt.pseudo_batch_size, config, rng, device)
                    images, labels = torch.cat([images, pseudo_images]), torch.cat([labels, pseudo_labels])
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast_on):
                    loss = per_sample_deep_supervision_loss(model(images), labels, class_weights).mean()
                loss.backward()
            optimiser.step()
            epoch_losses.append(float(loss.detach()))
            done = (epoch - 1) * settings.steps_per_epoch + step
            elapsed = time.perf_counter() - started
            report({
                "phase": "train", "epoch": epoch, "epochs": epochs, "step": step, "steps": settings.steps_per_epoch,
                "loss": epoch_losses[-1], "elapsed_s": elapsed, "eta_s": elapsed / done * (total_steps - done),
                **({"alnt": step_stats} if step_stats else {}),
            })
        loss_history.append(float(np.mean(epoch_losses)))
        dice = validation_dice(model, data.validation, config, device)
        val_history.append(dice)
        score = dice.get("mean", float(epoch))  # without validation labels, the last epoch wins
        if score >= best_score:
            best_score, best_epoch, best_dice = score, epoch, dice
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elapsed = time.perf_counter() - started
        done = epoch * settings.steps_per_epoch
        report({
            "phase": "validate", "epoch": epoch, "epochs": epochs, "loss": loss_history[-1],
            "val_dice": dice.get("mean"), "elapsed_s": elapsed, "eta_s": elapsed / done * (total_steps - done),
        })
    if best_state is not None:
        model.load_state_dict(best_state)
    return {
        "loss_history": loss_history,
        "val_history": val_history,
        "best_epoch": best_epoch,
        "val_dice": best_dice,
        "initial_val_dice": initial_dice,
        "alnt": _summarise_alnt(alnt_history),
        "class_weights": class_weights.tolist() if class_weights is not None else None,
        "seconds": time.perf_counter() - started,
    }


def _summarise_alnt(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each ALNT statistic over the round's steps (empty without ALNT)."""
    if not history:
        return {}
    keys = history[0].keys()
    return {key: float(np.nanmean([h.get(key, float("nan")) for h in history])) for key in keys}


def train_round(store: Datastore, progress: ProgressCallback | None = None) -> ModelRecord:
    """Train one round and register its model as a new, active version.

    Fine-tunes from the active version (``epochs_per_round``) or starts fresh (``epochs_first``).

    Raises:
        CaseStateError: no expert or accepted label in the training split.
        TrainingCancelled: the progress callback asked to stop (no version is written).
    """
    config = store.config
    if config.training.num_threads:
        torch.set_num_threads(config.training.num_threads)
    device = select_device(config.training.device)
    data = load_training_data(store)
    if not data.experts:
        raise CaseStateError("no expert labels in the training split yet: label at least one case before training")
    parent = store.active_version()
    round_index = 1 if parent is None else int(store.model(parent).metrics.get("round", parent)) + 1
    if parent is None:
        torch.manual_seed(config.training.seed)
        model = build_network(config.num_classes, config.network.channels, config.network.dropout).to(device)
        epochs = config.training.epochs_first
    else:
        model = load_checkpoint(store.model(parent).weights_path, device)
        epochs = config.training.epochs_per_round
    logger.info(
        "round %d: %d expert, %d pseudo, %d validation cases; %d epochs on %s",
        round_index, len(data.experts), len(data.pseudo), len(data.validation), epochs, device,
    )
    metrics = train_model(
        model, data, config, epochs, device, progress, seed=config.training.seed + round_index, keep_initial=parent is not None
    )
    metrics.update({
        "round": round_index,
        "parent": parent,
        "epochs": epochs,
        "device": str(device),
        "n_expert": len(data.experts),
        "n_pseudo": len(data.pseudo),
        "n_validation": len(data.validation),
        "alnt_enabled": config.alnt.enabled,
        "expert_cases": [s.case_id for s in data.experts],
    })
    fd, temp_name = tempfile.mkstemp(prefix=TEMP_MARKER, suffix=".pt", dir=store.meta_dir)
    os.close(fd)
    try:
        save_checkpoint(model, config, Path(temp_name))
        record = store.add_model(Path(temp_name), metrics, parent)
    finally:
        Path(temp_name).unlink(missing_ok=True)
    logger.info("round %d: model v%d, validation Dice %s", round_index, record.version, metrics["val_dice"].get("mean"))
    return record
