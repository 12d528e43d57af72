"""Helpers for module tests that need a real backend: tiny phantom datastores and the settings that make a
training round take seconds on one CPU core. The backend itself is started with ``BackendLauncher`` (the
module's own launcher), using this interpreter, which has ``activeseg`` installed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["SHAPE", "TINY_SETTINGS", "FIXTURES", "make_store", "fixture", "ground_truth_path", "running_backend", "alive"]

#: Phantom grid (k, j, i) voxels.
SHAPE = (16, 32, 32)

#: ``--set`` overrides for ``activeseg init``: a network and rounds small enough for a test.
TINY_SETTINGS = (
    "network.channels=4,8,8,16", "training.patch_size=16,32,32", "training.batch_size=1",
    "training.epochs_first=1", "training.epochs_per_round=1", "training.steps_per_epoch=12",
    "training.learning_rate=0.01",
    "training.num_threads=1", "training.device=cpu", "alnt.pseudo_batch_size=1",
    "dsal.strong_per_round=2", "dsal.weak_start_round=1", "dsal.weak_initial=2",
    # Rounds of 12 steps: with a fine-tuned second model (the default schedule) neither ranking of the loop test
    # routed a case to the pseudo-labeller, which its review step needs; the schedule has its own tests
    # (Testing/engine/test_training_loop.py).
    "training.warm_start=false",
    "training.unlearned_class_dice=0",  # tiny rounds need not learn every class to produce pseudo-labels
)

#: The protocol's example bodies, shared with the server's tests.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api"


def fixture(name: str) -> Any:
    """One JSON fixture, e.g. ``fixture("queue")``."""
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def make_store(root: Path, count: int = 8) -> tuple[Path, Path]:
    """Write ``count`` phantoms and ``activeseg init`` a datastore from them (labels not imported).

    Returns:
        (datastore folder, phantom folder with ``labelsTr/`` holding the ground truth).
    """
    from activeseg.experiments.phantoms import write_phantom_dataset

    dataset = write_phantom_dataset(root / "phantoms", count=count, shape=SHAPE)
    store = root / "store"
    overrides = [arg for item in TINY_SETTINGS for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "activeseg", "init", str(store), "--from", str(dataset), *overrides],
                   check=True, timeout=120, capture_output=True)
    return store, dataset.parent


def ground_truth_path(source: Path, case_id: str) -> Path:
    """The phantom's ground-truth labelmap file."""
    return source / "labelsTr" / f"{case_id}.nii.gz"


@contextmanager
def running_backend(folder: Path, token: str, count: int = 4) -> Iterator[tuple[str, Path]]:
    """A real backend with a bearer ``token`` on a ``count``-phantom datastore in ``folder``: (URL, phantom folder);
    stopped when the block ends."""
    from ActiveSegLib.launcher import BackendLauncher

    store, source = make_store(folder, count=count)
    launcher = BackendLauncher(sys.executable, str(store), token=token)
    url = launcher.start(timeout_s=120)
    try:
        yield url, source
    finally:
        launcher.stop()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as dead: in a container nobody may reap it)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"
