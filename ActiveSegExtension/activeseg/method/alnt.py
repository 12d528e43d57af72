"""ALNT: gradient re-weighting of pseudo-labelled ("noisy teacher") samples, exact and cheap.

Hussain et al., CMIG 102:102127 (2022), building on Ren et al. (2018), "Learning to Reweight Examples".
For a pseudo batch ``(x_p, y_p)`` of B samples and an expert batch ``(x_v, y_v)``:

* **RGS** (trustworthiness): ``w^S_i = max(0, <grad_theta l_i, grad_theta L_v>)`` over *all* parameters, with
  ``L_v`` the mean expert loss; normalised to sum 1 (all zero stays all zero).
* **RGM** (informativeness): ``w^M_i = mean |d l_i / d W_last|`` over the main head's 1x1x1 weight only;
  normalised to sum 1.
* **Mix**: ``w = lambda * w^S + (1 - lambda) * w^M``; **+AL**: ``w_i <- 0`` where ``w_i < 1/B``, no renormalising.
* **Update**: weights are constants; the objective is ``mean expert loss + sum_i w_i l_i`` (ActiveSeg default)
  or ``sum_i w_i l_i`` (the paper).

How it is computed (all exact up to floating point, verified against per-sample autograd in
``Testing/engine/test_alnt.py``):

* ``g = grad_theta L_v`` by one reverse pass (``torch.autograd.grad``; ``.grad`` is never touched).
* All B dot products ``<grad l_i, g>`` at once as *one* directional derivative of the per-sample loss
  vector ``l(theta)`` along ``g``: ``torch.func.jvp`` (forward-mode AD) of the functional model. This is
  exact because the network uses instance normalisation, which has no batch statistics: ``l_i`` depends
  only on sample i, so ``d l_i / d theta`` of the batched loss vector *is* the per-sample gradient. (With
  batch norm in training mode this would silently become a cross-sample quantity.) A central-difference
  fallback, ``(l(theta + h g) - l(theta - h g)) / 2h`` with two no-grad forwards, is available as
  ``method="central"``: ``h`` is chosen relative to ``|theta| / |g|`` (``eps^(1/3)`` of the parameter norm
  along ``g``, the step minimising truncation + round-off error), relative error ~1e-4 in float32.
* The tangent is rescaled to ``g * |theta| / |g|`` and the result scaled back: the jvp is linear in the
  tangent, and raw gradients (~1e-6 per element) otherwise make forward-mode intermediates denormal,
  which measured 10-40x slower on CPU.
* RGM in closed form, no per-sample backward: the main head is ``z = W d0 + b`` so
  ``d l_i / d W[c, f] = sum_v (d l_i / d z[i, c, v]) * d0[i, f, v]``. ``d l / d z`` for all samples comes from
  one ``autograd.grad`` of ``sum_i l_i`` w.r.t. the (detached) main logits (samples are independent, so
  the gradient of the sum splits per sample), then an einsum against the cached features ``d0``.
  No network backward is needed: the logits and ``d0`` come out of the RGS jvp as primal values.

Deviations from the paper / the original code, on purpose:

* ``l_i`` is DSAL's deep-supervision loss (0.6 main + 0.3 quarter + 0.1 half head, each voxel-mean CE + soft
  Dice), :func:`activeseg.model.loss.per_sample_deep_supervision_loss`, i.e. the exact loss training minimises,
  rather than the single-output CE + Dice of the paper's plain U-Net. RGS therefore measures agreement
  with the expert gradient of the loss actually optimised. RGM still uses only the main head's weight
  (``model.head``); the auxiliary heads feed ``l_i`` but their weights are not ``W_last``.
* RGS is computed exactly by a jvp instead of Ren's epsilon-perturbation + double backward (which gives
  the same quantity up to the learning-rate scale that the normalisation removes) at a fraction of the cost.
* RGM is per sample (the original accumulated ``.grad`` across samples, making it cumulative).
* Weights are computed with dropout switched off (deterministic network), then the modules' modes are
  restored; instance norm (no running statistics) behaves identically in both modes.
* The expert batch also trains the model by default (``objective="expert+weighted"``), see ALGORITHMS.md.
* ``settings.enabled = False`` gives uniform weights ``1/B`` (pseudo-labels weighted like experts).
* In the default objective the pseudo term is scaled by the pseudo-labelled share of the labelled volumes
  (:func:`pseudo_share`, ``alnt.scale_by_share``); the paper's objective has no expert term to balance.

Edge case of +AL rectification: with ``sum(w) = 1`` the largest weight is at least ``1/B`` (pigeonhole), so
at least one sample survives. That guarantee fails when one component is all zero (e.g. no pseudo sample
has a positive dot product with the expert gradient, so ``w^S = 0``) and ``0 < lambda < 1``: then
``sum(w) = 1 - lambda < 1`` (or ``lambda``) and *every* sample can fall below ``1/B`` and be dropped; the
pseudo batch then contributes nothing to the step. This is the paper's rule applied literally; it is
reported in ``stats["fraction_dropped"]``.

Data-parallel (DDP) steps stay exact: given ``group`` (:class:`activeseg.model.distributed.DataParallel`), each rank
holds its share of the expert and pseudo batches, and the step equals one process on the union of them (the global
batch, rank order):

* ``g`` is the all-reduced (averaged) expert gradient: the gradient of the global mean expert loss when the ranks'
  expert batches are equally large;
* each rank takes the dot products of its own pseudo samples with that ``g``; the dot products and RGM values are
  gathered, so normalisation, mixing and the ``1/B`` rectification run over the global B and every rank holds the
  same weights (:attr:`AlntResult.global_weights`), of which it uses its own rows;
* the pseudo term is ``world_size * s * sum_(own i) w_i l_i``; its gradient is averaged over the ranks (a second
  all-reduce, since the weights depend on ``g``), so the update is ``g + s * sum_(all i) w_i grad l_i``, as in one
  process. These steps use ``torch.autograd.grad`` and explicit all-reduces, not DDP's backward hooks
  (``Testing/engine/test_distributed_alnt.py`` compares 2 gloo processes with one).

Two entry points: :func:`compute_alnt_weights` (weights only; the caller then runs its own training
forward/backward) and :func:`alnt_backward` (a fused training step that reuses the expert backward of
the step itself as ``g``, saving one expert forward+backward; the caller then calls ``optimizer.step()``).

Length (~550 lines): one method, most of it the derivations and exactness notes each function needs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, jvp

from activeseg.config import AlntConfig
from activeseg.errors import ConfigError
from activeseg.model.distributed import DataParallel
from activeseg.model.loss import DEEP_SUPERVISION_WEIGHTS, DeepSupervisionLoss, per_sample_dice_ce
from activeseg.model.network import DeepSupervisedUNet3D, DeepSupervisionOutput

# The default loss when a caller passes none: no class weights.
_UNWEIGHTED = DeepSupervisionLoss()

__all__ = [
    "AlntResult",
    "AlntStepResult",
    "alnt_backward",
    "alnt_objective",
    "compute_alnt_weights",
    "directional_derivatives",
    "expert_gradient",
    "mix_and_rectify",
    "normalise_weights",
    "pseudo_share",
    "rgm_from_logit_gradients",
]

logger = logging.getLogger(__name__)

OBJECTIVES = ("expert+weighted", "weighted")
METHODS = ("jvp", "central")


@dataclass
class AlntResult:
    """ALNT weights of one pseudo batch.

    Attributes:
        weights: (B,) final mixed (and, with ``rectify``, rectified) weights; detached, on the model's device.
            Data-parallel: this rank's rows of :attr:`global_weights`.
        rgs: (B,) normalised w^S (sum 1, or all zero); data-parallel: this rank's rows (the global batch sums to 1).
        rgm: (B,) normalised w^M (sum 1, or all zero); likewise.
        stats: scalars for logging: ``mean_weight``, ``sum_weight``, ``fraction_dropped`` (share of samples
            with final weight 0), ``rgs_rgm_correlation`` (Pearson; 0.0 when undefined), ``rgs_positive_fraction``
            (share of raw dot products > 0), ``expert_loss`` (mean L_v), ``pseudo_loss`` (mean l_i); over the global
            batch when data-parallel.
        global_weights: data-parallel only: (world_size * B,) the weights of every rank's samples in rank order
            (the same on every rank); None in one process.
    """

    weights: torch.Tensor
    rgs: torch.Tensor
    rgm: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)
    global_weights: torch.Tensor | None = None


@dataclass
class AlntStepResult:
    """What :func:`alnt_backward` did.

    Attributes:
        alnt: the weights and their statistics.
        loss: scalar objective value (detached) whose gradient was accumulated into ``.grad``.
        expert_losses: (B_v,) detached per-sample expert losses.
        pseudo_losses: (B,) detached per-sample pseudo losses.
        fused: True when the expert backward of the step was reused as ``g`` (no active dropout).
    """

    alnt: AlntResult
    loss: torch.Tensor
    expert_losses: torch.Tensor
    pseudo_losses: torch.Tensor
    fused: bool


class _FeaturesAndHeads(nn.Module):
    """Wraps the network so one functional call returns the head outputs *and* the penultimate ``d0``.

    ``torch.func.functional_call`` only runs ``forward``; RGM needs ``d0`` from the same pass.
    """

    def __init__(self, model: DeepSupervisedUNet3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[DeepSupervisionOutput, torch.Tensor]:
        d0, d1, d2 = self.model.features(x)
        return self.model.heads(d0, d1, d2), d0


def _validate(settings: AlntConfig) -> None:
    if not 0.0 <= settings.lambda_ <= 1.0:
        raise ConfigError(f"alnt.lambda_ must lie in [0, 1], got {settings.lambda_}")
    if settings.objective not in OBJECTIVES:
        raise ConfigError(f"alnt.objective must be one of {OBJECTIVES}, got {settings.objective!r}")


def _trainable(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def _has_active_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0 for m in model.modules())


@contextmanager
def _dropout_off(model: nn.Module) -> Iterator[None]:
    """Switch only dropout modules to eval (deterministic) and restore each one's mode afterwards.

    Only dropout is touched, so normalisation layers keep whatever mode the caller chose.
    """
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    modes = [m.training for m in dropouts]
    try:
        for m in dropouts:
            m.training = False
        yield
    finally:
        for m, mode in zip(dropouts, modes):
            m.training = mode


def _denormals_flushed() -> bool:
    """Whether this thread currently flushes denormals (torch has a setter but no getter)."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    return bool((tiny * 1.0 == 0).item())


@contextmanager
def _flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on CPU for the jvp, restoring the previous setting.

    A guard next to the tangent rescaling (module docstring): unscaled gradient tangents measured
    10-40x slower on CPU from denormal intermediates. Values below 1.2e-38 do not affect the weights.
    """
    previous = _denormals_flushed()
    supported = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if supported and not previous:
            torch.set_flush_denormal(False)


def normalise_weights(values: torch.Tensor) -> torch.Tensor:
    """Clamp at zero and scale to sum 1; an all-zero (or non-finite-sum) vector stays all zero.

    Args:
        values: (B,) raw scores.

    Returns:
        (B,) non-negative weights summing to 1, or zeros.
    """
    clamped = values.clamp(min=0)
    total = clamped.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.zeros_like(values)
    return clamped / total


def mix_and_rectify(rgs: torch.Tensor, rgm: torch.Tensor, settings: AlntConfig) -> torch.Tensor:
    """``w = lambda * rgs + (1 - lambda) * rgm``, then (``rectify``) ``w_i <- 0`` where ``w_i < 1/B``.

    No renormalisation after rectification (the paper's "+AL"). When one component is all zero and
    ``0 < lambda < 1`` the mix sums to less than 1 and every sample can be dropped (module docstring).

    Args:
        rgs: (B,) normalised w^S.
        rgm: (B,) normalised w^M.
        settings: ``lambda_`` and ``rectify`` are used.

    Returns:
        (B,) weights.
    """
    mixed = settings.lambda_ * rgs + (1.0 - settings.lambda_) * rgm
    if settings.rectify:
        mixed = torch.where(mixed < 1.0 / mixed.numel(), torch.zeros_like(mixed), mixed)
    return mixed


def rgm_from_logit_gradients(logit_gradients: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per-sample ``mean |d l_i / d W_last|`` from ``d l / d z_main`` and the head's input ``d0``.

    Args:
        logit_gradients: (B, C, D, H, W) gradient of ``sum_i l_i`` w.r.t. the main logits (row i is
            ``d l_i / d z_i`` because samples are independent).
        features: (B, F, D, H, W) penultimate features ``d0``.

    Returns:
        (B,) mean absolute gradient over the (C, F) weight entries of the 1x1x1 head.
    """
    per_weight = torch.einsum("bcv,bfv->bcf", logit_gradients.flatten(2), features.flatten(2))
    return per_weight.abs().flatten(1).mean(dim=1)


def expert_gradient(
    model: DeepSupervisedUNet3D, expert_images: torch.Tensor, expert_labels: torch.Tensor,
    loss: DeepSupervisionLoss | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-sample expert losses and ``g = grad_theta mean(l_v)`` over the trainable parameters.

    Uses ``torch.autograd.grad`` so ``.grad`` is untouched. Runs in the model's current mode.

    Args:
        model: the network.
        expert_images: (B_v, 1, D, H, W) float.
        expert_labels: (B_v, 1, D, H, W) integer.

    Returns:
        ``(losses, g)``: detached (B_v,) losses and one gradient tensor per trainable parameter, in
        ``model.named_parameters()`` order.
    """
    _, params = _trainable(model)
    losses = (loss or _UNWEIGHTED).per_sample(model(expert_images), expert_labels)
    grads = torch.autograd.grad(losses.mean(), params, allow_unused=True)
    return losses.detach(), [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads)]


def _global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def directional_derivatives(
    model: DeepSupervisedUNet3D,
    images: torch.Tensor,
    labels: torch.Tensor,
    direction: Sequence[torch.Tensor],
    method: str = "jvp",
    loss: DeepSupervisionLoss | None = None,
) -> tuple[torch.Tensor, torch.Tensor, DeepSupervisionOutput, torch.Tensor]:
    """``<grad_theta l_i, direction>`` for every sample, plus the pass's losses, logits and ``d0``.

    Exact per-sample dot products from one batched pass because instance norm keeps samples
    independent (module docstring). Runs without building an autograd graph and in the model's current
    mode (callers switch dropout off).

    Args:
        model: the network.
        images: (B, 1, D, H, W) float.
        labels: (B, 1, D, H, W) integer.
        direction: one tensor per trainable parameter (``named_parameters`` order), e.g. ``g``.
        method: ``"jvp"`` (forward-mode AD, exact) or ``"central"`` (two no-grad forwards).

    Returns:
        ``(dots, losses, outputs, d0)``: (B,) dot products, (B,) losses at theta, the head logits at theta
        and the main head's input features (B, F, D, H, W); all detached.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    names, params = _trainable(model)
    wrapper = _FeaturesAndHeads(model)
    primals = {f"model.{n}": p.detach() for n, p in zip(names, params)}
    g_norm = _global_norm(direction)
    if not torch.isfinite(g_norm) or g_norm == 0:
        with torch.no_grad():
            outputs, d0 = functional_call(wrapper, primals, (images,))
            losses = (loss or _UNWEIGHTED).per_sample(outputs, labels)
        return torch.zeros_like(losses), losses, outputs, d0
    # Tangent of parameter-like magnitude: avoids denormal intermediates; the result is scaled back.
    theta_norm = _global_norm(list(primals.values()))
    scale = (theta_norm / g_norm) if theta_norm > 0 else 1.0 / g_norm
    tangents = {f"model.{n}": d.detach() * scale for n, d in zip(names, direction)}

    def losses_of(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[DeepSupervisionOutput, torch.Tensor]]:
        outputs, d0 = functional_call(wrapper, p, (images,))
        return (loss or _UNWEIGHTED).per_sample(outputs, labels), (outputs, d0)

    with torch.no_grad(), _flush_denormals():
        if method == "jvp":
            losses, dots, (outputs, d0) = jvp(losses_of, (primals,), (tangents,), has_aux=True)
        else:
            # h relative to the scaled tangent (|tangent| = |theta|). LeakyReLU kinks and float32 voxel
            # sums, not the O(h^2) term, limit the accuracy: measured best at ~1e-3 (float32) / 1e-5 (float64).
            h = 1e-5 if images.dtype == torch.float64 else 1e-3
            losses, (outputs, d0) = losses_of(primals)
            plus, _ = losses_of({k: v + h * tangents[k] for k, v in primals.items()})
            minus, _ = losses_of({k: v - h * tangents[k] for k, v in primals.items()})
            dots = (plus - minus) / (2.0 * h)
    return dots / scale, losses, outputs, d0


def _logit_gradients(
    outputs: DeepSupervisionOutput, labels: torch.Tensor, loss: DeepSupervisionLoss | None = None
) -> torch.Tensor:
    """``d (sum_i l_i) / d z_main`` by re-evaluating only the loss on detached logits (no network pass).

    Only the main head's term of the deep-supervision loss depends on ``z_main`` (the auxiliary heads
    have their own 1x1 convolutions on other features), so only that term is differentiated.
    """
    main = outputs.main.detach().requires_grad_(True)
    with torch.enable_grad():
        losses = DEEP_SUPERVISION_WEIGHTS["main"] * per_sample_dice_ce(main, labels, (loss or _UNWEIGHTED).class_weights)
        (grad,) = torch.autograd.grad(losses.sum(), main)
    return grad


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() < 2:
        return 0.0
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    denominator = torch.sqrt((a * a).sum() * (b * b).sum())
    if not torch.isfinite(denominator) or denominator <= 0:
        return 0.0
    value = float((a * b).sum() / denominator)
    return value if math.isfinite(value) else 0.0


def _weights_from_pass(
    dots: torch.Tensor,
    outputs: DeepSupervisionOutput,
    d0: torch.Tensor,
    pseudo_labels: torch.Tensor,
    settings: AlntConfig,
    loss: DeepSupervisionLoss | None = None,
    group: DataParallel | None = None,
    pseudo_losses: torch.Tensor | None = None,
) -> AlntResult:
    """Weights from one pass's dot products, logits and features; with ``group``, normalised over the global batch
    (dot products, RGM values and ``pseudo_losses`` gathered from every rank in one all-gather)."""
    raw_rgm = rgm_from_logit_gradients(_logit_gradients(outputs, pseudo_labels, loss), d0)
    losses = pseudo_losses if pseudo_losses is not None else torch.zeros_like(dots)
    rows = dots.numel()
    if group is not None:
        dots, raw_rgm, losses = group.gather(torch.stack([dots, raw_rgm.to(dots.dtype), losses.to(dots.dtype)], dim=1)).unbind(1)
    rgs = normalise_weights(dots)
    rgm = normalise_weights(raw_rgm)
    weights = mix_and_rectify(rgs, rgm, settings).detach()
    stats = {
        "mean_weight": float(weights.mean()),
        "sum_weight": float(weights.sum()),
        "fraction_dropped": float((weights == 0).double().mean()),
        "rgs_rgm_correlation": _pearson(rgs, rgm),
        "rgs_positive_fraction": float((dots > 0).double().mean()),
    }
    if pseudo_losses is not None:
        stats["pseudo_loss"] = float(losses.mean())
    if group is None:
        return AlntResult(weights=weights, rgs=rgs.detach(), rgm=rgm.detach(), stats=stats)
    own = group.local_rows(rows)
    return AlntResult(weights=weights[own], rgs=rgs[own].detach(), rgm=rgm[own].detach(), stats=stats,
                      global_weights=weights)


def _uniform(batch: int, reference: torch.Tensor, group: DataParallel | None = None) -> AlntResult:
    """``1/B`` for every sample, B the global batch (``batch`` per rank)."""
    total = batch * (group.world_size if group is not None else 1)
    weights = torch.full((batch,), 1.0 / total, dtype=reference.dtype, device=reference.device)
    stats = {"mean_weight": 1.0 / total, "sum_weight": 1.0, "fraction_dropped": 0.0, "rgs_rgm_correlation": 0.0}
    everyone = torch.full((total,), 1.0 / total, dtype=reference.dtype, device=reference.device) if group else None
    return AlntResult(weights=weights, rgs=weights.clone(), rgm=weights.clone(), stats=stats, global_weights=everyone)


def _reference_gradient(
    model: DeepSupervisedUNet3D, expert_images: torch.Tensor, expert_labels: torch.Tensor,
    loss: DeepSupervisionLoss | None, group: DataParallel | None,
) -> tuple[torch.Tensor, float, list[torch.Tensor]]:
    """:func:`expert_gradient`, with ``group`` averaged over the ranks (``g`` and the mean loss in one all-reduce).

    Returns:
        ``(losses, mean_loss, g)``: this rank's detached (B_v,) losses, the mean expert loss of the global batch,
        and ``g`` of the global batch.
    """
    losses, g = expert_gradient(model, expert_images, expert_labels, loss)
    mean = losses.mean().reshape(1).clone()
    if group is not None:
        group.mean_([*g, mean])
    return losses, float(mean[0]), g


def _accumulate_grad(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    """``p.grad += grad`` for each parameter (``p.grad = grad`` where it is None), as ``backward`` would."""
    for p, grad in zip(params, grads):
        if p.grad is None:
            p.grad = grad.detach().clone()
        else:
            p.grad.add_(grad)


def _data_parallel_backward(objective: torch.Tensor, params: Sequence[torch.Tensor], group: DataParallel) -> torch.Tensor:
    """Average ``grad objective`` (and the objective's value) over the ranks and add it to ``.grad``.

    Returns:
        The objective's mean over the ranks (detached scalar).
    """
    grads = torch.autograd.grad(objective, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    value = objective.detach().reshape(1).to(grads[0].dtype).clone()
    group.mean_([*grads, value])
    _accumulate_grad(params, grads)
    return value[0]


def compute_alnt_weights(
    model: DeepSupervisedUNet3D,
    expert_images: torch.Tensor,
    expert_labels: torch.Tensor,
    pseudo_images: torch.Tensor,
    pseudo_labels: torch.Tensor,
    settings: AlntConfig,
    method: str = "jvp",
    loss: DeepSupervisionLoss | None = None,
    group: DataParallel | None = None,
) -> AlntResult:
    """ALNT weights for a pseudo batch given an expert batch, at the model's current parameters.

    Cost: one expert forward+backward (for ``g``) and one pseudo jvp (~3 forwards); no per-sample
    backward. Parameters, their ``.grad`` and the modules' train/eval modes are left unchanged; dropout
    is off while computing. With ``settings.enabled = False`` the weights are uniform ``1/B``.

    Args:
        model: the network (:class:`activeseg.model.network.DeepSupervisedUNet3D`; instance norm, so the batched
            per-sample losses and gradients are exactly the single-sample ones).
        expert_images: (B_v, 1, D, H, W) float, the expert "meta" batch.
        expert_labels: (B_v, 1, D, H, W) integer.
        pseudo_images: (B, 1, D, H, W) float.
        pseudo_labels: (B, 1, D, H, W) integer.
        settings: ALNT settings (``lambda_``, ``rectify``, ``enabled``).
        method: RGS directional derivative, ``"jvp"`` (exact, default) or ``"central"``.
        group: data-parallel ranks (module docstring): the batches are this rank's share; the weights are those of
            the global batch, this rank's rows in ``weights`` (all in ``global_weights``). Every rank must call.

    Returns:
        :class:`AlntResult`; ``weights`` is detached and on the model's device.
    """
    _validate(settings)
    if not settings.enabled:
        return _uniform(pseudo_images.shape[0], pseudo_images, group)
    with _dropout_off(model):
        _, expert_mean, g = _reference_gradient(model, expert_images, expert_labels, loss, group)
        dots, pseudo_losses, outputs, d0 = directional_derivatives(model, pseudo_images, pseudo_labels, g, method, loss)
    result = _weights_from_pass(dots, outputs, d0, pseudo_labels, settings, loss, group, pseudo_losses)
    result.stats["expert_loss"] = expert_mean
    return result


def alnt_objective(
    expert_losses: torch.Tensor, pseudo_losses: torch.Tensor, weights: torch.Tensor, settings: AlntConfig,
    pseudo_scale: float = 1.0, world_size: int = 1,
) -> torch.Tensor:
    """The training objective with ALNT weights held constant.

    Args:
        expert_losses: (B_v,) per-sample expert losses (with graph).
        pseudo_losses: (B,) per-sample pseudo losses (with graph).
        weights: (B,) ALNT weights (detached here again, so no gradient can flow through them).
        settings: ``objective``: ``"expert+weighted"`` = ``mean(expert) + s * sum(w * pseudo)``; ``"weighted"``
            = ``sum(w * pseudo)`` (the paper: experts only shape the weights).
        pseudo_scale: ``s``, the pseudo term's share in the ``"expert+weighted"`` objective (see
            :func:`pseudo_share`); 1 is the plain sum.
        world_size: data-parallel ranks: the weighted sum over this rank's samples is multiplied by it, so that the
            ranks' objectives averaged (as their gradients are) give the global batch's objective.

    Returns:
        Scalar loss.
    """
    _validate(settings)
    weighted = world_size * (weights.detach().to(pseudo_losses.dtype) * pseudo_losses).sum()
    if settings.objective == "weighted":
        return weighted
    return expert_losses.mean() + pseudo_scale * weighted


def pseudo_share(n_pseudo: int, n_expert: int, settings: AlntConfig) -> float:
    """The pseudo term's scale ``s`` in the ``"expert+weighted"`` objective.

    With ``settings.scale_by_share`` it is ``n_pseudo / (n_pseudo + n_expert)`` (volumes, not crops): each
    labelled volume then weighs about the same, and ALNT decides how that share is spread over the pseudo
    batch. Without it (1.0), the pseudo term, whose weights sum to at most 1, weighs as much as *all*
    expert labels together: measured on hippocampus MRI, one pseudo-labelled volume then outweighed each
    expert volume ~10x and kept a one-class model stuck (Testing/benchmarks/RESULTS.md).
    """
    if not settings.scale_by_share or n_pseudo + n_expert == 0:
        return 1.0
    return n_pseudo / (n_pseudo + n_expert)


def alnt_backward(
    model: DeepSupervisedUNet3D,
    expert_images: torch.Tensor,
    expert_labels: torch.Tensor,
    pseudo_images: torch.Tensor,
    pseudo_labels: torch.Tensor,
    settings: AlntConfig,
    method: str = "jvp",
    pseudo_scale: float = 1.0,
    loss: DeepSupervisionLoss | None = None,
    group: DataParallel | None = None,
) -> AlntStepResult:
    """Fused ALNT training step up to ``optimizer.step()``: accumulates the objective's gradient into ``.grad``.

    Like ``loss.backward()``: call ``optimizer.zero_grad()`` before and ``optimizer.step()`` after. When
    the model has no active dropout (eval mode, or dropout p = 0), the expert forward+backward that
    trains the model is the same pass that gives ``g`` (identical quantity), so ALNT costs one pseudo jvp
    on top of a plain step split into expert and pseudo passes. With active dropout, ``g`` and the weights
    must come from the deterministic network while training keeps dropout, so the step falls back to
    :func:`compute_alnt_weights` followed by an ordinary training pass (one extra expert forward+backward).

    Args:
        model: the network.
        expert_images: (B_v, 1, D, H, W) float.
        expert_labels: (B_v, 1, D, H, W) integer.
        pseudo_images: (B, 1, D, H, W) float.
        pseudo_labels: (B, 1, D, H, W) integer.
        settings: ALNT settings.
        method: ``"jvp"`` (exact, default) or ``"central"``.
        pseudo_scale: the pseudo term's share (:func:`pseudo_share`), used by ``"expert+weighted"``.
        loss: the round's loss object (with its class weights); default: unweighted.
        group: data-parallel ranks (module docstring): ``model`` is the bare network (not the DDP wrapper), the
            batches are this rank's share, and the gradient accumulated into ``.grad`` (the same on every rank) and
            the returned ``loss`` are those of the global batch. Every rank must call.

    Returns:
        :class:`AlntStepResult` (``expert_losses`` and ``pseudo_losses``: this rank's samples).
    """
    _validate(settings)
    _, params = _trainable(model)
    scale = pseudo_scale if settings.objective == "expert+weighted" else 1.0
    ranks = group.world_size if group is not None else 1
    fused = settings.enabled and not _has_active_dropout(model)
    if not fused:
        result = compute_alnt_weights(
            model, expert_images, expert_labels, pseudo_images, pseudo_labels, settings, method, loss, group
        )
        expert_losses = (loss or _UNWEIGHTED).per_sample(model(expert_images), expert_labels)
        pseudo_losses = (loss or _UNWEIGHTED).per_sample(model(pseudo_images), pseudo_labels)
        objective = alnt_objective(expert_losses, pseudo_losses, result.weights, settings, pseudo_scale, ranks)
        if group is None:
            objective.backward()
            value = objective.detach()
        else:
            value = _data_parallel_backward(objective, params, group)
        return AlntStepResult(result, value, expert_losses.detach(), pseudo_losses.detach(), fused=False)

    expert_losses, expert_mean, g = _reference_gradient(model, expert_images, expert_labels, loss, group)
    if settings.objective == "expert+weighted":
        # The expert term's gradient is exactly g: accumulate it instead of a second backward.
        _accumulate_grad(params, g)
    dots, pass_losses, outputs, d0 = directional_derivatives(model, pseudo_images, pseudo_labels, g, method, loss)
    del g
    result = _weights_from_pass(dots, outputs, d0, pseudo_labels, settings, loss, group, pass_losses)
    del outputs, d0
    pseudo_losses = (loss or _UNWEIGHTED).per_sample(model(pseudo_images), pseudo_labels)
    weighted = ranks * scale * (result.weights.to(pseudo_losses.dtype) * pseudo_losses).sum()
    if result.stats["sum_weight"] <= 0:  # the same decision on every rank (global weights)
        weighted_value = weighted.detach()
    elif group is None:
        weighted.backward()
        weighted_value = weighted.detach()
    else:
        weighted_value = _data_parallel_backward(weighted, params, group)
    total = weighted_value + (expert_mean if settings.objective == "expert+weighted" else 0.0)
    result.stats["expert_loss"] = expert_mean
    return AlntStepResult(result, total, expert_losses, pseudo_losses.detach(), fused=True)
