"""Ranking cost per volume: DSAL (one deterministic pass, M-DSC), predictive entropy (one deterministic pass) and
MC-dropout predictive entropy (T passes).

Same network and volumes for all: the U-Net of the issue-11 label-efficiency campaign (channels 8,16,32,64,
sliding window 32x48x32 (k, j, i), one CPU thread), on hippocampus MRI volumes from ``../shared/data``
when present, otherwise on generated phantoms of the hippocampus' mean size (36x50x35). The weights are
a fresh initialisation: the cost of a forward pass does not depend on the weights' values.

Rows, each timed per volume (mean over volumes, volumes interleaved so that load from other processes
hits every method alike):

* DSAL: one :meth:`activeseg.model.predictor.Predictor.predict` pass plus :func:`activeseg.pipeline.ranking_round.score_case`
  (three argmaxes, two Dice agreements, confidence).
* Entropy: one :meth:`~activeseg.model.predictor.Predictor.predict` pass and the main head's mean voxel entropy, as
  the ``entropy`` strategy runs it.
* MC-dropout, T passes, as the ``mc-dropout`` strategy runs it (a three-head ``Predictor`` pass each: also computes
  the auxiliary heads' softmax, which MC-dropout does not need).
* MC-dropout, T passes, main head only (a leaner implementation: MONAI's sliding window over the main
  logits only), so the ratio is not flattered by the overhead above.

``quick`` uses 4 volumes, the default 16; T = 10 (MONAI Label's "epistemic" uses 5-10, CEAL 20).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from activeseg.io.volumes import Geometry, Volume
from activeseg.model.network import build_network
from activeseg.model.plan import Plan
from activeseg.model.predictor import Predictor, enable_mc_dropout
from activeseg.pipeline.ranking_round import score_case
from activeseg.experiments.strategies import mc_mean_probabilities, predictive_entropy

__all__ = ["run"]

HIPPOCAMPUS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hippocampus_mri"
CHANNELS = (8, 16, 32, 64)
PATCH = (32, 48, 32)
NUM_CLASSES = 3
PASSES = 10


def _volumes(count: int) -> tuple[list[Volume], str]:
    """``count`` raw volumes (k, j, i) at 1 mm and a description of where they came from."""
    if (HIPPOCAMPUS / "dataset.json").is_file():
        from activeseg.io.volumes import read_volume

        entries = json.loads((HIPPOCAMPUS / "dataset.json").read_text())["training"][:count]
        volumes = [read_volume(HIPPOCAMPUS / e["image"]) for e in entries]
        shapes = np.array([v.array.shape for v in volumes])
        return volumes, f"{count} hippocampus MRI volumes (MSD Task04), mean shape {tuple(int(v) for v in shapes.mean(0))} (k, j, i)"
    rng = np.random.default_rng(0)
    grid = Geometry((35, 50, 36), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    volumes = [Volume(rng.normal(size=(36, 50, 35)).astype(np.float32), grid) for _ in range(count)]
    return volumes, f"{count} random volumes 36x50x35 (shared data absent)"


def _mc_main_only(model: torch.nn.Module, image: np.ndarray, passes: int) -> float:
    """MC-dropout entropy computing only the main head's softmax per pass."""
    from monai.inferers import sliding_window_inference

    tensor = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    total = None
    with torch.no_grad():
        for _ in range(passes):
            logits = sliding_window_inference(tensor, PATCH, 2, lambda x: model(x).main, overlap=0.25, mode="gaussian")
            probabilities = torch.softmax(logits[0], dim=0).numpy()
            total = probabilities if total is None else total + probabilities
    assert total is not None
    return predictive_entropy(total / passes)


def run(quick: bool) -> str:
    """Time both rankings; return a Markdown table with the per-volume cost and the ratio."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_network(NUM_CLASSES, CHANNELS, 0.1).eval()
        plan = Plan((1.0, 1.0, 1.0), PATCH, [(2, 2, 2)] * 3, CHANNELS, 2, "zscore")
        predictor = Predictor(model, plan, torch.device("cpu"), amp=False)
        volumes, description = _volumes(4 if quick else 16)
        predictor.predict(volumes[0], on_source_grid=False)  # warm-up (allocator, MONAI imports)
        times: dict[str, list[float]] = {"dsal": [], "entropy": [], "mc": [], "mc_main": []}
        for volume in volumes:
            model.eval()
            started = time.perf_counter()
            score_case("v", predictor.predict(volume, on_source_grid=False), NUM_CLASSES)
            times["dsal"].append(time.perf_counter() - started)
            started = time.perf_counter()
            predictive_entropy(predictor.predict(volume, on_source_grid=False).main)
            times["entropy"].append(time.perf_counter() - started)
            enable_mc_dropout(model)
            started = time.perf_counter()
            predictive_entropy(mc_mean_probabilities(predictor, volume, PASSES))
            times["mc"].append(time.perf_counter() - started)
            started = time.perf_counter()
            _mc_main_only(model, predictor.prepare(volume)[0], PASSES)
            times["mc_main"].append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    dsal = float(np.mean(times["dsal"]))
    rows = [
        ("DSAL M-DSC (1 deterministic pass, 3 heads)", dsal),
        ("Predictive entropy (1 deterministic pass, as the entropy strategy)", float(np.mean(times["entropy"]))),
        (f"MC-dropout entropy, T={PASSES} (as the mc-dropout strategy: a three-head pass each)", float(np.mean(times["mc"]))),
        (f"MC-dropout entropy, T={PASSES}, main head only", float(np.mean(times["mc_main"]))),
    ]
    lines = [
        f"Network channels {','.join(map(str, CHANNELS))}, window {PATCH[0]}x{PATCH[1]}x{PATCH[2]}, 1 CPU thread; {description}.",
        "",
        "| ranking | ms / volume | sd (ms) | cost vs DSAL |",
        "|---|---:|---:|---:|",
    ]
    keys = ["dsal", "entropy", "mc", "mc_main"]
    for (name, seconds), key in zip(rows, keys):
        lines.append(f"| {name} | {seconds * 1000:.0f} | {np.std(times[key]) * 1000:.0f} | {seconds / dsal:.1f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(run(quick="--quick" in sys.argv) + "\n")
