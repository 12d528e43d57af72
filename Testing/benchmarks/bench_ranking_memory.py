"""Peak memory and time of ranking one full-size CT: whole-volume heads (before) vs streamed slabs (after).

One case's ranking pass as the ranking round runs it (``_score_and_map``: prepare, sliding-window inference of the
three heads, M-DSC, confidence, foreground, the uncertainty map written as gzip NRRD, the main label map kept for
routing), in two implementations:

* **before**: :meth:`~activeseg.model.predictor.Predictor.predict_prepared` returns the three heads' whole softmax
  volumes (3 x C x voxels float32, plus MONAI's blending buffers), then ``score_case`` and ``uncertainty_map`` on
  them, the label map kept in memory (the round's code up to commit eadac7e, copied below).
* **after**: :func:`activeseg.pipeline.ranking_round._score_and_map` as it is now: slabs from
  :func:`~activeseg.model.predictor.stream_heads` folded into :class:`~activeseg.method.dsal.RankingAccumulator`
  and the uncertainty map, the label map parked on disk (:class:`~activeseg.io.spill.ArraySpill`).

Each (volume, variant) runs in a fresh child process (one torch thread); peak RSS is the child's ``ru_maxrss``
(tracemalloc misses numpy and torch buffers), reset (Linux ``clear_refs``) once imports and the network are loaded;
"before the pass" is the resident set at that point. The pass reads the image from disk, as the datastore does. Volumes: ``../shared/data/pyradiomics_lung_ct`` lung1 (512x512x48 (i, j, k)) and a synthetic
512x512x300 CT (lung1's slices repeated to 300, 1 mm apart). Network and plan are the chest-CT plan of
``bench_ct_smoke`` (channels 4..32, window 12x112x128 (k, j, i)), weights a fresh initialisation (cost and memory do
not depend on them), C = 3 classes, target spacing = each volume's own (no resampling: the real grid size).
``quick``: lung1 only. The table also says whether both variants gave the same scores, label map and uncertainty map.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

__all__ = ["run"]

LUNG1 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pyradiomics_lung_ct" / "lung1_image.nrrd"
NUM_CLASSES = 3
CHANNELS = (4, 8, 16, 32, 32, 32)
STRIDES = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 2)]
PATCH = (12, 112, 128)
SYNTHETIC_SLICES = 300


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _current_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _before(store, predictor, case_id: str):  # type: ignore[no-untyped-def]
    """The ranking round's per-case pass before streaming (ranking_round._score_and_map at eadac7e^)."""
    from dataclasses import replace

    from activeseg.method.uncertainty_map import uncertainty_map, write_uncertainty_volume
    from activeseg.model.preprocessing import resample_to_grid
    from activeseg.pipeline.ranking_round import _voxel_ratio, score_case

    volume = store.load_image(case_id)
    image, planned, pad = predictor.prepare(volume)
    heads = predictor.predict_prepared(image, pad)
    score, main = score_case(case_id, heads, store.config.num_classes)
    uncertainty = uncertainty_map(heads.main, heads.half, heads.quarter)
    write_uncertainty_volume(store.meta_dir, case_id, resample_to_grid(uncertainty, planned, volume.geometry, is_label=False),
                             volume.geometry)
    del heads
    score = replace(score, foreground_voxels=int(round(score.foreground_voxels * _voxel_ratio(planned, volume.geometry))))
    return score, resample_to_grid(main, planned, volume.geometry, is_label=True), volume.geometry


def _child(variant: str, image_path: Path, work: Path) -> dict:
    """One ranking pass in this (fresh) process; what it cost and what it gave."""
    import numpy as np
    import torch

    from activeseg.io.spill import ArraySpill
    from activeseg.io.volumes import read_volume
    from activeseg.method.uncertainty_map import uncertainty_map_path
    from activeseg.model.network import build_network
    from activeseg.model.plan import Plan
    from activeseg.model.predictor import Predictor
    from activeseg.pipeline.ranking_round import _score_and_map

    torch.set_num_threads(1)
    i, j, k = read_volume(image_path).geometry.spacing
    plan = Plan((k, j, i), PATCH, list(STRIDES), CHANNELS, 2, "ct", (-454.0, 90.0), 7.0, 96.0)
    torch.manual_seed(0)
    predictor = Predictor(build_network(NUM_CLASSES, CHANNELS, 0.0, strides=plan.strides).eval(), plan,
                          torch.device("cpu"), amp=False)
    store = SimpleNamespace(load_image=lambda case_id: read_volume(image_path), config=SimpleNamespace(num_classes=NUM_CLASSES),
                            meta_dir=work)
    reset = _reset_peak()
    before_pass = _current_mib()
    started = time.perf_counter()
    if variant == "before":
        maps: dict = {}
        score, maps["case"], _ = _before(store, predictor, "case")
    else:
        maps = ArraySpill(work)  # type: ignore[assignment]
        score, maps["case"], _ = _score_and_map(store, predictor, "case")  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    peak = _peak_mib()
    uncertainty = read_volume(uncertainty_map_path(work, "case"), dtype=np.uint8).array
    return {
        "variant": variant, "shape_kji": list(uncertainty.shape), "seconds": seconds, "before_pass_mib": before_pass,
        "peak_mib": peak, "peak_reset": reset, "mdsc": score.mdsc, "confidence": score.confidence, "foreground": score.foreground_voxels,
        "labels_sha1": hashlib.sha1(np.ascontiguousarray(maps["case"]).tobytes()).hexdigest(),
        "uncertainty_sha1": hashlib.sha1(uncertainty.tobytes()).hexdigest(),
    }


def _run_child(variant: str, image_path: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="activeseg-rankmem-") as work:
        output = subprocess.run(
            [sys.executable, "-m", "Testing.benchmarks.bench_ranking_memory", "--child", variant, str(image_path), work],
            check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
        ).stdout
    return json.loads(output.strip().splitlines()[-1])


def _synthetic(folder: Path) -> Path:
    """lung1's slices repeated to :data:`SYNTHETIC_SLICES`, 1 mm apart, int16 NRRD."""
    import numpy as np

    from activeseg.io.volumes import Geometry, read_volume, write_volume

    lung = read_volume(LUNG1)
    repeats = -(-SYNTHETIC_SLICES // lung.array.shape[0])
    array = np.concatenate([lung.array] * repeats)[:SYNTHETIC_SLICES].astype(np.int16)
    size = (array.shape[2], array.shape[1], array.shape[0])
    spacing = (lung.geometry.spacing[0], lung.geometry.spacing[1], 1.0)
    geometry = Geometry(size, spacing, lung.geometry.origin, lung.geometry.direction)
    path = folder / "synthetic_ct.nrrd"
    write_volume(array, geometry, path, compress=False)
    return path


def run(quick: bool) -> str:
    """Both variants on lung1 (and, unless ``quick``, the 300-slice CT), each in its own process; a Markdown table."""
    if not LUNG1.is_file():
        return f"skipped: {LUNG1} not found (shared test data lives beside the project)"
    rows = []
    with tempfile.TemporaryDirectory(prefix="activeseg-rankmem-vol-") as folder:
        volumes = [("lung1", LUNG1)] + ([] if quick else [(f"synthetic {SYNTHETIC_SLICES} slices", _synthetic(Path(folder)))])
        for name, path in volumes:
            pair = {variant: _run_child(variant, path) for variant in ("before", "after")}
            rows.append((name, pair))
    heads_gib = {}
    lines = [
        f"Network channels {','.join(map(str, CHANNELS))}, window {PATCH[0]}x{PATCH[1]}x{PATCH[2]} (k, j, i), C = {NUM_CLASSES}, "
        "1 torch thread, CPU; one child process per row; peak = ru_maxrss of the child.",
        "",
        "| volume (k, j, i) | variant | pass s | RSS before the pass (MiB) | peak RSS (MiB) | peak - before (MiB) | "
        "3 heads' softmax (MiB) | M-DSC | confidence | same scores, labels, uncertainty |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, pair in rows:
        shape = pair["before"]["shape_kji"]
        voxels = shape[0] * shape[1] * shape[2]
        heads_gib[name] = 3 * NUM_CLASSES * voxels * 4 / 2**20
        a, b = pair["before"], pair["after"]
        same = (a["mdsc"] == b["mdsc"] and a["foreground"] == b["foreground"] and abs(a["confidence"] - b["confidence"]) < 1e-6
                and a["labels_sha1"] == b["labels_sha1"] and a["uncertainty_sha1"] == b["uncertainty_sha1"])
        for r in (a, b):
            lines.append(
                f"| {name} {'x'.join(map(str, shape))} | {r['variant']} | {r['seconds']:.1f} | {r['before_pass_mib']:.0f} | "
                f"{r['peak_mib']:.0f} | {r['peak_mib'] - r['before_pass_mib']:.0f} | {heads_gib[name]:.0f} | {r['mdsc']:.6f} | "
                f"{r['confidence']:.7f} | {same if r is b else ''} |")
        lines.append(f"| | after / before | {b['seconds'] / a['seconds']:.2f} | | {b['peak_mib'] / a['peak_mib']:.2f} | "
                     f"{(b['peak_mib'] - b['before_pass_mib']) / max(a['peak_mib'] - a['before_pass_mib'], 1e-9):.2f} | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "--child":
        import logging

        logging.basicConfig(level=logging.WARNING)
        sys.stdout.write(json.dumps(_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))) + "\n")
    else:
        sys.stdout.write(run(quick="--quick" in sys.argv) + "\n")
