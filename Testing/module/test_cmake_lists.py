"""Slicer installs only what CMake lists: every .py and resource of the module must be in its CMakeLists.txt,
and the extension's top-level CMakeLists.txt and catalog entry must carry the Extensions Index metadata."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ActiveSegModule"
CMAKE = MODULE_DIR / "CMakeLists.txt"


def _listed(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set in {CMAKE.name}"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def _module_files(pattern: str) -> set[str]:
    return {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob(pattern)
            if "__pycache__" not in p.parts and p.is_file()}


def test_every_python_file_is_listed() -> None:
    text = CMAKE.read_text(encoding="utf-8")
    listed = {name.replace("${MODULE_NAME}", "ActiveSeg") for name in _listed(text, "MODULE_PYTHON_SCRIPTS")}
    assert _module_files("*.py") == listed


def test_every_resource_is_listed() -> None:
    text = CMAKE.read_text(encoding="utf-8")
    listed = {name.replace("${MODULE_NAME}", "ActiveSeg") for name in _listed(text, "MODULE_PYTHON_RESOURCES")}
    resources = {name for name in _module_files("*") if name.startswith("Resources/")}
    assert resources and resources == listed
    assert "slicerMacroBuildScriptedModule(" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_metadata() -> None:
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in ("project(ActiveSeg)", 'set(EXTENSION_CATEGORY "Active Learning")', "EXTENSION_HOMEPAGE",
                   "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", 'set(EXTENSION_DEPENDS "NA")',
                   "find_package(Slicer REQUIRED)", "add_subdirectory(ActiveSegModule)",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needle in top, needle
    entry = json.loads((REPO / "Resources" / "ActiveSeg.json").read_text(encoding="utf-8"))
    assert {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_url",
            "tier"} <= set(entry)
    assert entry["category"] == "Active Learning" and entry["build_dependencies"] == []
    assert (REPO / "Resources" / "ActiveSeg.png").is_file()
