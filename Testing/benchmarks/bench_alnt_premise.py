"""Does ALNT weight bad pseudo-labels lower, and does that protect the model? A controlled test (issue 11).

In the hippocampus campaign (RESULTS.md, "Issue 11") ALNT's per-crop weight did not correlate with the
pseudo-label's true Dice, but nearly all pseudo-labels there were of one quality, so there was little to detect.
Here half the pseudo-labels are the truth and half are deliberately wrong, and the question is asked directly.

Per seed, on hippocampus MRI (``../shared/data/hippocampus_mri``; skipped with a message when absent)::

    split        the dataset's volumes shuffled with the seed: ``--test`` test volumes (never in the datastore),
                 then ``--val`` + ``--experts`` + ``--pseudo`` volumes that go into a datastore with their labels;
                 the datastore draws its validation split (``--val`` volumes) among them with the seed, and the
                 rest are shuffled with the seed into E experts and P pseudo-labelled volumes.
    pseudo       the first P/2 keep their true label ("good"); the others get a corrupted one ("bad"):
                 ``swap`` exchanges the two classes (Anterior 1 <-> Posterior 2: the class confusion the campaign
                 feared), ``erase`` removes the Posterior class (2 -> background: the collapse the campaign saw
                 on seed 2, where every pseudo-label missed it). Built from the expert cache entry of the same
                 volume with the label array replaced (:func:`pseudo_case`), so grid, plan and crops are the
                 engine's own.
    stage 1      a model trained from scratch on the E experts only, through the engine's plan
                 (:func:`~activeseg.pipeline.training_round.plan_round` with ``network.base_channels=8``, patch
                 32x48x32, batch 2) and its from-scratch rule (a model that has not learned a class trains once
                 more from another seed); 280 steps (the campaign's ``200 + 10 x 8``), 8 validation points.
    stage 2      from stage 1's weights, ``--steps`` steps (200) with 5 validation points, in three arms with the
                 same seed (same expert crops):
                 (a) experts + all P pseudo-labels, ALNT on (the product's default, fused path);
                 (b) experts + all P pseudo-labels, ALNT off (``alnt.enabled=false``: pseudo crops join the batch
                     at the experts' weight, as ``activeseg simulate --no-alnt`` trains);
                 (c) experts + only the good pseudo-labels, ALNT off: the oracle filter, an upper bound.

Every model keeps its best validation epoch (the engine's selection). Measured: in arm (a), every pseudo crop's
final ALNT weight (:class:`~activeseg.experiments.pseudo_quality.CropWeightRecorder`) with the crop's true Dice
(pseudo-label against truth inside the crop's box on the planned grid, before augmentation) and its group (good or
bad); per group the mean weight and the share of crops weighted zero; Spearman(weight, true crop Dice)
(:func:`~activeseg.experiments.pseudo_quality.spearman`); the probability that a good crop outweighs a bad one
(ties one half); the recorder's own summary (within-step concordance, as the campaign reported it). Test Dice (mean
and per class, :func:`~activeseg.experiments.simulation.evaluate_test_split` through the
:class:`~activeseg.model.predictor.Predictor` on the source grids) of stage 1 and of arms a, b, c.

Results are appended to ``--out`` (JSON lines) as each seed finishes; a re-run skips the seeds already there with
the same settings (resumable). One torch thread; about 13 minutes per seed on one core of the 2-core team machine
under load (quick run with 60/40 steps: 0.49 s per stage-1 step, 1.28 per ALNT step, 0.8 per step without ALNT)::

    OMP_NUM_THREADS=1 python -m Testing.benchmarks.bench_alnt_premise --seeds 0 1 --out alnt_premise.jsonl
    OMP_NUM_THREADS=1 python -m Testing.benchmarks.bench_alnt_premise --quick --out /tmp/premise_quick.jsonl
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from activeseg.config import Config, apply_overrides
from activeseg.errors import ConfigError
from activeseg.experiments.pseudo_quality import CropWeightRecorder, spearman
from activeseg.experiments.simulation import evaluate_test_split
from activeseg.io.volumes import Volume, read_geometry, read_volume
from activeseg.method.metrics import mean_dice
from activeseg.model.case_cache import CachedCase
from activeseg.model.network import DeepSupervisedUNet3D
from activeseg.model.plan import Plan, target_spacing_of
from activeseg.model.predictor import Predictor
from activeseg.pipeline.training_round import TrainingData, load_training_data, plan_round, train_model
from activeseg.pipeline.training_round import _train_attempts  # the engine's from-scratch rule (retry an unlearned class)
from activeseg.store.initialise import init_datastore
from activeseg.store.sources import find_source
from Testing.benchmarks.jsonl_results import format_number, mean_present, read_records, run_missing_seeds

__all__ = ["CORRUPTIONS", "corrupt_label", "pseudo_case", "Settings", "run_seed", "summarise", "run", "main"]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hippocampus_mri"
CORRUPTIONS = ("swap", "erase")
ARMS = ("alnt", "no_alnt", "good_only")
ARM_TITLES = {"alnt": "a: all pseudo, ALNT", "no_alnt": "b: all pseudo, no ALNT", "good_only": "c: good pseudo only"}
# The campaign's network and crops (RESULTS.md, issue 11), one torch thread.
CAMPAIGN = ["network.base_channels=8", "training.patch_size=32,48,32", "training.batch_size=2", "training.num_threads=1"]

logger = logging.getLogger("activeseg.bench.alnt_premise")


def corrupt_label(label: np.ndarray, kind: str) -> np.ndarray:
    """A deliberately wrong copy of a hippocampus label map (any shape; values 0 background, 1 Anterior, 2 Posterior).

    ``swap``: 1 -> 2 and 2 -> 1; ``erase``: 2 -> 0. Every other value is kept. The input is not modified.

    Raises:
        ConfigError: ``kind`` is not one of :data:`CORRUPTIONS`.
    """
    source = np.asarray(label)
    result = source.copy()
    if kind == "swap":
        result[source == 1] = 2
        result[source == 2] = 1
    elif kind == "erase":
        result[source == 2] = 0
    else:
        raise ConfigError(f"unknown corruption {kind!r}; choose from {', '.join(CORRUPTIONS)}")
    return result


def pseudo_case(case: CachedCase, kind: str | None) -> CachedCase:
    """A pseudo-labelled training case made from an expert case's cache entry: its true label (``kind`` None) or
    :func:`corrupt_label` of it, on the same planned grid; foreground locations follow the label (swapped classes
    swap their lists, an erased class loses its list), so foreground-centred crops stay on the pseudo-label's
    foreground as they would for a pseudo-label file."""
    if kind is None:
        return case
    assert case.label is not None, f"{case.case_id}: an expert case without a label"
    label = corrupt_label(np.asarray(case.label), kind)
    if kind == "swap":
        locations = {({1: 2, 2: 1}.get(value, value)): voxels for value, voxels in case.locations.items()}
    else:
        locations = {value: voxels for value, voxels in case.locations.items() if value != 2}
    return dataclasses.replace(case, label=label, locations=dict(sorted(locations.items())))


@dataclasses.dataclass(frozen=True)
class Settings:
    """One configuration of the benchmark (everything a seed's result depends on besides the seed).

    Attributes:
        corruption: kind of bad pseudo-label (:data:`CORRUPTIONS`).
        n_test, n_val, n_experts, n_pseudo: volumes per role; half of ``n_pseudo`` (rounded down) are good.
        stage1_steps, stage2_steps: optimiser steps from scratch and per warm-started arm.
        stage1_epochs, stage2_epochs: validation points (the engine's ``epochs_first`` / ``epochs_per_round``).
        overrides: ``--set`` strings on top of :data:`CAMPAIGN`.
    """

    corruption: str = "swap"
    n_test: int = 20
    n_val: int = 4
    n_experts: int = 8
    n_pseudo: int = 8
    stage1_steps: int = 280
    stage2_steps: int = 200
    stage1_epochs: int = 8
    stage2_epochs: int = 5
    overrides: tuple[str, ...] = ()

    @classmethod
    def quick(cls, corruption: str = "swap", stage2_steps: int | None = None) -> Settings:
        """Tiny sizes that check the benchmark runs end to end (minutes on one thread); numbers mean nothing."""
        return cls(corruption, n_test=3, n_val=2, n_experts=2, n_pseudo=2, stage1_steps=16,
                   stage2_steps=stage2_steps or 8, stage1_epochs=2, stage2_epochs=2)

    def key(self) -> str:
        """The settings as one string: results with the same key are comparable (and a re-run skips their seeds)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def _config(settings: Settings, seed: int, n_store: int) -> tuple[Config, list[str]]:
    overrides = [*CAMPAIGN, f"training.seed={seed}", f"training.epochs_first={settings.stage1_epochs}",
                 f"training.epochs_per_round={settings.stage2_epochs}", *settings.overrides]
    config = Config()
    config.val_fraction = settings.n_val / n_store
    return config, overrides


def _crop_scores(recorder: CropWeightRecorder, truth: dict[str, CachedCase], pseudo: dict[str, CachedCase],
                 bad: set[str], classes: list[int]) -> list[dict[str, Any]]:
    """Every recorded pseudo crop: step, case, group, ALNT weight and true Dice on the planned grid."""
    crops = []
    for step, origin, weight in recorder.records:
        box = origin.slices()
        dice = mean_dice(np.asarray(pseudo[origin.case_id].label)[box], np.asarray(truth[origin.case_id].label)[box], classes)
        crops.append({"step": step, "case": origin.case_id, "bad": origin.case_id in bad, "weight": weight, "dice": dice})
    return crops


def _weight_statistics(crops: list[dict[str, Any]]) -> dict[str, Any]:
    """Per group (good, bad): crops, mean weight, share weighted zero, mean true Dice; Spearman(weight, Dice) over
    all crops; P(a good crop's weight > a bad crop's), ties one half."""
    result: dict[str, Any] = {"crops": len(crops)}
    for group, is_bad in (("good", False), ("bad", True)):
        members = [c for c in crops if c["bad"] == is_bad]
        weights = np.asarray([c["weight"] for c in members])
        result[group] = {
            "crops": len(members),
            "mean_weight": float(weights.mean()) if len(members) else None,
            "zero_share": float((weights == 0).mean()) if len(members) else None,
            "mean_dice": float(np.mean([c["dice"] for c in members])) if members else None,
        }
    result["spearman"] = spearman([c["weight"] for c in crops], [c["dice"] for c in crops])
    good = np.asarray([c["weight"] for c in crops if not c["bad"]])
    bad = np.asarray([c["weight"] for c in crops if c["bad"]])
    if len(good) and len(bad):
        result["p_good_above_bad"] = float(np.mean((good[:, None] > bad[None, :]) + 0.5 * (good[:, None] == bad[None, :])))
    else:
        result["p_good_above_bad"] = None
    return result


def _test_dice(model: DeepSupervisedUNet3D, plan: Plan, config: Config, test: list[tuple[str, Path, Path]]) -> dict[str, Any]:
    """Test Dice per class and mean (:func:`evaluate_test_split`), and per case."""
    dice = evaluate_test_split(Predictor(model, plan, torch.device("cpu"), config.training.amp), test, config)
    return {**dice["per_class"], "mean": dice["mean"], "per_case": dice["per_case_mean"]}


def run_seed(seed: int, settings: Settings, work: Path) -> dict[str, Any]:
    """One seed: split, stage 1, the three stage-2 arms, crop weights against truth; a JSON-ready record."""
    started = time.perf_counter()
    found = find_source(DATA)
    images = dict(found.images)
    ids = sorted(cid for cid in images if cid in found.labels)
    random.Random(seed).shuffle(ids)
    n_store = settings.n_val + settings.n_experts + settings.n_pseudo
    if settings.n_test + n_store > len(ids):
        raise ConfigError(f"{settings.n_test} test + {n_store} other volumes, but the dataset has {len(ids)}")
    test_ids, store_ids = sorted(ids[:settings.n_test]), sorted(ids[settings.n_test:settings.n_test + n_store])
    source = json.loads((DATA / "dataset.json").read_text())
    subset = {k: v for k, v in source.items() if k not in ("training", "test", "numTraining", "numTest")}
    subset["training"] = [{"image": str(images[c].resolve()), "label": str(found.labels[c].resolve())} for c in store_ids]
    subset["numTraining"] = len(store_ids)
    folder = Path(tempfile.mkdtemp(prefix=f"seed{seed}-", dir=work))
    (folder / "dataset.json").write_text(json.dumps(subset))
    config, overrides = _config(settings, seed, n_store)
    store, problems = init_datastore(folder / "store", folder / "dataset.json", with_labels=True, overrides=overrides,
                                     seed=seed, config=config)
    if problems:
        raise ConfigError(f"hippocampus data could not be imported: {problems}")
    config = store.config
    classes = list(config.labels)
    train_ids = [c.case_id for c in store.cases(split="train")]
    random.Random(seed * 7919 + 1).shuffle(train_ids)
    expert_ids, pseudo_ids = sorted(train_ids[:settings.n_experts]), train_ids[settings.n_experts:]
    good_ids, bad_ids = sorted(pseudo_ids[:settings.n_pseudo // 2]), sorted(pseudo_ids[settings.n_pseudo // 2:])
    geometries = {cid: read_geometry(store.case(cid).image_path) for cid in expert_ids}
    spacing = target_spacing_of(np.asarray([tuple(reversed(g.spacing)) for g in geometries.values()]))[0]
    cached = load_training_data(store, spacing)
    by_id = {c.case_id: c for c in cached.experts}
    experts = [by_id[c] for c in expert_ids]
    pseudo = {c: pseudo_case(by_id[c], settings.corruption if c in bad_ids else None) for c in good_ids + bad_ids}
    device = torch.device("cpu")
    plan, _ = plan_round(store, TrainingData(experts=experts), spacing, device, geometries)
    test = [(cid, images[cid], found.labels[cid]) for cid in test_ids]
    logger.info("seed %d: %d test, %d validation, %d experts, %d good + %d %s pseudo-labels; patch %s, channels %s",
                seed, len(test), len(cached.validation), len(experts), len(good_ids), len(bad_ids), settings.corruption,
                plan.patch_size, plan.channels)

    stage_started = time.perf_counter()
    stage1, metrics1 = _train_attempts(None, TrainingData(experts=experts, validation=cached.validation), plan, config,
                                       settings.stage1_steps, settings.stage1_epochs, device, None, 0, None, None)
    stage1_seconds = time.perf_counter() - stage_started
    eval_started = time.perf_counter()
    record: dict[str, Any] = {
        "key": settings.key(), "seed": seed, "corruption": settings.corruption, "test_cases": test_ids,
        "val_cases": sorted(c.case_id for c in cached.validation), "expert_cases": expert_ids,
        "good_pseudo": good_ids, "bad_pseudo": bad_ids, "plan": plan.to_dict(), "overrides": overrides,
        "pseudo_volume_dice": {c: mean_dice(np.asarray(pseudo[c].label), np.asarray(by_id[c].label), classes) for c in pseudo},
        "stage1": {"test_dice": _test_dice(stage1, plan, config, test), "val_dice": metrics1["val_dice"],
                   "val_history": metrics1["val_history"], "best_epoch": metrics1["best_epoch"],
                   "attempts": metrics1["attempts"], "train_s": stage1_seconds, "steps": metrics1["steps"]},
    }
    record["stage1"]["eval_s"] = time.perf_counter() - eval_started
    logger.info("seed %d stage 1: test Dice %.3f, %.0f s", seed, record["stage1"]["test_dice"]["mean"], stage1_seconds)

    arms: dict[str, Any] = {}
    for arm in ARMS:
        arm_config = copy.deepcopy(config)
        arm_config.alnt.enabled = arm == "alnt"
        arm_pseudo = [pseudo[c] for c in (good_ids if arm == "good_only" else good_ids + bad_ids)]
        recorder = CropWeightRecorder() if arm == "alnt" else None
        model = copy.deepcopy(stage1)
        stage_started = time.perf_counter()
        metrics = train_model(model, TrainingData(experts=experts, pseudo=arm_pseudo, validation=cached.validation),
                              plan, arm_config, settings.stage2_steps, settings.stage2_epochs, device,
                              seed=config.training.seed + 1, weight_observer=recorder)
        train_s = time.perf_counter() - stage_started
        eval_started = time.perf_counter()
        arms[arm] = {"test_dice": _test_dice(model, plan, config, test), "val_dice": metrics["val_dice"],
                     "val_history": metrics["val_history"], "best_epoch": metrics["best_epoch"], "alnt": metrics["alnt"],
                     "train_s": train_s, "phase_seconds": metrics["phase_seconds"], "steps": metrics["steps"],
                     "eval_s": time.perf_counter() - eval_started}
        if recorder is not None:
            crops = _crop_scores(recorder, by_id, pseudo, set(bad_ids), classes)
            truth_volumes = {c: read_volume(found.labels[c], dtype=np.uint8) for c in pseudo}
            pseudo_volumes = {c: Volume(corrupt_label(v.array, settings.corruption) if c in bad_ids else v.array, v.geometry)
                              for c, v in truth_volumes.items()}
            arms[arm]["weights"] = _weight_statistics(crops)
            arms[arm]["recorder_summary"] = recorder.summary(pseudo_volumes, {c: found.labels[c] for c in pseudo}, classes, spacing)
            arms[arm]["crops"] = crops
        logger.info("seed %d arm %s: test Dice %.3f, %.0f s", seed, arm, arms[arm]["test_dice"]["mean"], train_s)
    record["arms"] = arms
    record["seconds"] = time.perf_counter() - started
    record["threads"] = torch.get_num_threads()
    shutil.rmtree(folder, ignore_errors=True)
    return record




def summarise(records: list[dict[str, Any]]) -> str:
    """Markdown tables of the records (one configuration): per seed and the mean over seeds."""
    if not records:
        return "no results"
    records = sorted(records, key=lambda r: r["seed"])
    labels = [name for name in records[0]["stage1"]["test_dice"] if name not in ("mean", "per_case")]
    settings = json.loads(records[0]["key"])
    head = (f"Hippocampus MRI, corruption `{settings['corruption']}`: {settings['n_experts']} experts, "
            f"{settings['n_pseudo'] // 2} good + {settings['n_pseudo'] - settings['n_pseudo'] // 2} bad pseudo-labels, "
            f"{settings['n_val']} validation, {settings['n_test']} test volumes; stage 1 {settings['stage1_steps']} steps "
            f"from scratch, each arm {settings['stage2_steps']} steps from stage 1; one torch thread.")
    lines = [head, "", "ALNT weights of the pseudo-labelled crops (arm a):", "",
             "| seed | crops | mean w good | mean w bad | zero-weighted good | zero-weighted bad | crop Dice good / bad | "
             "Spearman(w, crop Dice) | P(w good > w bad) | concordance |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]

    def weight_row(name: str, group: list[dict[str, Any]]) -> str:
        w = [r["arms"]["alnt"]["weights"] for r in group]
        s = [r["arms"]["alnt"]["recorder_summary"] for r in group]
        return (f"| {name} | {sum(x['crops'] for x in w)} | {format_number(mean_present([x['good']['mean_weight'] for x in w]))} | "
                f"{format_number(mean_present([x['bad']['mean_weight'] for x in w]))} | {format_number(mean_present([x['good']['zero_share'] for x in w]), 2)} | "
                f"{format_number(mean_present([x['bad']['zero_share'] for x in w]), 2)} | {format_number(mean_present([x['good']['mean_dice'] for x in w]), 2)} / "
                f"{format_number(mean_present([x['bad']['mean_dice'] for x in w]), 2)} | {format_number(mean_present([x['spearman'] for x in w]))} | "
                f"{format_number(mean_present([x['p_good_above_bad'] for x in w]))} | {format_number(mean_present([x['concordance'] for x in s]))} |")

    lines += [weight_row(str(r["seed"]), [r]) for r in records]
    if len(records) > 1:
        lines.append(weight_row(f"mean of {len(records)}", records))
    columns = [("stage1", "stage 1 (experts)")] + [(arm, ARM_TITLES[arm]) for arm in ARMS]
    lines += ["", f"Test Dice, mean ({' / '.join(labels)}):", "",
              "| seed | " + " | ".join(title for _, title in columns) + " | a - b | a - c |",
              "|---|" + "---|" * len(columns) + "---:|---:|"]

    def dice_of(record: dict[str, Any], column: str) -> dict[str, Any]:
        return record["stage1"]["test_dice"] if column == "stage1" else record["arms"][column]["test_dice"]

    def dice_row(name: str, group: list[dict[str, Any]]) -> str:
        cells = []
        for column, _ in columns:
            mean = mean_present([dice_of(r, column)["mean"] for r in group])
            per_class = " / ".join(format_number(mean_present([dice_of(r, column)[label] for r in group])) for label in labels)
            cells.append(f"{format_number(mean)} ({per_class})")
        a_b = mean_present([dice_of(r, "alnt")["mean"] - dice_of(r, "no_alnt")["mean"] for r in group])
        a_c = mean_present([dice_of(r, "alnt")["mean"] - dice_of(r, "good_only")["mean"] for r in group])
        return f"| {name} | " + " | ".join(cells) + f" | {a_b:+.3f} | {a_c:+.3f} |"

    lines += [dice_row(str(r["seed"]), [r]) for r in records]
    if len(records) > 1:
        lines.append(dice_row(f"mean of {len(records)}", records))
    seconds = [r["seconds"] for r in records]
    lines += ["", "Best validation epoch (stage 1; a, b, c): " + "; ".join(
        f"seed {r['seed']}: {r['stage1']['best_epoch']}; " + ", ".join(str(r["arms"][a]["best_epoch"]) for a in ARMS)
        for r in records), f"Wall time per seed: {', '.join(f'{s / 60:.1f}' for s in seconds)} min."]
    return "\n".join(lines)


def run_benchmark(seeds: list[int], settings: Settings, out: Path) -> str:
    """Run the seeds not yet in ``out`` with ``settings`` (appending each as it finishes); the tables of all of
    this configuration's seeds in ``out``."""
    if not (DATA / "dataset.json").is_file():
        return f"skipped: {DATA} not found (the hippocampus set lives in ../shared/data beside the project)"
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="alnt-premise-"))
    try:
        records = run_missing_seeds(seeds, settings.key(), out, lambda seed: run_seed(seed, settings, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summarise(records)


def run(quick: bool) -> str:
    """For ``make bench`` (``run_all``): seeds 0 and 1 with ``swap`` (about 13 minutes per seed on one busy CPU thread), or
    with ``quick`` one tiny seed. Results: ``bench_output/alnt_premise.jsonl`` (resumable)."""
    settings = Settings.quick() if quick else Settings()
    return run_benchmark([0] if quick else [0, 1], settings, Path("bench_output") / "alnt_premise.jsonl")


def main(argv: list[str] | None = None) -> int:
    """Command line; returns an exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 (--quick: 0)")
    parser.add_argument("--out", type=Path, default=Path("bench_output") / "alnt_premise.jsonl",
                        help="JSON-lines results file (appended; seeds already there with the same settings are skipped)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps of each stage-2 arm (default 200)")
    parser.add_argument("--stage1-steps", type=int, default=None, help="optimiser steps of stage 1 (default 280)")
    parser.add_argument("--corruption", choices=CORRUPTIONS, default="swap",
                        help="bad pseudo-labels: swap Anterior/Posterior, or erase Posterior")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that it runs, numbers mean nothing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.name=value (engine setting)")
    parser.add_argument("--summarise", action="store_true", help="print the tables of --out for these settings and exit")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = [0] if args.quick else [0, 1]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    apply_overrides(Config(), [*CAMPAIGN, *args.overrides])  # a bad --set fails now, not after stage 1
    settings = Settings.quick(args.corruption, args.steps) if args.quick else Settings(args.corruption)
    changes: dict[str, Any] = {"overrides": tuple(args.overrides)}
    if args.steps is not None:
        changes["stage2_steps"] = args.steps
    if args.stage1_steps is not None:
        changes["stage1_steps"] = args.stage1_steps
    settings = dataclasses.replace(settings, **changes)
    if args.summarise:
        sys.stdout.write(summarise([r for r in read_records(args.out) if r.get("key") == settings.key() and r["seed"] in args.seeds]) + "\n")
        return 0
    sys.stdout.write(run_benchmark(args.seeds, settings, args.out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
