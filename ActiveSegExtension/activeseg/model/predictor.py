"""Checkpoints and inference: the :class:`Predictor` applies a trained model and its plan to whole volumes.

Probabilities are softmax over classes, arrays (C, k, j, i) float32 on the CPU; sliding windows with Gaussian
weighting (MONAI ``sliding_window_inference``) give the main head and both side outputs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from activeseg.errors import ModelVersionError
from activeseg.io.volumes import Geometry, Volume
from activeseg.model.network import DeepSupervisedUNet3D, build_network
from activeseg.model.plan import Plan
from activeseg.model.preprocessing import normalise, pad_value, resample_to_grid, resample_volume

__all__ = [
    "HeadProbabilities", "select_device", "save_checkpoint", "load_checkpoint", "predict_heads", "enable_mc_dropout",
    "Predictor",
]

logger = logging.getLogger(__name__)


@dataclass
class HeadProbabilities:
    """Softmax probabilities of the three heads, each (C, k, j, i) float32 numpy."""

    main: np.ndarray
    half: np.ndarray
    quarter: np.ndarray

    def label_maps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Argmax class maps (k, j, i) uint8 of main, half, quarter."""
        return tuple(p.argmax(axis=0).astype(np.uint8) for p in (self.main, self.half, self.quarter))  # type: ignore[return-value]


def select_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without a GPU falls back to CPU with a warning."""
    if setting in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if setting == "cuda":
        logger.warning("training.device=cuda but no CUDA device is available: using the CPU")
    return torch.device("cpu")


def save_checkpoint(model: DeepSupervisedUNet3D, plan: Plan, num_classes: int, dropout: float, path: Path) -> None:
    """Save weights plus the plan and shape needed to rebuild and apply the network (plain data only)."""
    torch.save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "plan": plan.to_dict(),
            "num_classes": num_classes,
            "dropout": dropout,
        },
        path,
    )


def load_checkpoint(path: Path, device: torch.device) -> tuple[DeepSupervisedUNet3D, Plan]:
    """Rebuild the network and its plan from :func:`save_checkpoint` output; the network in eval mode on ``device``.

    Raises:
        ModelVersionError: the file predates plans (a checkpoint without a ``plan``) or is not a checkpoint.
    """
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if "plan" not in checkpoint:
        raise ModelVersionError(f"{path.name}: a checkpoint without a training plan (written before plans existed); retrain")
    plan = Plan.from_dict(checkpoint["plan"])
    model = build_network(checkpoint["num_classes"], plan.channels, checkpoint["dropout"], strides=plan.strides)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), plan


def enable_mc_dropout(model: torch.nn.Module) -> None:
    """Eval mode except dropout layers, which stay stochastic (MC-dropout baseline)."""
    model.eval()
    for module in model.modules():
        if "Dropout" in type(module).__name__:
            module.train()


@torch.no_grad()
def predict_heads(
    model: DeepSupervisedUNet3D,
    image: np.ndarray,
    patch_size: tuple[int, int, int],
    device: torch.device,
    amp: bool = True,
    overlap: float = 0.5,
    pad: float = 0.0,
    tta_flips: Sequence[int] = (),
) -> HeadProbabilities:
    """Sliding-window inference over a whole normalised volume.

    Args:
        model: in eval mode (or MC-dropout mode, see :func:`enable_mc_dropout`).
        image: (k, j, i) float32, already intensity-normalised.
        patch_size: window (k, j, i), multiples of 8; smaller volumes are padded by MONAI.
        device: where the network runs; the volume stays on the CPU and windows are moved (large CTs fit).
        amp: bfloat16 autocast on CUDA.
        overlap: window overlap fraction (nnU-Net: 0.5); windows are blended with Gaussian weights.
        pad: value outside the volume (:func:`activeseg.model.preprocessing.pad_value`, as in training crops).
        tta_flips: test-time augmentation: also predict the volume mirrored along each of these axes (array
            order) and average the probabilities (1 + len(tta_flips) passes).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else contextlib.nullcontext()
    total: list[torch.Tensor] | None = None
    for flip in (None, *tta_flips):
        dims = [] if flip is None else [2 + int(flip)]
        source = torch.flip(tensor, dims) if dims else tensor
        with autocast:
            outputs = sliding_window_inference(
                source,
                roi_size=patch_size,
                sw_batch_size=2,
                predictor=lambda x: tuple(o.float() for o in model(x)),
                overlap=overlap,
                mode="gaussian",
                cval=pad,
                sw_device=device,
                device=torch.device("cpu"),
            )
        probabilities = [torch.softmax(o.float(), dim=1) for o in outputs]
        if dims:
            probabilities = [torch.flip(p, dims) for p in probabilities]
        total = probabilities if total is None else [t + p for t, p in zip(total, probabilities)]
    assert total is not None
    main, half, quarter = ((t[0] / (1 + len(tta_flips))).numpy() for t in total)
    return HeadProbabilities(main, half, quarter)


class Predictor:
    """A trained model with its plan: whole volumes in, probabilities on the volume's own grid out.

    The one way the engine applies a model (validation, ranking, pseudo-labels, predictions, experiments): resample
    to the plan's spacing, normalise, sliding-window inference with Gaussian weighting and the training crops'
    padding rule, then (optionally) resample the probabilities back onto the source grid (linear, per class), so
    what Slicer shows keeps the source volume's exact geometry.

    Args:
        model: the network (eval mode).
        plan: the plan it was trained with.
        device: where windows run.
        amp: bfloat16 autocast on CUDA.
        tta: mirrored test-time augmentation along the plan's mirror axes (see :func:`predict_heads`).
    """

    def __init__(self, model: DeepSupervisedUNet3D, plan: Plan, device: torch.device, amp: bool = True,
                 tta: bool = False) -> None:
        self.model, self.plan, self.device, self.amp = model, plan, device, amp
        self.tta_flips = tuple(plan.mirror_axes) if tta else ()

    @classmethod
    def from_checkpoint(cls, path: Path, device: torch.device, amp: bool = True, tta: bool = False) -> Predictor:
        """Load a checkpoint written by :func:`save_checkpoint`."""
        model, plan = load_checkpoint(path, device)
        return cls(model, plan, device, amp, tta)

    def prepare(self, volume: Volume) -> tuple[np.ndarray, Geometry, float]:
        """The network's input: (normalised (k, j, i) array on the planned grid, that grid, padding value)."""
        planned = resample_volume(volume, self.plan.target_spacing, is_label=False)
        image = normalise(planned.array, self.plan)
        return image, planned.geometry, pad_value(float(image.min()))

    def predict_prepared(self, image: np.ndarray, pad: float) -> HeadProbabilities:
        """Probabilities of a :meth:`prepare`-d array, on the planned grid."""
        return predict_heads(self.model, image, self.plan.patch_size, self.device, self.amp, pad=pad,
                             tta_flips=self.tta_flips)

    def predict(self, volume: Volume, on_source_grid: bool = True) -> HeadProbabilities:
        """Probabilities of the three heads for a raw volume.

        Args:
            volume: raw intensities (k, j, i) with their geometry.
            on_source_grid: resample the probabilities back onto ``volume``'s grid (otherwise they stay on the
                planned grid, which is what ranking needs: M-DSC and confidence do not depend on the grid).
        """
        image, planned, pad = self.prepare(volume)
        heads = self.predict_prepared(image, pad)
        if not on_source_grid or planned == volume.geometry:
            return heads
        back = [
            np.stack([resample_to_grid(channel, planned, volume.geometry, is_label=False) for channel in probabilities])
            for probabilities in (heads.main, heads.half, heads.quarter)
        ]
        return HeadProbabilities(*back)

    def segment(self, volume: Volume) -> np.ndarray:
        """Class map (k, j, i) uint8 on ``volume``'s own grid (argmax of the main head)."""
        return self.predict(volume).main.argmax(axis=0).astype(np.uint8)
