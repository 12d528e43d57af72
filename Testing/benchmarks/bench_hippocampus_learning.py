"""Does the engine learn? Test Dice on hippocampus MRI after one training round, by labelled budget and seed.

MRI, not CT: Medical Segmentation Decathlon Task04 (Simpson et al. 2019, arXiv:1902.09063; Antonelli et al. 2022),
in ``../shared/data/hippocampus_mri``. Per seed: a fixed test split of ``--test`` volumes (never in any datastore),
then for every budget a datastore holding ``budget`` labelled training volumes plus ``--val`` labelled validation
volumes (the store's fixed validation split), drawn with the seed from the remaining volumes ("full" = all of them).
One round is trained from scratch through the product's own path (``init_datastore`` + ``train_round``: plan,
cache, augmentation, schedule, selection), then the active model segments every test volume through the
:class:`~activeseg.model.predictor.Predictor` on its source grid.

Results are appended as JSON lines to ``--out`` as each run finishes; a re-run skips the runs already there
(resumable). Run two processes at most, each with one torch thread (``--threads 1``)::

    python -m Testing.benchmarks.bench_hippocampus_learning --seeds 0 1 2 3 4 --budgets 6 10 full --out RESULTS.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from activeseg.config import Config, apply_overrides
from activeseg.io.volumes import read_volume
from activeseg.model.predictor import Predictor
from activeseg.pipeline.training_round import train_round
from activeseg.store.initialise import init_datastore

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hippocampus_mri"
logger = logging.getLogger("activeseg.bench.hippocampus")


def _dice(prediction: np.ndarray, truth: np.ndarray, value: int) -> float:
    p, t = prediction == value, truth == value
    total = int(p.sum() + t.sum())
    return 2.0 * int(np.logical_and(p, t).sum()) / total if total else 1.0


def _subset(folder: Path, source: dict, entries: list[dict]) -> Path:
    """An MSD dataset.json listing ``entries`` with absolute paths, in ``folder``."""
    subset = dict(source)
    subset["training"] = [{"image": str(DATA / e["image"]), "label": str(DATA / e["label"])} for e in entries]
    subset["numTraining"] = len(entries)
    path = folder / "dataset.json"
    path.write_text(json.dumps(subset))
    return path


def _log_validation(event: dict) -> None:
    """Progress: one log line per validation point (a round's epochs)."""
    if event.get("phase") == "validate" and "val_dice" in event:  # a finished pass (not the "running" notice)
        logger.info("epoch %d/%d: loss %.3f, validation Dice %s, %.0f s", event["epoch"], event["epochs"],
                    event.get("loss", float("nan")), event["val_dice"], event.get("elapsed_s", 0.0))


def run_one(seed: int, budget: str, n_test: int, n_val: int, overrides: list[str], work: Path) -> dict:
    """Train one round on ``budget`` labelled volumes with ``seed``; return test Dice and costs."""
    source = json.loads((DATA / "dataset.json").read_text())
    entries = sorted(source["training"], key=lambda e: e["image"])
    random.Random(seed).shuffle(entries)
    test, rest = entries[:n_test], entries[n_test:]
    val, pool = rest[:n_val], rest[n_val:]
    train = pool if budget == "full" else pool[: int(budget)]
    folder = Path(tempfile.mkdtemp(dir=work))
    try:
        config = Config()
        config.val_fraction = len(val) / (len(val) + len(train))
        apply_overrides(config, overrides)
        # The store's validation draw is seeded; list val first so the draw picks among train+val alike.
        store, _ = init_datastore(folder / "store", _subset(folder, source, train + val), with_labels=True,
                                  config=config, seed=seed)
        started = time.perf_counter()
        record = train_round(store, progress=_log_validation)
        seconds = time.perf_counter() - started
        predictor = Predictor.from_checkpoint(record.weights_path, torch.device("cpu"), amp=False)
        per_case = []
        for entry in test:
            image = read_volume(DATA / entry["image"])
            truth = read_volume(DATA / entry["label"], dtype=np.uint8).array
            prediction = predictor.segment(image)
            per_case.append([_dice(prediction, truth, 1), _dice(prediction, truth, 2)])
        dice = np.asarray(per_case)
        return {
            "seed": seed, "budget": budget, "n_train": len(store.cases(split="train")),
            "n_val": len(store.cases(split="val")), "n_test": len(test),
            "test_dice_anterior": float(dice[:, 0].mean()), "test_dice_posterior": float(dice[:, 1].mean()),
            "test_dice_mean": float(dice.mean()), "min_class_dice": float(dice.mean(axis=0).min()),
            "val_dice": record.metrics["val_dice"], "steps": record.metrics["steps"],
            "best_epoch": record.metrics["best_epoch"], "train_seconds": seconds,
            "phase_seconds": record.metrics["phase_seconds"], "plan": record.metrics["plan"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "overrides": overrides, "threads": torch.get_num_threads(),
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def summarise(path: Path, tag: str) -> str:
    """A Markdown table of the results file: per budget, test Dice mean and sd over seeds, per class, the lowest
    class Dice of any run (collapse check), training time and peak memory."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [r for r in rows if r["tag"] == tag]
    budgets = sorted({r["budget"] for r in rows}, key=lambda b: (b == "full", int(b) if b != "full" else 0))
    lines = ["| labelled (train) | seeds | test Dice mean ± sd | anterior | posterior | lowest class Dice of a run | "
             "steps | train s (mean) | peak RSS MiB (max) |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for budget in budgets:
        group = [r for r in rows if r["budget"] == budget]
        mean = np.array([r["test_dice_mean"] for r in group])
        lines.append(
            f"| {budget} ({group[0]['n_train']}) | {len(group)} | {mean.mean():.3f} ± {mean.std(ddof=1) if len(group) > 1 else 0:.3f} | "
            f"{np.mean([r['test_dice_anterior'] for r in group]):.3f} | {np.mean([r['test_dice_posterior'] for r in group]):.3f} | "
            f"{min(r['min_class_dice'] for r in group):.3f} | {group[0]['steps']} | "
            f"{np.mean([r['train_seconds'] for r in group]):.0f} | {max(r['peak_rss_mib'] for r in group):.0f} |"
        )
    return "\n".join(lines)


# The configuration the recorded results used (RESULTS.md): an 8-channel base network and at most 1,200 steps,
# sized so that 5 seeds fit a session on 2 CPU cores.
RECORDED = ["network.base_channels=8", "training.max_steps=1200", "training.num_threads=1"]


def run(quick: bool) -> str:
    """For ``make bench``: the recorded configuration (5 seeds x 6, 10, all labelled; hours on 2 CPU cores), or with
    ``quick`` one seed at 6 labelled volumes. Results go to ``bench_output/hippocampus.jsonl`` (resumable)."""
    out = Path("bench_output") / "hippocampus.jsonl"
    out.parent.mkdir(exist_ok=True)
    seeds, budgets = (["0"], ["6"]) if quick else (["0", "1", "2", "3", "4"], ["6", "10", "full"])
    args = ["--seeds", *seeds, "--budgets", *budgets, "--tag", "bench", "--out", str(out)]
    main(args + [a for item in RECORDED for a in ("--set", item)])
    return summarise(out, "bench") if out.exists() else "skipped: no hippocampus data"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--budgets", nargs="+", default=["6", "10", "full"])
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--val", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.name=value")
    parser.add_argument("--tag", default="default", help="name of this configuration in the results file")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--summarise", action="store_true", help="print the results table of --tag and exit")
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise(args.out, args.tag))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not (DATA / "dataset.json").exists():
        print(f"skipped: {DATA} is absent (the hippocampus set lives in ../shared/data beside the project)")
        return 0
    torch.set_num_threads(args.threads)
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["tag"], row["seed"], row["budget"]))
    work = Path(tempfile.mkdtemp(prefix="hippo-"))
    try:
        for budget in args.budgets:
            for seed in args.seeds:
                if (args.tag, seed, budget) in done:
                    continue
                row = run_one(seed, budget, args.test, args.val, args.overrides, work)
                row["tag"] = args.tag
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"{args.tag} seed {seed} budget {budget}: test Dice {row['test_dice_mean']:.3f} "
                      f"(anterior {row['test_dice_anterior']:.3f}, posterior {row['test_dice_posterior']:.3f}), "
                      f"{row['train_seconds']:.0f} s", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
