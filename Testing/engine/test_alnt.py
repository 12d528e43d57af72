"""ALNT re-weighting: exactness against per-sample autograd, rectification edge cases, constant weights,
state restoration, the fused training step, and behaviour on corrupted pseudo-labels."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch.func import functional_call

from activeseg.method.alnt import (
    alnt_backward,
    alnt_objective,
    compute_alnt_weights,
    directional_derivatives,
    expert_gradient,
    mix_and_rectify,
    normalise_weights,
)
from activeseg.config import AlntConfig, IntensityConfig
from activeseg.model.loss import per_sample_deep_supervision_loss
from activeseg.model.network import DeepSupervisedUNet3D, build_network
from activeseg.experiments.phantoms import make_phantom
from activeseg.model.plan import Plan
from activeseg.model.preprocessing import normalise

B = 3
SHAPE = (16, 16, 16)


def _tiny(dtype: torch.dtype = torch.float32, dropout: float = 0.0, seed: int = 0) -> DeepSupervisedUNet3D:
    torch.manual_seed(seed)
    return build_network(3, (4, 8, 8, 16), dropout).to(dtype)


def _batch(seed: int, dtype: torch.dtype = torch.float32, n: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn((n, 1, *SHAPE), generator=generator, dtype=dtype)
    # Blocky labels correlated with intensity, so gradients are not pure noise.
    labels = (images > 0.3).long() + (images > 1.2).long()
    return images, labels


def _per_sample_grads(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[list[torch.Tensor]]:
    """Reference: one autograd backward per single-sample batch."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        list(torch.autograd.grad(per_sample_deep_supervision_loss(model(images[i : i + 1]), labels[i : i + 1]).sum(), params))
        for i in range(images.shape[0])
    ]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _reference_rgs_rgm(model, expert, pseudo) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw dot products, normalised w^S and normalised w^M from explicit per-sample gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(per_sample_deep_supervision_loss(model(expert[0]), expert[1]).mean(), params)
    per_sample = _per_sample_grads(model, *pseudo)
    dots = torch.stack([_dot(gi, list(g)) for gi in per_sample])
    head_index = [i for i, p in enumerate(params) if p is model.head.weight][0]
    rgm = torch.stack([gi[head_index].abs().mean() for gi in per_sample])
    return dots, normalise_weights(dots), normalise_weights(rgm)


def test_instance_norm_makes_batched_losses_per_sample() -> None:
    """The premise of the batched RGS: sample i's loss does not depend on the other samples."""
    model = _tiny(torch.float64)
    images, labels = _batch(1, torch.float64)
    batched = per_sample_deep_supervision_loss(model(images), labels)
    single = torch.cat([per_sample_deep_supervision_loss(model(images[i : i + 1]), labels[i : i + 1]) for i in range(B)])
    torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-4), (torch.float32, 1e-3)])
def test_rgs_jvp_equals_per_sample_gradient_dot_products(dtype: torch.dtype, tolerance: float) -> None:
    model = _tiny(dtype)
    expert, pseudo = _batch(1, dtype), _batch(2, dtype)
    reference, _, _ = _reference_rgs_rgm(model, expert, pseudo)
    _, g = expert_gradient(model, *expert)
    dots, _, _, _ = directional_derivatives(model, *pseudo, g, method="jvp")
    relative = float((dots - reference).abs().max() / reference.abs().max())
    assert relative <= tolerance, (dots, reference)


def test_rgs_central_difference_fallback_is_close() -> None:
    """The optional fallback: approximate (LeakyReLU kinks limit it), but the right values."""
    model = _tiny(torch.float64)
    expert, pseudo = _batch(1, torch.float64), _batch(2, torch.float64)
    reference, _, _ = _reference_rgs_rgm(model, expert, pseudo)
    _, g = expert_gradient(model, *expert)
    dots, _, _, _ = directional_derivatives(model, *pseudo, g, method="central")
    assert float((dots - reference).abs().max() / reference.abs().max()) <= 2e-2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compute_alnt_weights_matches_explicit_per_sample_gradients(dtype: torch.dtype) -> None:
    model = _tiny(dtype)
    expert, pseudo = _batch(3, dtype), _batch(4, dtype)
    _, rgs_ref, rgm_ref = _reference_rgs_rgm(model, expert, pseudo)
    settings = AlntConfig(lambda_=0.5, rectify=False)
    result = compute_alnt_weights(model, *expert, *pseudo, settings)
    tolerance = 1e-6 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(result.rgs, rgs_ref, rtol=tolerance, atol=tolerance)
    # RGM: closed form (einsum of dl/dz and d0) vs per-sample autograd on the head's weight.
    torch.testing.assert_close(result.rgm, rgm_ref, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(result.weights, 0.5 * rgs_ref + 0.5 * rgm_ref, rtol=tolerance, atol=tolerance)
    assert result.weights.shape == (B,) and result.weights.device == next(model.parameters()).device
    for key in ("mean_weight", "fraction_dropped", "rgs_rgm_correlation", "sum_weight"):
        assert np.isfinite(result.stats[key])


def test_rgs_equals_ren_epsilon_trick_double_backward() -> None:
    """Ren et al.'s original (perturb by eps, one SGD look-ahead, differentiate the expert loss w.r.t. eps)
    gives the same normalised weights: -dL_v(theta - a*grad(sum eps_i l_i))/d eps_i = a <grad l_i, grad L_v>."""
    model = _tiny(torch.float64)
    expert, pseudo = _batch(5, torch.float64), _batch(6, torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    eps = torch.zeros(B, dtype=torch.float64, requires_grad=True)
    pseudo_losses = per_sample_deep_supervision_loss(model(pseudo[0]), pseudo[1])
    grads = torch.autograd.grad((eps * pseudo_losses).sum(), params, create_graph=True)
    look_ahead = {n: p - 1e-3 * g for n, p, g in zip(names, params, grads)}
    expert_loss = per_sample_deep_supervision_loss(functional_call(model, look_ahead, (expert[0],)), expert[1]).mean()
    (eps_grad,) = torch.autograd.grad(expert_loss, eps)
    ren = normalise_weights(-eps_grad)
    result = compute_alnt_weights(model, *expert, *pseudo, AlntConfig(lambda_=1.0, rectify=False))
    # Not bit-identical: Ren evaluates grad L_v at the look-ahead point (O(a) difference).
    torch.testing.assert_close(result.rgs, ren, rtol=1e-3, atol=1e-3)


def test_rectification_keeps_at_least_one_when_weights_sum_to_one() -> None:
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 2, 3, 4, 8):
        for _ in range(50):
            rgs = normalise_weights(torch.rand(batch, generator=generator) ** 4)
            rgm = normalise_weights(torch.rand(batch, generator=generator))
            for lambda_ in (0.0, 0.3, 0.5, 1.0):
                weights = mix_and_rectify(rgs, rgm, AlntConfig(lambda_=lambda_, rectify=True))
                assert (weights > 0).sum() >= 1  # pigeonhole: max(w) >= mean(w) = 1/B
                kept = weights > 0
                unrectified = mix_and_rectify(rgs, rgm, AlntConfig(lambda_=lambda_, rectify=False))
                torch.testing.assert_close(weights[kept], unrectified[kept])  # no renormalisation
                assert bool((unrectified[~kept] < 1.0 / batch).all())


def test_rectification_with_an_all_zero_component_can_drop_every_sample() -> None:
    """Documented edge: w^S = 0 and 0 < lambda < 1 gives sum(w) = 1 - lambda < 1; uniform w^M then
    puts every w_i = (1 - lambda)/B below 1/B, so the whole pseudo batch is dropped."""
    rgs = normalise_weights(torch.tensor([-1.0, -2.0, -0.5, -3.0]))
    assert bool((rgs == 0).all())  # all-zero stays all zero (no division by zero)
    rgm = normalise_weights(torch.ones(4))
    dropped = mix_and_rectify(rgs, rgm, AlntConfig(lambda_=0.5, rectify=True))
    assert bool((dropped == 0).all())
    # lambda = 0 (RGM only) is unaffected by the empty RGS; lambda = 1 (RGS only) is all zero by definition.
    assert bool((mix_and_rectify(rgs, rgm, AlntConfig(lambda_=0.0, rectify=True)) > 0).all())
    assert bool((mix_and_rectify(rgs, rgm, AlntConfig(lambda_=1.0, rectify=True)) == 0).all())


def test_all_zero_rgs_end_to_end_reports_dropped_batch() -> None:
    """A zero expert gradient (a stationary point; forced here by a zero direction) gives all-zero dot
    products and finite losses, no NaN from the tangent rescaling."""
    model = _tiny()
    pseudo = _batch(7)
    zero = [torch.zeros_like(p) for p in model.parameters()]
    dots, losses, _, _ = directional_derivatives(model, *pseudo, zero)
    assert bool((dots == 0).all()) and bool(torch.isfinite(losses).all())


def test_no_gradient_flows_through_weights() -> None:
    model = _tiny()
    expert, pseudo = _batch(8), _batch(9)
    for objective in ("expert+weighted", "weighted"):
        settings = AlntConfig(objective=objective, rectify=False)
        result = compute_alnt_weights(model, *expert, *pseudo, settings)
        assert not result.weights.requires_grad and result.weights.grad_fn is None
        params = list(model.parameters())
        expert_losses = per_sample_deep_supervision_loss(model(expert[0]), expert[1])
        pseudo_losses = per_sample_deep_supervision_loss(model(pseudo[0]), pseudo[1])
        # Even weights that *do* carry a graph must act as constants in the objective.
        live_weights = result.weights.clone() + 0.0 * pseudo_losses
        got = torch.autograd.grad(alnt_objective(expert_losses, pseudo_losses, live_weights, settings), params, retain_graph=True)
        constant = result.weights.clone()
        manual = (constant * pseudo_losses).sum() + (expert_losses.mean() if objective == "expert+weighted" else 0.0)
        want = torch.autograd.grad(manual, params)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_model_state_is_restored() -> None:
    model = _tiny(dropout=0.2)
    model.train()
    expert, pseudo = _batch(10), _batch(11)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    first = compute_alnt_weights(model, *expert, *pseudo, AlntConfig())
    second = compute_alnt_weights(model, *expert, *pseudo, AlntConfig())
    torch.testing.assert_close(first.weights, second.weights)  # dropout was off: deterministic
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n][0]) and torch.equal(p.grad, before[n][1])
    assert {n: m.training for n, m in model.named_modules()} == modes


@pytest.mark.parametrize("objective", ["expert+weighted", "weighted"])
def test_fused_step_equals_weights_then_objective(objective: str) -> None:
    settings = AlntConfig(objective=objective, lambda_=0.5, rectify=True)
    model = _tiny(torch.float64)
    expert, pseudo = _batch(12, torch.float64), _batch(13, torch.float64)
    result = compute_alnt_weights(model, *expert, *pseudo, settings)
    loss = alnt_objective(
        per_sample_deep_supervision_loss(model(expert[0]), expert[1]),
        per_sample_deep_supervision_loss(model(pseudo[0]), pseudo[1]),
        result.weights,
        settings,
    )
    want = torch.autograd.grad(loss, list(model.parameters()))
    step = alnt_backward(model, *expert, *pseudo, settings)
    assert step.fused
    torch.testing.assert_close(step.alnt.weights, result.weights)
    torch.testing.assert_close(step.loss, loss.detach())
    for p, w in zip(model.parameters(), want):
        got = torch.zeros_like(p) if p.grad is None else p.grad
        torch.testing.assert_close(got, w)


def test_fused_step_falls_back_with_active_dropout() -> None:
    model = _tiny(dropout=0.3)
    model.train()
    step = alnt_backward(model, *_batch(14), *_batch(15), AlntConfig())
    assert not step.fused and all(p.grad is not None for p in model.parameters())


def test_disabled_gives_uniform_weights() -> None:
    result = compute_alnt_weights(_tiny(), *_batch(16), *_batch(17), AlntConfig(enabled=False))
    torch.testing.assert_close(result.weights, torch.full((B,), 1.0 / B))


def _phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    image, label = make_phantom(seed, shape=(16, 32, 32))
    # HU clipped to [-1000, 1000] and scaled to [-1, 1]: the CT normalisation with mean 0, sd 1000.
    ct = Plan((10.0, 6.0, 6.0), (16, 32, 32), [(2, 2, 2)] * 3, (8, 16, 32, 32), 2, "ct", (-1000.0, 1000.0), 0.0, 1000.0)
    return normalise(image.array, ct), label.array.astype(np.int64)


def _stack(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.stack([i for i, _ in items]))[:, None]
    labels = torch.from_numpy(np.stack([l for _, l in items]))[:, None]
    return images, labels


def _corrupt(label: np.ndarray, kind: int) -> np.ndarray:
    """A wrong pseudo-label: lung and background swapped, or the whole mask shifted by 8 voxels in-plane.

    (Erasing the lung alone was tried and separates weakly this early in training: ratio ~0.9.)
    """
    if kind == 0:
        return np.where(label == 1, 0, np.where(label == 0, 1, label))
    return np.roll(label, shift=(8, 8), axis=(1, 2))


@pytest.mark.slow
def test_rgs_down_weights_corrupted_pseudo_labels() -> None:
    """After a short warm-up on expert labels, pseudo samples with wrong labels disagree with the expert
    gradient: their RGS weight is clearly below that of correctly labelled samples."""
    torch.manual_seed(0)
    model = build_network(3, (8, 16, 32, 32), 0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = _stack([_phantom(seed) for seed in range(4)])
    for _ in range(30):
        optimiser.zero_grad()
        per_sample_deep_supervision_loss(model(train[0]), train[1]).mean().backward()
        optimiser.step()
    expert = _stack([_phantom(seed) for seed in (100, 101)])
    clean_weights: list[float] = []
    corrupted_weights: list[float] = []
    for batch in range(3):
        samples = [_phantom(200 + 4 * batch + k) for k in range(4)]
        # Samples 0, 1 clean; 2, 3 corrupted (lung/background swapped, shifted mask).
        samples = [(image, label if k < 2 else _corrupt(label, k - 2)) for k, (image, label) in enumerate(samples)]
        result = compute_alnt_weights(model, *expert, *_stack(samples), AlntConfig(lambda_=1.0, rectify=False))
        clean_weights += result.rgs[:2].tolist()
        corrupted_weights += result.rgs[2:].tolist()
    clean, corrupted = float(np.mean(clean_weights)), float(np.mean(corrupted_weights))
    # Measured (3 batches): swapped samples get weight 0 (negative dot product), shifted ones ~0.75x clean.
    assert corrupted < 0.6 * clean, (clean_weights, corrupted_weights)
    assert max(corrupted_weights[0::2]) < 0.5 * clean, "swapped labels should be (nearly) dropped"


def test_pseudo_share_scales_the_pseudo_term() -> None:
    from activeseg.method.alnt import alnt_objective, pseudo_share
    from activeseg.config import AlntConfig

    settings = AlntConfig()
    assert pseudo_share(1, 9, settings) == pytest.approx(0.1)
    assert pseudo_share(0, 0, settings) == 1.0
    assert pseudo_share(1, 9, AlntConfig(scale_by_share=False)) == 1.0
    expert = torch.tensor([1.0, 3.0])
    pseudo = torch.tensor([2.0, 4.0])
    weights = torch.tensor([0.5, 0.5])
    assert float(alnt_objective(expert, pseudo, weights, settings, pseudo_scale=0.1)) == pytest.approx(2.0 + 0.1 * 3.0)
    paper = AlntConfig(objective="weighted")
    assert float(alnt_objective(expert, pseudo, weights, paper, pseudo_scale=0.1)) == pytest.approx(3.0)


def test_class_weights_lift_rare_classes_and_flow_into_alnt() -> None:
    import numpy as np

    from activeseg.config import AlntConfig
    from activeseg.model.loss import balanced_class_weights

    label = np.zeros((10, 10, 10), np.uint8)
    label[:4] = 1
    label[0, 0, :2] = 2
    weights = balanced_class_weights([label], 3)
    assert weights[2] > weights[1] > weights[0]
    frequency = np.bincount(label.ravel(), minlength=3) / label.size
    assert float((torch.from_numpy(frequency).float() * weights).sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(balanced_class_weights([np.zeros((4, 4, 4), np.uint8)], 3, cap=10.0)[2]) > 0  # absent class: capped
    # the same weights reach ALNT's losses: the fused step with and without them differ
    from activeseg.method.alnt import alnt_backward
    from activeseg.model.loss import DeepSupervisionLoss
    from activeseg.model.network import build_network

    torch.manual_seed(0)
    model = build_network(3, (4, 8, 8, 16), 0.0)
    images = torch.randn(2, 1, 16, 16, 16)
    labels = torch.randint(0, 3, (2, 1, 16, 16, 16))
    plain = alnt_backward(model, images, labels, images, labels, AlntConfig())
    model.zero_grad()
    balanced = alnt_backward(model, images, labels, images, labels, AlntConfig(), loss=DeepSupervisionLoss(torch.tensor([0.5, 1.0, 20.0])))
    assert float(plain.loss) != pytest.approx(float(balanced.loss))


@pytest.mark.parametrize("objective", ["expert+weighted", "weighted"])
def test_class_weights_reach_every_loss_on_both_paths(objective: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With non-uniform class weights, the fused step and the unfused one (weights, then the objective's
    backward; taken with active dropout) give the same weights, loss and gradients, and both equal the objective
    built from the weighted loss by hand. Before the loss became one object, the unfused path dropped the class
    weights from its pseudo losses while the fused path kept them, and nothing compared the two."""
    import activeseg.method.alnt as alnt
    from activeseg.model.loss import DeepSupervisionLoss

    settings = AlntConfig(objective=objective, lambda_=0.5, rectify=False)
    loss = DeepSupervisionLoss(torch.tensor([0.2, 1.0, 25.0], dtype=torch.float64))  # far from uniform
    expert, pseudo = _batch(21, torch.float64), _batch(22, torch.float64)
    model = _tiny(torch.float64)
    params = list(model.parameters())

    # Reference: weights from compute_alnt_weights, objective from the weighted per-sample losses, autograd.
    reference = compute_alnt_weights(model, *expert, *pseudo, settings, loss=loss)
    objective_value = alnt_objective(
        loss.per_sample(model(expert[0]), expert[1]), loss.per_sample(model(pseudo[0]), pseudo[1]),
        reference.weights, settings, pseudo_scale=0.3,
    )
    want = torch.autograd.grad(objective_value, params)

    def step(force_unfused: bool) -> tuple[object, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        # The unfused path is the one taken with active dropout; forcing it on this dropout-free network
        # keeps both paths on identical, deterministic forwards.
        monkeypatch.setattr(alnt, "_has_active_dropout", lambda _model: force_unfused)
        result = alnt_backward(model, *expert, *pseudo, settings, pseudo_scale=0.3, loss=loss)
        return result, [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]

    fused, fused_grads = step(force_unfused=False)
    unfused, unfused_grads = step(force_unfused=True)
    assert fused.fused and not unfused.fused
    for result, grads in ((fused, fused_grads), (unfused, unfused_grads)):
        torch.testing.assert_close(result.alnt.weights, reference.weights)
        torch.testing.assert_close(result.loss, objective_value.detach())
        for got, expected in zip(grads, want):
            torch.testing.assert_close(got, expected)
    # The class weights matter here: without them the reference objective is a different number.
    unweighted = alnt_objective(
        per_sample_deep_supervision_loss(model(expert[0]), expert[1]),
        per_sample_deep_supervision_loss(model(pseudo[0]), pseudo[1]),
        reference.weights, settings, pseudo_scale=0.3,
    )
    assert float(unweighted.detach()) != pytest.approx(float(objective_value.detach()), rel=1e-3)
