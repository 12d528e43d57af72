"""The GPU benchmark, prepared to run in one short call: ``make bench-gpu`` (or ``python -m Testing.benchmarks.bench_gpu``).

Runs on whatever device torch finds (CUDA when lent, otherwise the CPU at small sizes so that the script itself is
checked everywhere) and writes one JSON (``bench_output/bench_gpu.json``) and one Markdown table (stdout and
``bench_output/bench_gpu.md``). Rows, each measured side by side in this one process:

* **training steps per second** of the engine's network at the CUDA plan's patch (128^3 voxels, channels 16..256, the
  plan's default base and cap, five levels), batch 2, AdamW: bfloat16 autocast (``training.amp``) on and off, with the
  GPU's utilisation sampled by ``nvidia-smi`` during the timed steps where it exists;
* **ALNT step against a plain step** at 96^3 with 4 expert + 4 pseudo-labelled crops (the fused path,
  :func:`activeseg.method.alnt.alnt_backward`, full precision: forward-mode AD is not validated under autocast),
  and the plain step on the same 8 crops;
* **ranking volumes per second**: :meth:`activeseg.model.predictor.Predictor.predict` (three heads, sliding windows
  with Gaussian weighting) on a 512x512x100 volume (CUDA) with AMP;
* **DDP scaling**: the training step of the first row (AMP on) under ``DistributedDataParallel`` on 1 and on all the
  GPUs present (NCCL; one process per GPU, each with the same per-GPU batch), as steps per second and the ratio of
  crops per second; with one GPU the row says so. ``--quick`` on a CPU runs the same code with 2 gloo processes.

Weights are a fresh initialisation: the cost of a step does not depend on their values. Budget: about 2-4 minutes
on an H100 (``--quick``: tiny sizes, seconds, for a CPU check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activeseg.config import AlntConfig
from activeseg.io.volumes import Geometry, Volume
from activeseg.method.alnt import alnt_backward
from activeseg.model.loss import DeepSupervisionLoss
from activeseg.model.network import build_network
from activeseg.model.plan import Plan
from activeseg.model.predictor import Predictor

__all__ = ["run", "measure"]

NUM_CLASSES = 3


class _UtilisationSampler:
    """Samples GPU utilisation (%) with ``nvidia-smi`` every 0.2 s while active; empty without it."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _UtilisationSampler:
        if shutil.which("nvidia-smi") and torch.cuda.is_available():
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                                      capture_output=True, text=True, timeout=2).stdout
                self.samples.append(float(text.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(0.2)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _channels(base: int, cap: int, levels: int) -> tuple[int, ...]:
    return tuple(min(base * 2**level, cap) for level in range(levels))


def _batch(size: int, patch: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(size, 1, *patch, device=device)
    labels = torch.randint(0, NUM_CLASSES, (size, 1, *patch), device=device)
    return images, labels


def _time_steps(step: Any, device: torch.device, warmup: int, timed: int) -> tuple[float, float | None]:
    """(steps per second, mean GPU utilisation %) of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    with _UtilisationSampler() as sampler:
        started = time.perf_counter()
        for _ in range(timed):
            step()
        _sync(device)
        seconds = time.perf_counter() - started
    return timed / seconds, sampler.mean


def _training(device: torch.device, patch: tuple[int, int, int], channels: tuple[int, ...], amp: bool,
              warmup: int, timed: int) -> tuple[float, float | None]:
    torch.manual_seed(0)
    strides = [(2, 2, 2)] * (len(channels) - 1)
    model = build_network(NUM_CLASSES, channels, 0.0, strides=strides).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = DeepSupervisionLoss(None)
    images, labels = _batch(2, patch, device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            loss = loss_fn.mean(model(images), labels)
        loss.backward()
        optimiser.step()

    return _time_steps(step, device, warmup, timed)


def _alnt_against_plain(device: torch.device, patch: tuple[int, int, int], channels: tuple[int, ...], batch: int,
                        warmup: int, timed: int) -> dict[str, float]:
    torch.manual_seed(0)
    strides = [(2, 2, 2)] * (len(channels) - 1)
    model = build_network(NUM_CLASSES, channels, 0.0, strides=strides).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
    loss_fn = DeepSupervisionLoss(None)
    expert_images, expert_labels = _batch(batch, patch, device)
    pseudo_images, pseudo_labels = _batch(batch, patch, device)
    settings = AlntConfig()

    def alnt_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        alnt_backward(model, expert_images, expert_labels, pseudo_images, pseudo_labels, settings, pseudo_scale=0.5,
                      loss=loss_fn)
        optimiser.step()

    all_images, all_labels = torch.cat([expert_images, pseudo_images]), torch.cat([expert_labels, pseudo_labels])

    def plain_step() -> None:
        optimiser.zero_grad(set_to_none=True)
        loss_fn.mean(model(all_images), all_labels).backward()
        optimiser.step()

    plain, _ = _time_steps(plain_step, device, warmup, timed)
    alnt, _ = _time_steps(alnt_step, device, warmup, timed)
    return {"plain_steps_per_s": plain, "alnt_steps_per_s": alnt, "alnt_cost_vs_plain": plain / alnt}


def _ranking(device: torch.device, shape: tuple[int, int, int], patch: tuple[int, int, int], channels: tuple[int, ...],
             volumes: int) -> float:
    torch.manual_seed(0)
    strides = [(2, 2, 2)] * (len(channels) - 1)
    model = build_network(NUM_CLASSES, channels, 0.0, strides=strides).to(device).eval()
    plan = Plan((1.0, 1.0, 1.0), patch, strides, channels, 2, "zscore")
    predictor = Predictor(model, plan, device, amp=True)
    grid = Geometry((shape[2], shape[1], shape[0]), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    volume = Volume(np.random.default_rng(0).normal(size=shape).astype(np.float32), grid)
    predictor.predict(volume, on_source_grid=False)  # warm-up
    _sync(device)
    started = time.perf_counter()
    for _ in range(volumes):
        predictor.predict(volume, on_source_grid=False)
    _sync(device)
    return volumes / (time.perf_counter() - started)


def _ddp_rank(rank: int, world_size: int, port: int, patch: tuple[int, int, int], channels: tuple[int, ...],
              warmup: int, timed: int, results: Any) -> None:
    """One process of :func:`_ddp_scaling`: NCCL on ``cuda:rank`` (gloo on the CPU), DDP-wrapped training steps,
    joined through the engine's own :func:`activeseg.model.distributed.initialise` as torchrun's ranks are."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from activeseg.model.distributed import initialise

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    device = initialise("auto", timeout_s=600).device
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        strides = [(2, 2, 2)] * (len(channels) - 1)
        model = DistributedDataParallel(build_network(NUM_CLASSES, channels, 0.0, strides=strides).to(device),
                                        device_ids=[rank] if cuda else None)
        optimiser = torch.optim.AdamW(model.parameters(), 1e-3)
        loss_fn = DeepSupervisionLoss(None)
        images, labels = _batch(2, patch, device)

        def step() -> None:
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn.mean(model(images), labels)
            loss.backward()
            optimiser.step()

        rate, _ = _time_steps(step, device, warmup, timed)
        if rank == 0:
            results.put(rate)
    finally:
        dist.destroy_process_group()


def _ddp_scaling(processes: int, patch: tuple[int, int, int], channels: tuple[int, ...], warmup: int,
                 timed: int) -> dict[str, Any]:
    """Steps per second of DDP training on 1 and on ``processes`` processes (spawned; one GPU each on CUDA)."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    rates: dict[int, float] = {}
    for world_size in (1, processes):
        results = context.Queue()
        with socket.socket() as probe:  # a free port for the rendezvous
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mp.start_processes(_ddp_rank, args=(world_size, port, patch, channels, warmup, timed, results),
                           nprocs=world_size, join=True, start_method="spawn")
        rates[world_size] = float(results.get(timeout=60))
    return {"processes": processes, "patch": patch, "batch_per_process": 2,
            "steps_per_s": {str(k): v for k, v in rates.items()},
            "crops_per_s_ratio": rates[processes] * processes / rates[1]}


def measure(quick: bool) -> dict[str, Any]:
    """All rows as a JSON-ready dict (sizes, device, results)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if quick or device.type == "cpu":
        train_patch, train_channels, alnt_patch, alnt_channels = (32, 32, 32), (4, 8, 16, 32), (32, 32, 32), (4, 8, 16, 32)
        rank_shape, rank_patch, warmup, timed, volumes = (24, 64, 64), (16, 32, 32), 2, 3, 1
        alnt_batch = 2
    else:
        train_patch, train_channels = (128, 128, 128), _channels(16, 256, 5)
        alnt_patch, alnt_channels, alnt_batch = (96, 96, 96), _channels(16, 256, 5), 4
        rank_shape, rank_patch, warmup, timed, volumes = (100, 512, 512), (128, 128, 128), 3, 20, 2
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "quick": quick or device.type == "cpu",
        "training": {"patch": train_patch, "channels": train_channels, "batch": 2},
    }
    for amp in (False, True):
        rate, utilisation = _training(device, train_patch, train_channels, amp, warmup, timed)
        result["training"]["amp_on" if amp else "amp_off"] = {"steps_per_s": rate, "gpu_utilisation_pct": utilisation}
    if device.type == "cuda":
        result["training"]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["alnt"] = {"patch": alnt_patch, "channels": alnt_channels, "batch": f"{alnt_batch}+{alnt_batch}",
                      **_alnt_against_plain(device, alnt_patch, alnt_channels, alnt_batch, warmup, timed)}
    result["ranking"] = {"shape": rank_shape, "patch": rank_patch,
                         "volumes_per_s": _ranking(device, rank_shape, rank_patch, train_channels, volumes)}
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if device.type == "cpu" or gpus >= 2:
        result["ddp"] = _ddp_scaling(2 if device.type == "cpu" else gpus, train_patch, train_channels, warmup, timed)
    else:
        result["ddp"] = "one GPU present: no scaling to measure"
    return result


def table(result: dict[str, Any]) -> str:
    """The Markdown table of :func:`measure`'s result."""
    training, alnt, ranking = result["training"], result["alnt"], result["ranking"]

    def utilisation(entry: dict[str, Any]) -> str:
        value = entry["gpu_utilisation_pct"]
        return "n/a" if value is None else f"{value:.0f} %"

    on, off = training["amp_on"]["steps_per_s"], training["amp_off"]["steps_per_s"]
    lines = [
        f"Device: {result['device']}, torch {result['torch']}, {result['date']}{' (quick sizes)' if result['quick'] else ''}.",
        "",
        "| measurement | value | note |",
        "|---|---:|---|",
        f"| training steps/s, AMP off | {off:.2f} | patch {'x'.join(map(str, training['patch']))}, batch 2, GPU {utilisation(training['amp_off'])} |",
        f"| training steps/s, AMP on (bf16) | {on:.2f} | {on / off:.2f}x AMP off, GPU {utilisation(training['amp_on'])} |",
        f"| plain step/s on {alnt['batch']} crops | {alnt['plain_steps_per_s']:.2f} | patch {'x'.join(map(str, alnt['patch']))} |",
        f"| ALNT step/s on {alnt['batch']} crops | {alnt['alnt_steps_per_s']:.2f} | {alnt['alnt_cost_vs_plain']:.2f}x the plain step's time |",
        f"| ranking volumes/s | {ranking['volumes_per_s']:.3f} | {'x'.join(map(str, ranking['shape']))} volume, window {'x'.join(map(str, ranking['patch']))} |",
        _ddp_row(result["ddp"]),
    ]
    if "peak_memory_gib" in training:
        lines.append(f"| peak GPU memory (training) | {training['peak_memory_gib']:.1f} GiB | |")
    return "\n".join(lines)


def _ddp_row(ddp: dict[str, Any] | str) -> str:
    if isinstance(ddp, str):
        return f"| DDP scaling | - | {ddp} |"
    n, rates = ddp["processes"], ddp["steps_per_s"]
    return (f"| DDP steps/s, 1 / {n} processes | {rates['1']:.2f} / {rates[str(n)]:.2f} | crops/s {ddp['crops_per_s_ratio']:.2f}x "
            f"one process ({n} x batch {ddp['batch_per_process']}, patch {'x'.join(map(str, ddp['patch']))}) |")


def run(quick: bool) -> str:
    """``make bench`` entry: the table (the JSON is written beside it by :func:`main`)."""
    return table(measure(quick))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a check of the script, not a measurement)")
    parser.add_argument("--out", type=Path, default=Path("bench_output"), help="folder for bench_gpu.json and .md")
    args = parser.parse_args(argv)
    result = measure(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_gpu.json").write_text(json.dumps(result, indent=1) + "\n")
    text = table(result)
    (args.out / "bench_gpu.md").write_text(text + "\n")
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
