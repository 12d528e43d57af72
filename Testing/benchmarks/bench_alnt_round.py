"""A training round's wall time with and without pseudo-labelled volumes (ALNT on, the default configuration).

Hippocampus MRI (``../shared/data/hippocampus_mri``): 4 expert volumes, 4 more volumes given as pseudo-labelled
(their labels stand in for the model's; the cost does not depend on their quality), 2 validation volumes. Both
variants run :func:`activeseg.pipeline.training_round.train_model` on the same plan and number of steps in fresh
child processes, interleaved (without, with, without, with), one torch thread each; the table gives medians and the
ratio. With the default ``network.dropout = 0`` ALNT takes its fused path (the expert backward is its reference
gradient), which the table states per run.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

__all__ = ["run"]

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hippocampus_mri"
STEPS = 40


def _child(with_pseudo: bool) -> dict:
    import tempfile
    import time

    import torch

    from activeseg.config import Config
    from activeseg.model.network import build_network
    from activeseg.model.plan import Plan
    from activeseg.pipeline.training_round import TrainingData, load_training_data, train_model
    from activeseg.store.initialise import init_datastore

    torch.set_num_threads(1)
    source = json.loads((DATA / "dataset.json").read_text())
    entries = sorted(source["training"], key=lambda e: e["image"])[:10]
    work = Path(tempfile.mkdtemp())
    subset = dict(source, training=[{"image": str(DATA / e["image"]), "label": str(DATA / e["label"])} for e in entries])
    (work / "dataset.json").write_text(json.dumps(subset))
    config = Config()
    config.val_fraction = 0.2
    store, _ = init_datastore(work / "store", work / "dataset.json", with_labels=True, config=config, seed=0)
    cached = load_training_data(store, (1.0, 1.0, 1.0))
    data = TrainingData(experts=cached.experts[:4], pseudo=cached.experts[4:8] if with_pseudo else [],
                        validation=cached.validation)
    plan = Plan((1.0, 1.0, 1.0), (40, 56, 40), [(2, 2, 2)] * 3, (8, 16, 32, 64), 2, "zscore")
    torch.manual_seed(0)
    model = build_network(3, plan.channels, config.network.dropout, strides=plan.strides)
    started = time.perf_counter()
    metrics = train_model(model, data, plan, config, STEPS, 2, torch.device("cpu"))
    return {"with_pseudo": with_pseudo, "seconds": time.perf_counter() - started, "phase_seconds": metrics["phase_seconds"],
            "fused": config.network.dropout == 0.0, "alnt": bool(metrics["alnt"])}


def run(quick: bool) -> str:  # noqa: ARG001 - one size
    """Interleaved runs in child processes; a Markdown table."""
    if not (DATA / "dataset.json").is_file():
        return f"skipped: {DATA} not found (shared test data lives beside the project)"
    results = []
    for with_pseudo in (False, True, False, True):
        output = subprocess.run([sys.executable, "-m", "Testing.benchmarks.bench_alnt_round", "--child", str(int(with_pseudo))],
                                check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2]).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    plain = statistics.median(r["seconds"] for r in results if not r["with_pseudo"])
    alnt = statistics.median(r["seconds"] for r in results if r["with_pseudo"])
    train_plain = statistics.median(r["phase_seconds"]["train"] for r in results if not r["with_pseudo"])
    train_alnt = statistics.median(r["phase_seconds"]["train"] for r in results if r["with_pseudo"])
    lines = [f"{STEPS} steps, patch 40x56x40, batch 2 expert (+2 pseudo), channels 8-64, one thread; medians of 2 runs each.", "",
             "| round | wall s | train phase s | x without |", "|---|---:|---:|---:|",
             f"| 4 expert volumes | {plain:.1f} | {train_plain:.1f} | 1.00 |",
             f"| 4 expert + 4 pseudo-labelled (ALNT, fused: {results[1]['fused']}) | {alnt:.1f} | {train_alnt:.1f} | {alnt / plain:.2f} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        import logging

        logging.basicConfig(level=logging.WARNING)
        sys.stdout.write(json.dumps(_child(bool(int(sys.argv[2])))) + "\n")
    else:
        sys.stdout.write(run(quick="--quick" in sys.argv) + "\n")
