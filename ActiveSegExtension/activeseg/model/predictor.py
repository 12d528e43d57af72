"""Checkpoints and inference: the :class:`Predictor` applies a trained model and its plan to whole volumes.

Probabilities are softmax over classes, arrays (C, k, j, i) float32 on the CPU; sliding windows with Gaussian
weighting (MONAI ``sliding_window_inference``) give the main head and both side outputs.

Two ways to run the windows over a volume:

* :func:`predict_heads` returns the three heads' whole probability volumes (3 x C x voxels float32: 2.8 GB for
  a 512x512x300 CT with 3 classes, plus MONAI's blending buffers of the same size). Validation and the baselines
  use it.
* :func:`stream_heads` yields the same probabilities slab by slab along k (:class:`HeadSlab`) as soon as every
  window covering a slab has run, keeping only the band of slices the windows in flight cover (about one patch
  depth, whatever the volume's depth). Ranking folds each slab into running statistics (M-DSC counts,
  confidence, the main label map, the uncertainty map: :class:`activeseg.method.dsal.RankingAccumulator`), so
  its memory no longer grows with 3 x C x voxels. It reproduces MONAI's ``sliding_window_inference`` (the same
  window grid, Gaussian importance map, padding, batching and per-voxel order of accumulation, built from
  MONAI's own helpers): without test-time flips along k the slabs are bitwise equal to :func:`predict_heads`'s
  volumes (tested); a flip along k runs that pass's windows in reverse order, so its sums differ by float
  rounding only (tested to 1e-6).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices, get_valid_patch_size
from monai.inferers import sliding_window_inference
from monai.inferers.utils import _get_scan_interval
from monai.utils import fall_back_tuple

from activeseg.errors import ModelVersionError
from activeseg.io.volumes import Geometry, Volume
from activeseg.model.network import DeepSupervisedUNet3D, build_network
from activeseg.model.plan import Plan
from activeseg.model.preprocessing import normalise, pad_value, resample_to_grid, resample_volume

__all__ = [
    "HeadProbabilities", "HeadSlab", "select_device", "save_checkpoint", "load_checkpoint", "predict_heads",
    "stream_heads", "enable_mc_dropout", "Predictor",
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


@dataclass(frozen=True)
class HeadSlab:
    """The three heads' softmax probabilities over the slices ``start .. stop - 1`` (axis k) of a volume.

    Attributes:
        start: first slice (k index) of the slab in the volume.
        main, half, quarter: (C, n, j, i) float32 numpy, n = ``stop - start`` slices, j and i the volume's full
            extent; the same values :func:`predict_heads` gives for these slices.
    """

    start: int
    main: np.ndarray
    half: np.ndarray
    quarter: np.ndarray

    @property
    def stop(self) -> int:
        """One past the slab's last slice."""
        return self.start + int(self.main.shape[1])


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


def _axis_mapping(start: int, stop: int, low: int, size: int, flipped: bool) -> tuple[slice, slice]:
    """One axis of a window of the padded (and possibly flipped) volume MONAI slides over.

    Args:
        start, stop: the window along this axis, in padded coordinates.
        low: padding MONAI adds before the volume on this axis (``diff // 2``).
        size: the volume's extent on this axis.
        flipped: this pass mirrors the volume along this axis.

    Returns:
        (the part of the window that lies inside the volume, in window coordinates; the same voxels in the
        unflipped volume's coordinates, ascending: the window's part runs through them backwards when flipped).
    """
    inside_start, inside_stop = max(int(start), low), min(int(stop), low + size)
    window = slice(inside_start - start, inside_stop - start)
    if flipped:
        return window, slice(size - inside_stop + low, size - inside_start + low)
    return window, slice(inside_start - low, inside_stop - low)


#: Voxels per alignment block of :func:`_softmax_as_in_volume`: a multiple of every CPU vector width torch uses.
_VECTOR_ALIGNMENT = 64


def _softmax_as_in_volume(logits: torch.Tensor, offset: int, last: bool) -> torch.Tensor:
    """``torch.softmax(logits, dim=1)`` of a slab (1, C, n, j, i), bit for bit as in the whole volume's softmax.

    torch's CPU softmax over a non-last dimension runs vectorised over the voxels and computes the last
    ``voxels % vector width`` voxels of the tensor on a scalar path whose ``exp`` rounds differently (1e-8). A slab
    alone would put other voxels on that path. So the slab is placed in a buffer at its offset in the volume
    modulo :data:`_VECTOR_ALIGNMENT`; the buffer ends at a multiple of it, or, for the volume's last slab, exactly
    where the volume ends: the same voxels take the same path as in the whole volume.

    Args:
        logits: (1, C, n, j, i) float32 blended logits.
        offset: index of the slab's first voxel in the volume's flattened (k, j, i) order.
        last: the slab ends the volume.
    """
    channels, voxels = logits.shape[1], int(np.prod(logits.shape[2:]))
    lead = offset % _VECTOR_ALIGNMENT
    length = lead + voxels if last else -(-(lead + voxels) // _VECTOR_ALIGNMENT) * _VECTOR_ALIGNMENT
    if lead == 0 and length == voxels:
        return torch.softmax(logits, dim=1)
    buffer = torch.zeros((1, channels, length), dtype=logits.dtype)
    buffer[:, :, lead:lead + voxels] = logits.reshape(1, channels, voxels)
    return torch.softmax(buffer, dim=1)[:, :, lead:lead + voxels].reshape(logits.shape)


@torch.no_grad()
def stream_heads(
    model: DeepSupervisedUNet3D,
    image: np.ndarray,
    patch_size: tuple[int, int, int],
    device: torch.device,
    amp: bool = True,
    overlap: float = 0.5,
    pad: float = 0.0,
    tta_flips: Sequence[int] = (),
    sw_batch_size: int = 2,
) -> Iterator[HeadSlab]:
    """:func:`predict_heads`, slab by slab: the volume's probabilities without ever holding all of them.

    The windows run in MONAI's order (k outermost) and are blended with MONAI's Gaussian importance map into
    per-slice accumulators (logit sums and weight sums, for each head and each test-time pass); a slice is
    finished, turned into probabilities and yielded once no remaining window covers it, and then dropped. Memory:
    about (patch depth + window step along k) x j x i x (3 x C + 1) x 4 B per pass, independent of the volume's
    depth, plus the input.

    Arguments are those of :func:`predict_heads` (``sw_batch_size``: windows per network call, as there).

    Yields:
        :class:`HeadSlab` s in increasing k, together covering every slice once.
    """
    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    shape = tuple(int(s) for s in volume.shape)
    roi = tuple(int(r) for r in fall_back_tuple(patch_size, shape))
    padded = tuple(max(s, r) for s, r in zip(shape, roi))
    lows = tuple((p - s) // 2 for p, s in zip(padded, shape))  # MONAI pads diff // 2 before, the rest after
    windows = dense_patch_slices(padded, roi, _get_scan_interval(padded, roi, 3, (overlap,) * 3))
    weight = compute_importance_map(tuple(get_valid_patch_size(padded, roi)), mode="gaussian", sigma_scale=0.125,
                                    device=device, dtype=torch.float32)[None, None]
    weight_cpu = weight.to("cpu")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (amp and device.type == "cuda") else contextlib.nullcontext()
    passes = [frozenset()] + [frozenset({int(axis)}) for axis in tta_flips]
    batches = [list(range(first, min(first + sw_batch_size, len(windows)))) for first in range(0, len(windows), sw_batch_size)]

    # Per pass and window: (window part inside the volume, the same part in the volume's coordinates).
    mappings = [
        [tuple(zip(*(_axis_mapping(w[d].start, w[d].stop, lows[d], shape[d], d in flips) for d in range(3))))
         for w in windows]
        for flips in passes
    ]
    # A pass mirrored along k runs its windows backwards so that, like the others, it finishes slices in increasing k.
    orders = [list(reversed(batches)) if 0 in flips else batches for flips in passes]
    # first_open[p][t]: lowest slice still to be touched once pass p has run t batches (its remaining windows').
    first_open: list[list[int]] = []
    for p, order in enumerate(orders):
        lows_k = [min(mappings[p][index][1][0].start for index in batch) for batch in order]
        suffix = [shape[0]] * (len(order) + 1)
        for t in range(len(order) - 1, -1, -1):
            suffix[t] = min(lows_k[t], suffix[t + 1])
        first_open.append(suffix)

    sums: list[dict[int, list[torch.Tensor]]] = [{} for _ in passes]  # pass -> slice -> per head (C, j, i)
    counts: list[dict[int, torch.Tensor]] = [{} for _ in passes]  # pass -> slice -> (j, i) weight sums

    def run(p: int, batch: list[int]) -> None:
        flips = passes[p]
        dims = sorted(flips)
        pieces = []
        for index in batch:
            inside, source = mappings[p][index]
            piece = volume[source]
            if dims:
                piece = torch.flip(piece, dims)
            if any(s.stop - s.start != r for s, r in zip(inside, roi)):
                window = torch.full(roi, pad, dtype=torch.float32)
                window[inside] = piece
                piece = window
            pieces.append(piece[None, None])
        data = torch.cat(pieces).to(device)
        with autocast:
            outputs = tuple(o.float() for o in model(data))
            for output in outputs:
                output *= weight
        outputs = tuple(o.to("cpu") for o in outputs)
        window_weight = weight_cpu[0, 0]
        for position, index in enumerate(batch):
            inside, source = mappings[p][index]
            k_slices = range(source[0].start, source[0].stop)
            parts = [o[position][(slice(None), *inside)] for o in outputs]
            part_weight = window_weight[inside]
            if dims:
                parts = [torch.flip(part, [d + 1 for d in dims]) for part in parts]
                part_weight = torch.flip(part_weight, dims)
            for offset, k in enumerate(k_slices):
                if k not in counts[p]:
                    counts[p][k] = torch.zeros(shape[1:], dtype=torch.float32)
                    sums[p][k] = [torch.zeros((part.shape[0], *shape[1:]), dtype=torch.float32) for part in parts]
                counts[p][k][source[1:]] += part_weight[offset]
                for head, part in enumerate(parts):
                    sums[p][k][head][(slice(None), *source[1:])] += part[:, offset]

    plane = shape[1] * shape[2]

    def finish(start: int, stop: int) -> HeadSlab:
        total: list[torch.Tensor] | None = None
        for p in range(len(passes)):
            weights = torch.stack([counts[p].pop(k) for k in range(start, stop)])[None, None]
            per_slice = [sums[p].pop(k) for k in range(start, stop)]
            probabilities = []
            # Softmax in the pass's own (mirrored) orientation, where the whole-volume computation took it.
            dims = [2 + axis for axis in sorted(passes[p])]
            reverse_k = 0 in passes[p]
            offset = (shape[0] - stop if reverse_k else start) * plane
            last = start == 0 if reverse_k else stop == shape[0]
            for head in range(3):
                logits = torch.stack([heads[head] for heads in per_slice], dim=1)[None]
                for heads in per_slice:  # each slice's sums are in ``logits`` now: free them before the next head
                    heads[head] = None  # type: ignore[call-overload]
                logits /= weights
                if dims:
                    probabilities.append(torch.flip(_softmax_as_in_volume(torch.flip(logits, dims), offset, last), dims))
                else:
                    probabilities.append(_softmax_as_in_volume(logits, offset, last))
                del logits
            total = probabilities if total is None else [t + q for t, q in zip(total, probabilities)]
        assert total is not None
        if len(passes) > 1:
            total = [t / len(passes) for t in total]
        main, half, quarter = (t[0].numpy() for t in total)
        return HeadSlab(start, main, half, quarter)

    done = 0
    position = [0] * len(passes)
    while True:
        waiting = [p for p in range(len(passes)) if position[p] < len(orders[p])]
        if not waiting:
            break
        p = min(waiting, key=lambda q: (first_open[q][position[q]], q))
        run(p, orders[p][position[p]])
        position[p] += 1
        front = min(first_open[q][position[q]] for q in range(len(passes)))
        if front > done:
            yield finish(done, front)
            done = front
    if done < shape[0]:
        yield finish(done, shape[0])


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

    def stream_prepared(self, image: np.ndarray, pad: float) -> Iterator[HeadSlab]:
        """Probabilities of a :meth:`prepare`-d array slab by slab (:func:`stream_heads`), on the planned grid."""
        return stream_heads(self.model, image, self.plan.patch_size, self.device, self.amp, pad=pad,
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
