"""Model loading and sliding-window inference returning the main and both side outputs.

Probabilities are softmax over classes, arrays (C, k, j, i) on the CPU, on the image's voxel grid.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from activeseg.config import Config
from activeseg.model.network import DeepSupervisedUNet3D, build_network

__all__ = ["HeadProbabilities", "select_device", "save_checkpoint", "load_checkpoint", "predict_heads", "enable_mc_dropout"]

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


def save_checkpoint(model: DeepSupervisedUNet3D, config: Config, path: Path) -> None:
    """Save weights plus what is needed to rebuild the network (plain tensors and numbers only)."""
    torch.save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "channels": list(config.network.channels),
            "num_classes": config.num_classes,
            "dropout": config.network.dropout,
        },
        path,
    )


def load_checkpoint(path: Path, device: torch.device) -> DeepSupervisedUNet3D:
    """Rebuild the network from :func:`save_checkpoint` output, in eval mode on ``device``."""
    checkpoint: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    model = build_network(checkpoint["num_classes"], tuple(checkpoint["channels"]), checkpoint["dropout"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()


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
    overlap: float = 0.25,
) -> HeadProbabilities:
    """Sliding-window inference over a whole normalised volume.

    Args:
        model: in eval mode (or MC-dropout mode, see :func:`enable_mc_dropout`).
        image: (k, j, i) float32, already intensity-normalised.
        patch_size: window (k, j, i), multiples of 8; smaller volumes are padded by MONAI.
        device: where the network runs; the volume stays on the CPU and windows are moved (large CTs fit).
        amp: bfloat16 autocast on CUDA.
        overlap: window overlap fraction; windows are blended with Gaussian weights.
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else contextlib.nullcontext()
    with autocast:
        outputs = sliding_window_inference(
            tensor,
            roi_size=patch_size,
            sw_batch_size=2,
            predictor=lambda x: tuple(o.float() for o in model(x)),
            overlap=overlap,
            mode="gaussian",
            sw_device=device,
            device=torch.device("cpu"),
        )
    main, half, quarter = (torch.softmax(o[0].float(), dim=0).numpy() for o in outputs)
    return HeadProbabilities(main, half, quarter)
