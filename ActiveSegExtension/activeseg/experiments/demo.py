"""``activeseg demo``: the whole active-learning loop on generated phantoms, with a simulated radiologist.

24 small CT-like phantoms; 4 of them drawn into the fixed validation split (labelled by the simulated
radiologist, never trained on); 4 expert labels to start; then 3 rounds of train -> rank -> the
radiologist labels the queued cases. From round 2 the model also pseudo-labels its confident, agreeing
cases, which train with ALNT re-weighting. Prints a table per round and leaves, for 3D Slicer:

* ``pseudo_labels/round_N/<case>.seg.nrrd``: every pseudo-label a ranking wrote (those of round N train round
  N + 1; the last round's are the ones pending review), so the folder is not empty when the last ranking
  happens to route no case to the weak labeller;
* ``predictions/<case>.seg.nrrd``: the final model's segmentation of every case;
* ``learning_curve.png``. Each segmentation lies on its image's grid (the image paths are printed).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from activeseg.io.atomic import atomic_write
from activeseg.io.seg_nrrd import write_segmentation_file
from activeseg.model.predictor import Predictor, select_device
from activeseg.store.datastore import Datastore

from activeseg.config import Config
from activeseg.cli.console import ProgressBar, format_table
from activeseg.store.cases import CaseState
from activeseg.errors import DatastoreError
from activeseg.store.initialise import init_datastore
from activeseg.experiments.oracle import SimulatedRadiologist
from activeseg.experiments.phantoms import write_phantom_dataset
from activeseg.experiments.plotting import plot_learning_curve
from activeseg.pipeline.ranking_round import rank_round
from activeseg.pipeline.training_round import train_round

__all__ = ["demo_config", "run_demo", "write_final_predictions"]

logger = logging.getLogger(__name__)


def demo_config() -> Config:
    """Settings sized for 2 CPU cores: a narrow network, short rounds, pseudo-labels from round 2.

    No dropout: DSAL needs none (one deterministic pass), and without it ALNT's step reuses the expert
    backward as its reference gradient (the fused, cheaper path).
    """
    config = Config()
    config.network.dropout = 0.0
    config.training.class_balance = True  # lesions are ~0.1 % of voxels
    config.val_fraction = 4 / 24
    config.network.channels = (8, 16, 32, 64)
    config.training.patch_size = (32, 48, 48)
    config.training.learning_rate = 3e-3
    # The first round trains from scratch, later ones fine-tune (the default): 10 validation points x 15 steps =
    # 150 steps per round.
    config.training.epochs_first = 10
    config.training.epochs_per_round = 10
    config.training.steps_per_epoch = 15
    config.dsal.strong_per_round = 4
    config.dsal.weak_start_round = 2
    config.dsal.weak_initial = 3
    config.dsal.weak_increment = 3
    # ~16 unlabelled cases: 10 equal-width confidence bins would leave the top bin one or two cases wide.
    config.dsal.confidence_bins = 4
    return config


def _shown(path: Path) -> str:
    """``path`` as the user can type it from where the demo was started (relative when under the cwd)."""
    try:
        return os.path.relpath(path.resolve(), Path.cwd()) if path.resolve().is_relative_to(Path.cwd()) else str(path.resolve())
    except (OSError, ValueError):
        return str(path)


def _keep_pseudo_labels(store: Datastore, case_ids: list[str], folder: Path) -> list[Path]:
    """Copy the pseudo-labels a ranking just wrote (before the next ranking replaces them) into ``folder``."""
    kept = []
    for case_id in case_ids:
        record = store.case(case_id)
        if record.pseudo_path is None:  # not taken (e.g. the case was labelled meanwhile)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{case_id}.seg.nrrd"
        shutil.copyfile(record.pseudo_path, target)
        kept.append(target)
    return kept


def write_final_predictions(store: Datastore, folder: Path) -> list[Path]:
    """Segment every case with the active model into ``folder/<case>.seg.nrrd`` (on each image's own grid).

    Raises:
        ModelVersionError: no model yet.
    """
    from activeseg.errors import ModelVersionError

    version = store.active_version()
    if version is None:
        raise ModelVersionError("no model yet: nothing to predict with")
    settings = store.config.training
    predictor = Predictor.from_checkpoint(store.model(version).weights_path, select_device(settings.device), settings.amp)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for record in store.cases():
        volume = store.load_image(record.case_id)
        labelmap = predictor.segment(volume)
        target = folder / f"{record.case_id}.seg.nrrd"
        atomic_write(target, lambda path: write_segmentation_file(path, labelmap, volume.geometry, store.config))
        written.append(target)
    return written


def run_demo(
    out: Path, cases: int = 24, rounds: int = 3, initial_labels: int = 4, seed: int = 0, progress: bool = True,
    config: Config | None = None, shape: tuple[int, int, int] = (32, 64, 64),
) -> dict:
    """Run the demo into ``out`` (an earlier demo's output there is replaced) and return its summary.

    Args:
        config: settings (default: :func:`demo_config`); tests pass a tiny network.
        shape: phantom size (k, j, i) voxels.

    Returns:
        ``{"rounds": [per-round dict], "curve": png path, "pseudo_labels": [paths, all rounds],
        "predictions": [paths], "seconds": wall time}``.
    """
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        # Only ever delete what an earlier demo wrote: never a folder the user keeps other things in.
        if not (out / "store" / ".activeseg").is_dir():
            raise DatastoreError(f"{out} exists and is not an earlier demo output: choose another --out")
        shutil.rmtree(out)
    logger.info("Generating %d phantoms in %s ...", cases, out / "phantoms")
    write_phantom_dataset(out / "phantoms", cases, seed=seed, shape=shape)
    store, _ = init_datastore(out / "store", out / "phantoms", config=config or demo_config(), seed=seed)
    radiologist = SimulatedRadiologist.from_folder(out / "phantoms" / "labelsTr")
    for record in store.cases(split="val"):
        radiologist.label(store, record.case_id)
    for record in store.cases(split="train")[:initial_labels]:
        radiologist.label(store, record.case_id)

    summary_rows = []
    pseudo_dir = out / "pseudo_labels"
    pseudo_files: list[Path] = []
    for round_index in range(1, rounds + 1):
        bar = ProgressBar(f"round {round_index}: training", enabled=progress)
        model = train_round(store, progress=bar)
        bar.close()
        bar = ProgressBar(f"round {round_index}: ranking", enabled=progress)
        ranking = rank_round(store, progress=bar)
        bar.close()
        pseudo_files += _keep_pseudo_labels(store, ranking.weak, pseudo_dir / f"round_{round_index}")
        counts = store.counts()
        # What the active model scored: a round that kept the previous model reports the previous model's Dice.
        dice = model.model.metrics["val_dice"]
        row = {
            "round": round_index,
            "model": model.version,
            "registered": model.registered,
            "expert": model.metrics["n_expert"],
            "pseudo_trained": model.metrics["n_pseudo"],
            "val_dice": dice.get("mean"),
            "final_loss": (model.model.metrics.get("loss_history") or [None])[-1],
            **{f"dice_{name}": dice.get(name) for name in store.config.labels.values()},
            "alnt_mean_weight": model.metrics["alnt"].get("mean_weight"),
            "queued": list(ranking.strong),
            "new_pseudo": len(ranking.weak),
            "train_s": model.metrics["seconds"],
            "rank_s": ranking.seconds,
        }
        summary_rows.append(row)
        scores = {s.case_id: s for s in ranking.scores}
        logger.info("\nRound %d (model v%d)\n%s", round_index, model.version, format_table(
            ["expert labels", "pseudo in training", "val Dice", *[f"Dice {n}" for n in store.config.labels.values()], "new pseudo", "train s"],
            [[row["expert"], row["pseudo_trained"], row["val_dice"], *[row[f"dice_{n}"] for n in store.config.labels.values()], row["new_pseudo"], row["train_s"]]],
            {7: lambda v: f"{v:.0f}"},
        ))
        logger.info("Top of the queue (most uncertain first):\n%s", format_table(
            ["case", "M-DSC", "confidence", "route"],
            [[cid, scores[cid].mdsc, scores[cid].confidence, "strong"] for cid in ranking.strong]
            + [[cid, scores[cid].mdsc, scores[cid].confidence, "weak (pseudo)"] for cid in ranking.weak[:3]],
        ))
        if round_index < rounds:
            for case_id in ranking.strong:
                radiologist.label(store, case_id)

    prediction_files = write_final_predictions(store, out / "predictions")
    pending = {r.case_id for r in store.cases(state=CaseState.PSEUDO)}
    curve = plot_learning_curve(
        {"DSAL + ALNT (demo)": [(r["expert"], r["val_dice"] or 0.0, r["val_dice"] or 0.0, r["val_dice"] or 0.0)
                                for r in summary_rows]},
        out / "learning_curve.png",
        "ActiveSeg demo on synthetic phantoms (validation Dice)",
        losses={"final training loss": [(r["expert"], r["final_loss"]) for r in summary_rows if r["final_loss"] is not None]},
    )
    seconds = time.perf_counter() - started
    logger.info("\nSummary\n%s", format_table(
        ["round", "expert labels", "pseudo in training", "val Dice", "queued next"],
        [[r["round"], r["expert"], r["pseudo_trained"], r["val_dice"], ", ".join(r["queued"])] for r in summary_rows],
    ))
    image_dirs = sorted({_shown(r.image_path.parent) for r in store.cases()})
    pseudo_text = (
        f"{_shown(pseudo_dir)} ({len(pseudo_files)} .seg.nrrd files in round_N folders; {len(pending)} pending review)"
        if pseudo_files else "none: no ranking routed a case to the weak labeller (the model found no confident, "
        "agreeing case); see the final predictions"
    )
    logger.info(
        "\nDone in %.0f s.\n  datastore:         %s\n  pseudo-labels:     %s\n"
        "  final predictions: %s (%d .seg.nrrd files)\n  images:            %s (drag an image and its .seg.nrrd "
        "into 3D Slicer)\n  learning curve:    %s\n  serve it:          activeseg serve --data %s",
        seconds, _shown(store.root), pseudo_text, _shown(out / "predictions"), len(prediction_files),
        ", ".join(image_dirs), _shown(curve), _shown(store.root),
    )
    return {"rounds": summary_rows, "curve": curve, "pseudo_labels": pseudo_files, "predictions": prediction_files,
            "seconds": seconds}
