"""Full-size CT through the planned pipeline: init -> plan -> train a round -> rank -> predict, and flat memory.

Data (``../shared/data``): the two pyradiomics chest CTs, lung1 (512x512x48, 0.57x0.57x5 mm, nodule) and lung2
(512x512x61, 0.63x0.63x5 mm, mass), with their lesion masks as expert labels, and TotalSegmentator's abdominal CT
(122x101x112 at 3 mm) as an unlabelled case. Not an accuracy measurement (the round trains a few steps): the point
is that real CTs go through every stage, what the plan makes of them, what each stage costs, and that predictions
keep each source image's exact geometry.

Part 1 (one fresh child process): per stage wall time and peak resident memory so far
(``ru_maxrss``); the plan (spacing, patch, channels); predictions of all three CTs written as ``.seg.nrrd`` and
read back with SimpleITK, geometry compared with the source image.

Part 2, memory as the pool grows: the same labelled round with 5 and with 50 chest CTs in the store (copies of lung1
and lung2, all labelled, so every one is preprocessed into the on-disk cache and sampled from), each in a fresh
child process; peak RSS side by side. The cache is memory-mapped, so the pool size should barely matter.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["run"]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LUNG = DATA / "pyradiomics_lung_ct"
ABDOMEN = DATA / "totalsegmentator_ct" / "example_ct.nii.gz"
# A small network and round: this measures the pipeline's cost and memory, not accuracy.
OVERRIDES = [
    "network.base_channels=4", "network.max_channels=32", "training.epochs_first=1", "training.steps_per_epoch=3",
    "training.batch_size=1", "training.device=cpu", "training.num_threads=1", "dsal.strong_per_round=1",
    "dsal.weak_start_round=1", "dsal.weak_initial=1", "dsal.confidence_bins=1",
]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _dataset(folder: Path, entries: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    dataset = {"name": "CT smoke", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "lesion"}, "training": entries}
    (folder / "dataset.json").write_text(json.dumps(dataset))
    return folder


def _pipeline(work: Path) -> dict:
    """Part 1 in the child process."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from activeseg.io.seg_nrrd import read_segmentation_labelmap, write_segmentation_file
    from activeseg.io.volumes import Geometry, read_volume
    from activeseg.model.predictor import Predictor
    from activeseg.pipeline.ranking_round import rank_round
    from activeseg.pipeline.training_round import train_round
    from activeseg.store.initialise import init_datastore

    stages = []

    def stage(name: str, started: float, note: str = "") -> None:
        stages.append({"stage": name, "seconds": time.perf_counter() - started, "peak_mib": _peak_mib(), "note": note})

    source = _dataset(work / "source", [{"image": str(LUNG / f"{n}_image.nrrd")} for n in ("lung1", "lung2")]
                      + [{"image": str(ABDOMEN)}])
    started = time.perf_counter()
    store, problems = init_datastore(work / "store", source, overrides=OVERRIDES)
    assert not problems, problems
    for name in ("lung1", "lung2"):
        store.submit_label(f"{name}_image", read_volume(LUNG / f"{name}_label.nrrd", dtype=np.uint8), annotator="import")
    stage("init", started, f"{store.counts()['total']} cases, {store.counts()['val']} validation")

    started = time.perf_counter()
    model = train_round(store)
    plan = model.metrics["plan"]
    stage("plan + train", started, f"phases {({k: round(v, 1) for k, v in model.metrics['phase_seconds'].items()})}")

    started = time.perf_counter()
    ranking = rank_round(store)
    stage("rank", started, f"{len(ranking.scores)} case(s) scored; strong {ranking.strong}, weak {ranking.weak}")

    predictor = Predictor.from_checkpoint(model.weights_path, torch.device("cpu"), amp=False)
    geometry_rows = []
    for case_id in [c.case_id for c in store.cases()]:
        started = time.perf_counter()
        volume = store.load_image(case_id)
        segmentation = predictor.segment(volume)
        path = work / f"{case_id}.seg.nrrd"
        write_segmentation_file(path, segmentation, volume.geometry, store.config.labels)
        back = sitk.ReadImage(str(path))
        same = Geometry.of(back) == volume.geometry if back.GetDimension() == 3 else False
        roundtrip = read_segmentation_labelmap(path, store.config.labels)
        stage(f"predict {case_id}", started, f"shape {volume.array.shape} (k, j, i)")
        geometry_rows.append({"case": case_id, "spacing_ijk": volume.geometry.spacing,
                              "sitk_geometry_equal": same, "labelmap_geometry_equal": roundtrip.geometry == volume.geometry,
                              "voxels_equal": bool(np.array_equal(roundtrip.array, segmentation))})
    return {"stages": stages, "plan": plan, "geometry": geometry_rows}


def _memory(work: Path, cases: int) -> dict:
    """Part 2 in the child process: a labelled round with ``cases`` chest CTs in the store."""
    import numpy as np

    from activeseg.io.volumes import read_volume
    from activeseg.pipeline.training_round import train_round
    from activeseg.store.initialise import init_datastore

    entries = []
    for index in range(cases):
        name = ("lung1", "lung2")[index % 2]
        entries.append({"image": str(LUNG / f"{name}_image.nrrd"), "label": str(LUNG / f"{name}_label.nrrd"), "copy": index})
    folder = work / "source"
    folder.mkdir(parents=True)
    for entry in entries:  # copies with their own names (a case id is the file stem)
        for key in ("image", "label"):
            target = folder / key / f"ct{entry['copy']:03d}.nrrd"
            target.parent.mkdir(exist_ok=True)
            target.symlink_to(entry[key])
            entry[key] = str(target)
    _dataset(folder, [{"image": e["image"], "label": e["label"]} for e in entries])
    started = time.perf_counter()
    # No validation split: this part measures memory while preprocessing and sampling the pool, and a full-size
    # validation pass per case would only add time.
    store, problems = init_datastore(work / "store", folder, with_labels=True, overrides=OVERRIDES + ["val_fraction=0"])
    assert not problems, problems
    after_init = _peak_mib()
    record = train_round(store)
    return {"cases": cases, "expert": record.metrics["n_expert"], "validation": record.metrics["n_validation"],
            "peak_after_init_mib": after_init, "peak_mib": _peak_mib(), "seconds": time.perf_counter() - started,
            "preprocess_s": record.metrics["phase_seconds"]["preprocess"]}


def _run_child(mode: str, *args: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="activeseg-ct-") as work:
        output = subprocess.run(
            [sys.executable, "-m", "Testing.benchmarks.bench_ct_smoke", "--child", mode, work, *args],
            check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
        ).stdout
    return json.loads(output.strip().splitlines()[-1])


def memory_report() -> str:
    """Part 2 alone: peak RSS of a labelled round with 5 and with 50 chest CTs in the store."""
    rows = [_run_child("memory", str(n)) for n in (5, 50)]
    lines = ["| CTs in the store | expert / validation | preprocess s | round s | peak RSS (MiB) | x the 5-CT store |",
             "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['cases']} | {r['expert']} / {r['validation']} | {r['preprocess_s']:.0f} | {r['seconds']:.0f} | "
              f"{r['peak_mib']:.0f} | {r['peak_mib'] / rows[0]['peak_mib']:.2f} |" for r in rows]
    return "\n".join(lines)


def run(quick: bool) -> str:
    """Both parts; a Markdown report. ``quick`` skips part 2 (the 50-CT store)."""
    if not (LUNG / "lung1_image.nrrd").is_file() or not ABDOMEN.is_file():
        return f"skipped: {DATA} not found (shared test data lives beside the project)"
    result = _run_child("pipeline")
    plan = result["plan"]
    lines = [
        f"Plan: target spacing {plan['target_spacing']} mm, patch {plan['patch_size']} voxels (k, j, i), channels "
        f"{plan['channels']}, strides {plan['strides']}, normalisation {plan['normalisation']} (clip "
        f"{[round(c) for c in plan['clip']]} HU, mean {plan['mean']:.0f}, sd {plan['sd']:.0f}); notes: {plan['notes']}.",
        f"Settings: {' '.join(OVERRIDES)}.", "",
        "| stage | wall s | peak RSS so far (MiB) | note |", "|---|---:|---:|---|",
    ]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_mib']:.0f} | {s['note']} |" for s in result["stages"]]
    lines += ["", "| case | spacing (i, j, k) mm | .seg.nrrd geometry == source (SimpleITK) | read back by the engine | voxels equal |",
              "|---|---|---|---|---|"]
    lines += [f"| {g['case']} | {tuple(round(s, 3) for s in g['spacing_ijk'])} | {g['sitk_geometry_equal']} | "
              f"{g['labelmap_geometry_equal']} | {g['voxels_equal']} |" for g in result["geometry"]]
    if not quick:
        lines += ["", memory_report()]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        import logging

        logging.basicConfig(level=logging.WARNING)
        work = Path(sys.argv[3])
        outcome = _pipeline(work) if sys.argv[2] == "pipeline" else _memory(work, int(sys.argv[4]))
        sys.stdout.write(json.dumps(outcome) + "\n")
    else:
        sys.stdout.write((memory_report() if "--memory" in sys.argv else run(quick="--quick" in sys.argv)) + "\n")
