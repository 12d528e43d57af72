"""Slicer's embedded Python must stay light: nothing under ActiveSegModule/ may import torch or MONAI.

Parsed with ``ast`` (imports inside functions count too), plus string arguments of ``importlib.import_module``
and ``__import__``. The launcher and worker are stdlib-only, so the widget can use them anywhere.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "ActiveSegModule"
FORBIDDEN = {"torch", "monai", "torchvision", "lightning", "pytorch_lightning"}
STDLIB_ONLY = ["ActiveSegLib/launcher.py", "ActiveSegLib/worker.py", "ActiveSegLib/errors.py", "ActiveSegLib/client.py",
               "ActiveSegLib/fileformats.py", "ActiveSegLib/protocol.py", "ActiveSegLib/responses.py",
               "ActiveSegLib/credentials.py", "ActiveSegLib/editor.py"]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports (absolute imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def python_files() -> list[Path]:
    return sorted(MODULE_DIR.rglob("*.py"))


def test_module_has_python_files() -> None:
    assert python_files(), f"no Python files under {MODULE_DIR}"


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(MODULE_DIR)))
def test_no_torch_or_monai(path: Path) -> None:
    heavy = imported_modules(path) & FORBIDDEN
    assert not heavy, f"{path.relative_to(MODULE_DIR)} imports {sorted(heavy)}; keep them in ActiveSegExtension"


def optional_imports(path: Path) -> set[str]:
    """Modules imported only inside ``try: ... except ImportError`` (optional: used when present, e.g. psutil)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                for h in node.handlers):
            for stmt in node.body:
                if isinstance(stmt, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in stmt.names)
                elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
                    names.add(stmt.module.split(".")[0])
    return names


@pytest.mark.parametrize("relative", STDLIB_ONLY)
def test_helpers_are_stdlib_only(relative: str) -> None:
    path = MODULE_DIR / relative
    if not path.exists():
        pytest.skip(f"{relative} not present")
    required = imported_modules(path) - optional_imports(path)
    outside = {name for name in required if name not in sys.stdlib_module_names}
    assert not outside, f"{relative} imports non-stdlib modules {sorted(outside)}"


def test_the_checker_sees_function_level_and_dynamic_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import torch.nn\n    importlib.import_module('monai.networks')\n")
    assert imported_modules(sample) >= {"torch", "monai"}


def test_optional_imports_are_recognised(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    try:\n        import psutil\n    except ImportError:\n        psutil = None\n"
                      "import numpy\n")
    assert optional_imports(sample) == {"psutil"} and "numpy" not in optional_imports(sample)
