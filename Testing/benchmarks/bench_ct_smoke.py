"""Full-size chest CT smoke run: init -> train (tiny) -> rank -> pseudo-label on two real 512x512xN CTs.

Data: ``../shared/data/pyradiomics_lung_ct`` lung1 (512x512x48, nodule) and lung2 (512x512x61, mass),
int16 HU, binary lesion masks. Not an accuracy measurement: the model trains 3 steps on lung1's mask;
the point is that a full-size CT goes through every stage without running out of memory, and what
each stage costs on this machine.

Stages, each timed (wall, s) and followed by the process's peak resident memory so far
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; the run happens in a fresh child process so earlier
benchmarks do not count):

1. ``init``: :func:`activeseg.store.initialise.init_datastore` from a dataset.json listing both CTs, with
   lung1's mask imported as an expert label (CT intensity window, no validation split).
2. ``train``: one :func:`activeseg.pipeline.training_round.train_round` (channels 4,8,16,32, crops 32x96x96, 3 steps).
3. ``rank``: :func:`activeseg.pipeline.ranking_round.rank_round` over the unlabelled case (lung2), whole volume by
   sliding window, writing its pseudo-label (``.seg.nrrd``) at full size (``strong_per_round=0``,
   weak from round 1 so the one candidate is routed weak when the model predicts any foreground).
4. ``score lung1``: the same per-case scoring (``predict_heads`` + ``score_case``) on the labelled lung1,
   so both CTs are ranked once.
5. ``pseudo-label``: :func:`activeseg.pipeline.ranking_round.pseudo_label_round`, re-writing the weak set's labels.
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

LUNG = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "pyradiomics_lung_ct"
OVERRIDES = [
    "network.channels=4,8,16,32", "training.patch_size=32,96,96", "training.epochs_first=1", "training.steps_per_epoch=3",
    "training.batch_size=1", "dsal.strong_per_round=0", "dsal.weak_start_round=1", "dsal.weak_initial=2",
    "dsal.confidence_bins=1",
]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _child(work: Path) -> dict:
    """The smoke run itself (in the child process); returns per-stage wall time and peak memory."""
    import numpy as np

    from activeseg.model.predictor import load_checkpoint, predict_heads, select_device
    from activeseg.store.initialise import init_datastore
    from activeseg.model.preprocessing import normalise_intensity
    from activeseg.pipeline.ranking_round import pseudo_label_round, rank_round, score_case
    from activeseg.pipeline.training_round import train_round

    dataset = {
        "name": "pyradiomics lung CT", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "lesion"},
        "training": [{"image": str(LUNG / f"{n}_image.nrrd"), "label": str(LUNG / f"{n}_label.nrrd")} for n in ("lung1", "lung2")],
    }
    (work / "source").mkdir(parents=True)
    (work / "source" / "dataset.json").write_text(json.dumps(dataset))
    stages = []

    def stage(name: str, started: float, note: str = "") -> None:
        stages.append({"stage": name, "seconds": time.perf_counter() - started, "peak_mib": _peak_mib(), "note": note})

    started = time.perf_counter()
    store, problems = init_datastore(work / "store", work / "source", overrides=OVERRIDES + ["training.device=cpu"])
    assert not problems, problems
    store.submit_label("lung1_image", _label(LUNG / "lung1_label.nrrd"), annotator="import")
    stage("init", started, f"{store.counts()['total']} cases, {store.counts()['val']} validation")

    started = time.perf_counter()
    model = train_round(store)
    stage("train", started, f"model v{model.version}, {model.metrics['n_expert']} expert case")

    started = time.perf_counter()
    ranking = rank_round(store)
    scores = {s.case_id: s for s in ranking.scores}
    lung2 = scores["lung2_image"]
    stage("rank", started, f"lung2 M-DSC {lung2.mdsc:.3f}, foreground {lung2.foreground_voxels} voxels; weak: {ranking.weak}")

    started = time.perf_counter()
    config = store.config
    device = select_device("cpu")
    network = load_checkpoint(model.weights_path, device)
    image = normalise_intensity(store.load_image("lung1_image").array, config.intensity)
    score, _ = score_case("lung1_image", predict_heads(network, image, config.training.patch_size, device, False), config.num_classes)
    stage("score lung1", started, f"shape {image.shape} (k, j, i), M-DSC {score.mdsc:.3f}")
    del image

    started = time.perf_counter()
    written = pseudo_label_round(store) if ranking.weak else {}
    sizes = {cid: path.stat().st_size for cid, path in written.items()}
    stage("pseudo-label", started, f"{len(written)} .seg.nrrd written ({', '.join(f'{k}: {v / 1e6:.2f} MB' for k, v in sizes.items()) or 'none: no foreground predicted'})")
    shape = tuple(int(v) for v in np.array(store.load_image("lung2_image").array.shape))
    return {"stages": stages, "lung2_shape": shape}


def _label(path: Path):  # noqa: ANN202 - Volume, imported lazily
    import numpy as np

    from activeseg.io.volumes import read_volume

    return read_volume(path, dtype=np.uint8)


def run(quick: bool) -> str:  # noqa: ARG001 - one size: the point is the full-size CT
    """Run the smoke in a child process; return a Markdown table of stage times and peak memory."""
    if not (LUNG / "lung1_image.nrrd").is_file():
        return f"skipped: {LUNG} not found (shared test data lives beside the project)"
    with tempfile.TemporaryDirectory(prefix="activeseg-ct-smoke-") as work:
        output = subprocess.run(
            [sys.executable, "-m", "Testing.benchmarks.bench_ct_smoke", "--child", work],
            check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
        ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    lines = [
        f"lung1 + lung2 chest CT (512x512x48, 512x512x61), lung2 array shape {tuple(result['lung2_shape'])}; "
        f"settings: {' '.join(OVERRIDES)}.",
        "",
        "| stage | wall s | peak RSS so far (MiB) | note |",
        "|---|---:|---:|---|",
    ]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_mib']:.0f} | {s['note']} |" for s in result["stages"]]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        import logging

        logging.basicConfig(level=logging.WARNING)
        sys.stdout.write(json.dumps(_child(Path(sys.argv[2]))) + "\n")
    else:
        sys.stdout.write(run(quick="--quick" in sys.argv) + "\n")
