"""Losses: per-sample Dice + cross-entropy, and DSAL's deep-supervision weighting.

Per-sample losses (shape (B,)) are the unit both plain training (their mean) and ALNT (a weighted sum)
use, so the two objectives share one definition.
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch.nn import functional

from .networks import DeepSupervisionOutput

__all__ = ["DEEP_SUPERVISION_WEIGHTS", "per_sample_dice_ce", "per_sample_deep_supervision_loss"]

# DSAL: 0.6 * L(main) + 0.3 * L(1/4 head) + 0.1 * L(1/2 head), each against the full-resolution label.
DEEP_SUPERVISION_WEIGHTS = {"main": 0.6, "quarter": 0.3, "half": 0.1}

# Soft Dice with smooth 1 (numerator and denominator), over all channels including background, per sample.
_dice = DiceLoss(include_background=True, to_onehot_y=True, softmax=True, reduction="none", smooth_nr=1.0, smooth_dr=1.0)


def per_sample_dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Voxel-mean cross-entropy plus channel-mean soft Dice loss, one value per sample.

    Args:
        logits: (B, C, D, H, W) raw scores.
        target: (B, 1, D, H, W) integer class labels.

    Returns:
        (B,) losses.
    """
    cross_entropy = functional.cross_entropy(logits, target[:, 0].long(), reduction="none").flatten(1).mean(dim=1)
    dice = _dice(logits, target).flatten(1).mean(dim=1)
    return cross_entropy + dice


def per_sample_deep_supervision_loss(outputs: DeepSupervisionOutput, target: torch.Tensor) -> torch.Tensor:
    """DSAL's weighted sum of the three heads' per-sample losses, (B,)."""
    return (
        DEEP_SUPERVISION_WEIGHTS["main"] * per_sample_dice_ce(outputs.main, target)
        + DEEP_SUPERVISION_WEIGHTS["quarter"] * per_sample_dice_ce(outputs.quarter, target)
        + DEEP_SUPERVISION_WEIGHTS["half"] * per_sample_dice_ce(outputs.half, target)
    )
