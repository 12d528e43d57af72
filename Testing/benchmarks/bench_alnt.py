"""ALNT step cost vs a plain training step: time and peak memory, same network, batch and device.

Variants, each one full optimiser step on an expert batch + a pseudo batch (B_v = B):

* ``plain``: mean loss over expert+pseudo in one forward, backward, Adam step (no re-weighting).
* ``alnt fused``: :func:`activeseg.method.alnt.alnt_backward` (the expert backward of the step is reused as
  ``g``; RGS by one jvp, RGM closed form, RGS&M+AL) + Adam step. Requires no active dropout.
* ``alnt unfused``: :func:`activeseg.method.alnt.compute_alnt_weights` + an ordinary expert+pseudo forward,
  :func:`activeseg.method.alnt.alnt_objective` backward, Adam step (what a loop with active dropout runs).
* ``ren eps-trick``: the original's RGS by Ren et al.'s look-ahead double backward (create_graph) + the
  same training step; for the record (RGM omitted, it only adds cost).

Timing: wall-clock median over repetitions after one warm-up step (CUDA: synchronised), plus the median
process CPU time on CPU (less sensitive to other load on a shared machine). Memory: on CUDA,
``torch.cuda.max_memory_allocated`` during the timed steps minus the allocation before them; on CPU,
peak RSS (``ru_maxrss``) minus the RSS just before the first step, each variant in a fresh subprocess
(it therefore includes allocator caching and Adam's state, identical across variants).

Sizes: quick = 32^3 patches, batch 2+2; full = also 96^3, batch 4+4 (the paper's setting), with few
repetitions on CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from typing import Any

logger = logging.getLogger("activeseg.bench.alnt")

CHANNELS = (16, 32, 64, 128)
VARIANTS = ("plain", "alnt fused", "alnt unfused", "ren eps-trick")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        import os

        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker(variant: str, size: int, batch: int, reps: int) -> dict[str, Any]:
    """Run one variant in this (fresh) process; return median times and peak memory."""
    import resource

    import torch
    from torch.func import functional_call

    from activeseg.method.alnt import alnt_backward, alnt_objective, compute_alnt_weights, normalise_weights
    from activeseg.config import AlntConfig
    from activeseg.model.loss import per_sample_deep_supervision_loss as loss_fn
    from activeseg.model.network import build_network

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_network(3, CHANNELS, 0.0).to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4)
    shape = (batch, 1, size, size, size)
    xe, xp = torch.randn(shape, device=device), torch.randn(shape, device=device)
    # Blob-like labels so the loss is not degenerate.
    ye, yp = ((xe > 0.3).long() + (xe > 1.2).long()), ((xp > 0.3).long() + (xp > 1.2).long())
    settings = AlntConfig(lambda_=0.5, rectify=True)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())

    def plain() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss_fn(model(torch.cat([xe, xp])), torch.cat([ye, yp])).mean().backward()
        optimiser.step()

    def fused() -> None:
        optimiser.zero_grad(set_to_none=True)
        alnt_backward(model, xe, ye, xp, yp, settings)
        optimiser.step()

    def train_with(weights: torch.Tensor) -> None:
        optimiser.zero_grad(set_to_none=True)
        losses = loss_fn(model(torch.cat([xe, xp])), torch.cat([ye, yp]))
        alnt_objective(losses[:batch], losses[batch:], weights, settings).backward()
        optimiser.step()

    def unfused() -> None:
        train_with(compute_alnt_weights(model, xe, ye, xp, yp, settings).weights)

    def ren() -> None:
        eps = torch.zeros(batch, device=device, requires_grad=True)
        pseudo_losses = loss_fn(model(xp), yp)
        grads = torch.autograd.grad((eps * pseudo_losses).sum(), params, create_graph=True)
        look_ahead = {n: p - 1e-3 * g for n, p, g in zip(names, params, grads)}
        meta = loss_fn(functional_call(model, look_ahead, (xe,)), ye).mean()
        (eps_grad,) = torch.autograd.grad(meta, eps)
        weights = normalise_weights(-eps_grad.detach())
        del grads, look_ahead, meta, pseudo_losses
        train_with(weights)

    step = {"plain": plain, "alnt fused": fused, "alnt unfused": unfused, "ren eps-trick": ren}[variant]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rss_before = _rss_bytes()
    step()  # warm-up (allocator, kernels, Adam state)
    sync()
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    walls, cpus = [], []
    for _ in range(reps):
        cpu, wall = time.process_time(), time.perf_counter()
        step()
        sync()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus), "peak_mib": peak / 2**20, "reps": reps}


def _measure(variant: str, size: int, batch: int, reps: int) -> dict[str, Any]:
    """One variant in a fresh subprocess, so peak-memory counters start clean."""
    payload = json.dumps({"variant": variant, "size": size, "batch": batch, "reps": reps})
    completed = subprocess.run(
        [sys.executable, "-m", "Testing.benchmarks.bench_alnt", "--worker", payload],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(quick: bool) -> str:
    """Benchmark table (Markdown) of plain vs ALNT step time and peak memory."""
    import torch

    from Testing.benchmarks.run_all import machine_description

    device = "CUDA" if torch.cuda.is_available() else "CPU"
    on_gpu = device == "CUDA"
    configs = [(32, 2, 5, 3)]  # (size, batch per side, reps, reps for Ren)
    if not quick:
        configs.append((96, 4, 10 if on_gpu else 2, 5 if on_gpu else 1))
    lines = [
        f"ALNT step vs plain step; network channels {CHANNELS}; {device}; {machine_description()}",
        "",
        "| patch | batch (expert+pseudo) | variant | reps | wall median (s) | x plain | CPU time median (s) | x plain | peak mem (MiB) | x plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, batch, reps, ren_reps in configs:
        results: dict[str, dict[str, Any]] = {}
        for variant in VARIANTS:
            count = ren_reps if variant == "ren eps-trick" else reps
            logger.info("bench_alnt: %s %d^3 batch %d+%d, %d reps", variant, size, batch, batch, count)
            results[variant] = _measure(variant, size, batch, count)
        base = results["plain"]
        for variant in VARIANTS:
            r = results[variant]
            lines.append(
                f"| {size}^3 | {batch}+{batch} | {variant} | {r['reps']} | {r['wall']:.3f} | {r['wall'] / base['wall']:.2f} "
                f"| {r['cpu']:.3f} | {r['cpu'] / base['cpu']:.2f} | {r['peak_mib']:.0f} | {r['peak_mib'] / base['peak_mib']:.2f} |"
            )
    memory = "torch.cuda.max_memory_allocated over the timed steps" if on_gpu else "peak RSS above the pre-step RSS, fresh process per variant"
    lines += ["", f"Memory: {memory}. CPU time = process time, all threads."]
    return "\n".join(lines)


def _main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    args = parser.parse_args()
    spec = json.loads(args.worker)
    sys.stdout.write(json.dumps(_worker(spec["variant"], spec["size"], spec["batch"], spec["reps"])) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
