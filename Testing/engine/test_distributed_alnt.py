"""ALNT and a plain step under data parallelism (2 gloo processes on the CPU) equal one process on the global batch.

Each rank holds half of the expert and of the pseudo batch (:mod:`Testing.engine.distributed_support`). The reference is
:func:`activeseg.method.alnt.alnt_backward` (or a plain backward of the mean loss) in this process on the whole
batch, from the same initial weights: the ALNT weights, the objective and every parameter's gradient must match
within float32 tolerance (the ranks sum in another order), and both ranks must hold the same gradient.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from activeseg.method.alnt import alnt_backward
from activeseg.model.loss import DeepSupervisionLoss

from .distributed_support import global_batch, network, rank_steps, run_ranks, step_cases

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """What the 2 ranks computed (one spawn for every comparison of this module)."""
    return run_ranks(rank_steps, 2, tmp_path_factory.mktemp("ddp"))


def _single(name: str) -> dict:
    settings, scale = step_cases()[name]
    batch = global_batch()
    model = network()
    loss = DeepSupervisionLoss(torch.tensor([0.5, 1.0, 2.0]))
    step = alnt_backward(model, batch["expert_images"], batch["expert_labels"], batch["pseudo_images"],
                         batch["pseudo_labels"], settings, pseudo_scale=scale, loss=loss)
    return {"weights": step.alnt.weights, "grads": [p.grad for p in model.parameters()], "loss": float(step.loss),
            "stats": step.alnt.stats, "fused": step.fused}


def _assert_grads(actual: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(actual) == len(expected)
    scale = max(float(g.abs().max()) for g in expected)
    assert scale > 0
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name", list(step_cases()))
def test_alnt_step_equals_one_process(ranks: list[dict], name: str) -> None:
    single = _single(name)
    for rank in ranks:
        got = rank[name]
        assert got["fused"] == single["fused"]
        torch.testing.assert_close(got["weights"], single["weights"], rtol=1e-4, atol=1e-6)
        assert got["loss"] == pytest.approx(single["loss"], rel=1e-5)
        _assert_grads(got["grads"], single["grads"])
        for key in ("sum_weight", "fraction_dropped", "expert_loss", "pseudo_loss"):
            if key in single["stats"]:
                assert got["stats"][key] == pytest.approx(single["stats"][key], rel=1e-5, abs=1e-7), key
    # The ranks hold the same gradient, so their optimisers take the same step.
    for a, b in zip(ranks[0][name]["grads"], ranks[1][name]["grads"]):
        assert torch.equal(a, b)


def test_default_case_is_not_trivial() -> None:
    """The default case drops some samples and keeps others: a rank normalising over its own half would differ."""
    weights = _single("fused_default")["weights"]
    assert (weights == 0).any() and (weights > 0).sum() >= 2


def test_plain_ddp_step_equals_one_process(ranks: list[dict]) -> None:
    batch = global_batch()
    model = network()
    loss = DeepSupervisionLoss(torch.tensor([0.5, 1.0, 2.0]))
    images = torch.cat([batch["expert_images"][:2], batch["pseudo_images"][:2], batch["expert_images"][2:],
                        batch["pseudo_images"][2:]])
    labels = torch.cat([batch["expert_labels"][:2], batch["pseudo_labels"][:2], batch["expert_labels"][2:],
                        batch["pseudo_labels"][2:]])
    loss.mean(model(images), labels).backward()
    for rank in ranks:
        _assert_grads(rank["plain"]["grads"], [p.grad for p in model.parameters()])


def test_no_rank_is_left_running(ranks: list[dict], tmp_path: Path) -> None:
    """The spawned ranks have exited (the context joins them)."""
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
