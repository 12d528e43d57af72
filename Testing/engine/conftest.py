"""Fixtures of the engine's tests: small generated phantoms; the tiny settings come from ``Testing/tiny.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from activeseg.experiments.phantoms import write_phantom_dataset

from ..tiny import PHANTOM_SHAPE, create_store, image_pairs, tiny_config

__all__ = ["PHANTOM_SHAPE", "tiny_config", "image_pairs", "create_store"]


@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MSD-style folder of 10 small phantoms (read-only: copy before changing)."""
    folder = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(folder, 10, seed=3, shape=PHANTOM_SHAPE)
    return folder
