"""What the data-parallel tests run in each rank: a tiny network, a fixed global batch, and the steps to compare.

:func:`run_ranks` spawns the ranks with ``torch.multiprocessing`` (gloo on the CPU, rendezvous through a file) and
waits for all of them; a rank that fails makes it raise, and the others are terminated by torch's process context.
Each rank writes what it computed to ``OUT/rank<r>.pt``; the test compares with one process on the global batch
(:func:`global_batch`, :func:`step_cases`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from activeseg.config import AlntConfig

__all__ = ["CHANNELS", "CLASSES", "CROP", "global_batch", "network", "run_ranks", "step_cases", "local_rows"]

CHANNELS = (4, 8, 8)
CLASSES = 3
CROP = (8, 8, 8)  # (k, j, i) voxels
EXPERTS, PSEUDO = 4, 4  # global batch sizes (2 + 2 per rank with 2 ranks)


def network() -> torch.nn.Module:
    """The tiny network, initialised identically wherever it is built."""
    from activeseg.model.network import build_network

    torch.manual_seed(0)
    return build_network(CLASSES, CHANNELS, 0.0).train()


def global_batch() -> dict[str, torch.Tensor]:
    """Expert and pseudo images (B, 1, k, j, i) float32 and labels (B, 1, k, j, i) int64 of the global batch."""
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, CLASSES, (EXPERTS + PSEUDO, 1, *CROP), generator=generator)
    images = torch.randn(EXPERTS + PSEUDO, 1, *CROP, generator=generator) + labels.float()  # learnable signal
    return {
        "expert_images": images[:EXPERTS], "expert_labels": labels[:EXPERTS],
        "pseudo_images": images[EXPERTS:], "pseudo_labels": labels[EXPERTS:],
    }


def local_rows(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """This rank's equal share of every tensor of ``batch`` (rows in rank order)."""
    out = {}
    for key, value in batch.items():
        rows = value.shape[0] // world_size
        out[key] = value[rank * rows:(rank + 1) * rows]
    return out


def step_cases() -> dict[str, tuple[AlntConfig, float]]:
    """The ALNT settings compared: (settings, pseudo_scale) per name."""
    return {
        "fused_default": (AlntConfig(), 0.4),  # RGS&M+AL, expert+weighted, scaled by share
        "fused_paper": (AlntConfig(lambda_=1.0, rectify=False, objective="weighted"), 1.0),
        "uniform": (AlntConfig(enabled=False), 0.5),  # the non-fused path: weights 1/B, one training pass
    }


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def rank_steps(rank: int, world_size: int, out: str) -> None:
    """One rank: every ALNT case and a plain DDP step on its share of :func:`global_batch`."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from activeseg.method.alnt import alnt_backward
    from activeseg.model.distributed import DataParallel
    from activeseg.model.loss import DeepSupervisionLoss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world_size)
    try:
        group = DataParallel(rank=rank, world_size=world_size, device=torch.device("cpu"))
        batch = local_rows(global_batch(), rank, world_size)
        loss = DeepSupervisionLoss(torch.tensor([0.5, 1.0, 2.0]))
        results: dict[str, Any] = {}
        for name, (settings, scale) in step_cases().items():
            model = network()
            step = alnt_backward(model, batch["expert_images"], batch["expert_labels"], batch["pseudo_images"],
                                 batch["pseudo_labels"], settings, pseudo_scale=scale, loss=loss, group=group)
            results[name] = {"weights": step.alnt.global_weights, "grads": _grads(model), "loss": float(step.loss),
                             "stats": step.alnt.stats, "fused": step.fused}
        model = network()
        wrapped = DistributedDataParallel(model)
        images = torch.cat([batch["expert_images"], batch["pseudo_images"]])
        labels = torch.cat([batch["expert_labels"], batch["pseudo_labels"]])
        loss.mean(wrapped(images), labels).backward()
        results["plain"] = {"grads": _grads(model)}
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(function: Callable[[int, int, str], None], world_size: int, out: Path) -> list[dict[str, Any]]:
    """Run ``function(rank, world_size, out)`` in ``world_size`` spawned processes; their ``rank<r>.pt`` files.

    Raises:
        torch.multiprocessing.ProcessRaisedException: a rank failed (the others are terminated).
    """
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(function, args=(world_size, str(out)), nprocs=world_size, join=True, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world_size)]


def rank_ranking(rank: int, world_size: int, out: str) -> None:
    """One rank of a sharded ranking of the store named in ``OUT/store.txt``; rank 0 saves its result."""
    import json

    import torch.distributed as dist

    from activeseg.model.distributed import DataParallel
    from activeseg.pipeline.sharded_ranking import rank_round_sharded
    from activeseg.store.datastore import Datastore

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world_size)
    try:
        group = DataParallel(rank=rank, world_size=world_size, device=torch.device("cpu"))
        store = Datastore(Path((Path(out) / "store.txt").read_text()))
        result = rank_round_sharded(store, group)
        if rank == 0:
            assert result is not None
            (Path(out) / "result.json").write_text(json.dumps({
                "scores": {s.case_id: [s.mdsc, s.confidence, s.foreground_voxels] for s in result.scores},
                "strong": result.strong, "weak": result.weak, "inferred": result.inferred, "reused": result.reused,
                "passes_by_rank": result.passes_by_rank,
            }))
        else:
            assert result is None
        torch.save({}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
