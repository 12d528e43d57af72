"""Wall time of one training round in one process against 2 data-parallel processes (gloo, CPU), same settings.

Hippocampus MRI (``../shared/data/hippocampus_mri``, first 16 volumes; phantoms when absent): a prepared datastore
with 6 expert-labelled training volumes, pseudo-labels from a short first round and its ranking, and the fixed
validation split. Each measured round is round 2 of a fresh copy of that store (cache filled, from scratch,
``keep_better_parent`` off), run as a user runs it: ``activeseg train --data COPY --quiet [--nproc 2]`` in a child
process, so the wall time includes interpreter, torch and (for 2 processes) torchrun start-up. Variants run
interleaved, ``--repeats`` times each:

* ``1 proc x 1 thread``: ``training.num_threads=1``;
* ``1 proc x 2 threads``: ``training.num_threads=2``;
* ``2 procs x 1 thread``: ``--nproc 2`` with ``training.num_threads=1`` per rank; every rank draws its own
  ``batch_size`` expert and ``pseudo_batch_size`` pseudo crops, so each step trains on twice the crops.

Besides the wall time the table gives the round's own training-phase seconds and seconds per step (rank 0's
metrics). On a 2-core machine this is a correctness check of the data-parallel path, not a speed-up claim.

Usage: ``python -m Testing.benchmarks.bench_ddp_round [--repeats 2] [--steps 40]``; writes
``bench_output/bench_ddp_round.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["prepare", "run"]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hippocampus_mri"
SETTINGS = [
    "network.channels=4,8,16,32", "training.patch_size=40,56,40", "training.batch_size=2", "alnt.pseudo_batch_size=2",
    "training.epochs_first=2", "training.augment=false", "training.device=cpu", "training.keep_better_parent=false",
    "training.unlearned_class_dice=0", "dsal.strong_per_round=2", "dsal.weak_start_round=1", "dsal.weak_initial=4",
    "intensity.mode=zscore",
]
VARIANTS = {"1 proc x 1 thread": (1, 1), "1 proc x 2 threads": (1, 2), "2 procs x 1 thread": (2, 1)}


def prepare(work: Path, steps: int) -> Path:
    """The prepared store (round 1 trained and ranked: pseudo-labels written); its path."""
    import numpy as np

    from activeseg.config import Config, apply_overrides
    from activeseg.io.volumes import read_volume
    from activeseg.pipeline.ranking_round import rank_round
    from activeseg.pipeline.training_round import train_round
    from activeseg.store.datastore import Datastore

    config = apply_overrides(Config(), [*SETTINGS, "training.steps_per_epoch=5", "training.num_threads=2"])
    config.labels = {1: "anterior", 2: "posterior"}
    if (DATA / "dataset.json").is_file():
        entries = sorted(json.loads((DATA / "dataset.json").read_text())["training"], key=lambda e: e["image"])[:16]
        pairs = [(Path(e["image"]).name.removesuffix(".nii.gz"), DATA / e["image"]) for e in entries]
        labels = {Path(e["image"]).name.removesuffix(".nii.gz"): DATA / e["label"] for e in entries}
    else:  # a user's clone without the shared data: phantoms
        from activeseg.experiments.phantoms import write_phantom_dataset

        write_phantom_dataset(work / "phantoms", 16, seed=0, shape=(40, 56, 40))
        config.labels = {1: "lung", 2: "lesion"}
        pairs = [(p.name.removesuffix(".nii.gz"), p) for p in sorted((work / "phantoms" / "imagesTr").glob("*.nii.gz"))]
        labels = {cid: work / "phantoms" / "labelsTr" / f"{cid}.nii.gz" for cid, _ in pairs}
    store, _ = Datastore.create(work / "store", pairs, config, seed=0)
    train_ids = [c.case_id for c in store.cases(split="train")][:6]
    for case_id in [c.case_id for c in store.cases(split="val")] + train_ids:
        store.submit_label(case_id, read_volume(labels[case_id], dtype=np.uint8), no_finding=True)
    train_round(store)
    ranked = rank_round(store)
    store.config.training.steps_per_epoch = steps // 2
    store.config.save(store.meta_dir / "config.json")
    print(f"prepared: {len(train_ids)} expert, {len(ranked.weak)} pseudo-labelled, "
          f"{len(store.cases(split='val'))} validation volumes", file=sys.stderr)
    return store.root


def _round(prepared: Path, work: Path, processes: int, threads: int) -> dict:
    copy = work / f"run-{time.monotonic_ns()}"
    shutil.copytree(prepared, copy)
    try:
        config_path = copy / ".activeseg" / "config.json"
        config = json.loads(config_path.read_text())
        config["training"]["num_threads"] = threads
        config_path.write_text(json.dumps(config))
        command = [sys.executable, "-m", "activeseg", "train", "--data", str(copy), "--quiet", "--nproc", str(processes)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
        from activeseg.store.datastore import Datastore

        store = Datastore(copy)
        metrics = store.model(store.active_version()).metrics
        return {"processes": processes, "threads": threads, "wall_s": wall,
                "train_s": metrics["phase_seconds"]["train"], "validate_s": metrics["phase_seconds"]["validate"],
                "steps": metrics["steps"], "n_pseudo": metrics["n_pseudo"], "alnt": bool(metrics["alnt"]),
                "metrics_processes": metrics.get("processes", 1), "val_dice": metrics["val_dice"].get("mean")}
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def run(repeats: int = 2, steps: int = 40) -> str:
    """Interleaved rounds of every variant; a Markdown table (and the JSON in bench_output/)."""
    work = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    try:
        prepared = prepare(work, steps)
        runs: list[dict] = []
        for _ in range(repeats):
            for name, (processes, threads) in VARIANTS.items():
                runs.append({"variant": name, **_round(prepared, work, processes, threads)})
                print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path("bench_output").mkdir(exist_ok=True)
    Path("bench_output/bench_ddp_round.json").write_text(json.dumps(runs, indent=2))
    lines = ["| variant | runs | wall s (median) | train phase s | s / step | crops / step | pseudo volumes | ALNT |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (processes, _) in VARIANTS.items():
        rows = [r for r in runs if r["variant"] == name]
        train = statistics.median(r["train_s"] for r in rows)
        lines.append(f"| {name} | {len(rows)} | {statistics.median(r['wall_s'] for r in rows):.1f} | {train:.1f} | "
                     f"{train / rows[0]['steps']:.2f} | {processes * (4 if rows[0]['n_pseudo'] else 2)} | {rows[0]['n_pseudo']} | "
                     f"{'yes' if rows[0]['alnt'] else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(run(args.repeats, args.steps))


if __name__ == "__main__":
    main()
