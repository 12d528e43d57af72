"""Fixtures for the Slicer module's tests: the real MRML libraries of the ``slicer-core`` wheel, no Slicer app.

``ActiveSegModule/`` goes on ``sys.path`` so tests import ``ActiveSegLib`` the way Slicer does (the module's
folder is on Slicer's path).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "ActiveSegModule"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture(scope="session")
def quiet_vtk() -> None:
    """Hide MRML's harmless warnings (missing colour files); errors still print (pytest captures them)."""
    vtk = pytest.importorskip("vtk")
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)


@pytest.fixture()
def ctx(quiet_vtk: None) -> Iterator[Any]:
    """A fresh headless MRML scene with an application logic and a segmentations logic."""
    pytest.importorskip("slicer")
    from ActiveSegLib.mrml import MrmlContext

    context = MrmlContext.headless()
    yield context
    context.scene.Clear(1)
