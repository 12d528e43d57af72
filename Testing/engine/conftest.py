"""Fixtures for the engine's tests: small generated phantoms and tiny network settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from activeseg.config import Config
from activeseg.experiments.phantoms import write_phantom_dataset

PHANTOM_SHAPE = (16, 32, 32)


def tiny_config() -> Config:
    """Settings for CPU tests: a narrow network on 16x32x32 volumes, short rounds."""
    config = Config()
    config.network.channels = (4, 8, 16, 16)
    config.training.patch_size = (16, 32, 32)
    config.training.epochs_first = 2
    config.training.epochs_per_round = 1
    config.training.steps_per_epoch = 2
    config.dsal.strong_per_round = 2
    config.dsal.weak_start_round = 1
    config.dsal.weak_initial = 2
    return config


@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MSD-style folder of 10 small phantoms (read-only: copy before changing)."""
    folder = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(folder, 10, seed=3, shape=PHANTOM_SHAPE)
    return folder


def image_pairs(source: Path) -> list[tuple[str, Path]]:
    """(case id, image path) pairs of an MSD folder."""
    dataset = json.loads((source / "dataset.json").read_text())
    return [(Path(e["image"]).name.removesuffix(".nii.gz"), source / e["image"]) for e in dataset["training"]]
