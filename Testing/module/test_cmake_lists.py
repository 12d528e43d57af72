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


def _cmake_urls(variable: str) -> list[str]:
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    match = re.search(rf'set\({variable}\s+"([^"]*)"\)', top)
    assert match, f"{variable} not set"
    return [url for url in match.group(1).split() if url]


def test_extension_urls_point_at_files_in_the_repository() -> None:
    """The Extensions Index rejects an entry whose icon or screenshot URL is dead: every raw-GitHub URL must name
    a file this repository has (on its main branch, i.e. committed here)."""
    urls = _cmake_urls("EXTENSION_ICONURL") + _cmake_urls("EXTENSION_SCREENSHOTURLS")
    assert urls, "at least the icon"
    for url in urls:
        match = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", url)
        assert match, f"not a raw GitHub URL on main: {url}"
        assert (REPO / match.group(1)).is_file(), f"{url} names {match.group(1)}, which is not in the repository"


def test_a_skipped_in_file_test_is_reported_as_skipped() -> None:
    """Without ACTIVESEG_PYTHON, runTest prints SKIP_MESSAGE and returns (no exception: "Reload and Test" would
    show an error), and ctest turns that output into "Skipped" instead of "Passed"."""
    import ast

    module = (MODULE_DIR / "ActiveSeg.py").read_text(encoding="utf-8")
    tree = ast.parse(module)
    constant = next(node.value.value for node in tree.body if isinstance(node, ast.Assign)
                    and getattr(node.targets[0], "id", "") == "SKIP_MESSAGE")
    pattern = re.search(r'set_tests_properties\(py_\$\{MODULE_NAME\} PROPERTIES SKIP_REGULAR_EXPRESSION "([^"]+)"\)',
                        CMAKE.read_text(encoding="utf-8"))
    assert pattern and re.search(pattern.group(1), f"{constant}: set ACTIVESEG_PYTHON")
    run_test = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "runTest")
    assert not any(isinstance(node, ast.Raise) for node in ast.walk(run_test)), "a skip must not raise"
    assert "SKIP_MESSAGE" in ast.unparse(run_test) and "print(" in ast.unparse(run_test)
