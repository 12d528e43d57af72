"""The one set of tiny settings and the one store helper of the engine and server tests.

``TINY_SETTINGS`` are ``--set`` strings, so a test can hand the same settings to the command line, to
:func:`activeseg.config.apply_overrides` or to :func:`tiny_config`. They make a training round take seconds on
one CPU core with 16x32x32 (k, j, i) phantoms.
"""

from __future__ import annotations

import json
from pathlib import Path

from activeseg.config import Config, apply_overrides
from activeseg.experiments.phantoms import write_phantom_dataset
from activeseg.store.datastore import Datastore

__all__ = ["PHANTOM_SHAPE", "TINY_SETTINGS", "tiny_config", "tiny_set_args", "image_pairs", "create_store", "make_store"]

#: Phantom grid (k, j, i) voxels.
PHANTOM_SHAPE = (16, 32, 32)

#: A narrow network on whole 16x32x32 volumes, short rounds, pseudo-labels from round 1, one CPU thread.
TINY_SETTINGS: tuple[str, ...] = (
    "network.channels=4,8,16,16",
    "training.patch_size=16,32,32",
    "training.epochs_first=2",
    "training.epochs_per_round=1",
    "training.steps_per_epoch=2",
    "training.augment=false",  # four steps on whole volumes: augmentation would only add noise
    "training.foreground_crop_fraction=0.67",
    "training.num_threads=1",
    "training.device=cpu",
    "dsal.strong_per_round=2",
    "dsal.weak_start_round=1",
    "dsal.weak_initial=2",
    # Four steps cannot learn every class; the rule for a model without one (no pseudo-labels, no warm start from
    # it) has its own test with the default threshold.
    "training.unlearned_class_dice=0",
)


def tiny_config() -> Config:
    """A fresh :class:`Config` with :data:`TINY_SETTINGS` applied (callers may change it)."""
    return apply_overrides(Config(), list(TINY_SETTINGS))


def tiny_set_args() -> list[str]:
    """:data:`TINY_SETTINGS` as command-line arguments: ``["--set", "network.channels=...", ...]``."""
    return [arg for item in TINY_SETTINGS for arg in ("--set", item)]


def image_pairs(source: Path) -> list[tuple[str, Path]]:
    """(case id, image path) pairs of an MSD-style folder, in ``dataset.json`` order."""
    dataset = json.loads((source / "dataset.json").read_text())
    return [(Path(e["image"]).name.removesuffix(".nii.gz"), source / e["image"]) for e in dataset["training"]]


def create_store(store_root: Path, source: Path, config: Config | None = None, seed: int = 0) -> Datastore:
    """A datastore at ``store_root`` over the images of the MSD folder ``source`` (labels not imported).

    Raises:
        AssertionError: an image was skipped (test data must import cleanly).
    """
    store, problems = Datastore.create(store_root, image_pairs(source), config or tiny_config(), seed=seed)
    assert problems == [], problems
    return store


def make_store(root: Path, count: int = 8, config: Config | None = None, seed: int = 0) -> tuple[Path, Path]:
    """Write ``count`` phantoms under ``root/phantoms`` and create a datastore over them at ``root/store``.

    Returns:
        (datastore folder, phantom folder with ``imagesTr/``, ``labelsTr/`` and ``dataset.json``).
    """
    source = root / "phantoms"
    write_phantom_dataset(source, count=count, shape=PHANTOM_SHAPE)
    store_root = root / "store"
    create_store(store_root, source, config, seed)
    return store_root, source
