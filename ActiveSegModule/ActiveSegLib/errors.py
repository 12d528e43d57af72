"""Typed exceptions of the Slicer-side library (``ActiveSegLib``).

Every error says what was wrong and with which value, so the Slicer widget can show ``str(exc)`` to the user
as it is (no traceback). The HTTP client adds its own ``ClientError`` here, next to these.
"""

from __future__ import annotations

__all__ = ["ActiveSegModuleError", "MrmlBridgeError", "BackendStartError"]


class ActiveSegModuleError(Exception):
    """Base class of every error raised by ``ActiveSegLib``."""


class MrmlBridgeError(ActiveSegModuleError):
    """An image or segmentation could not be turned into MRML nodes (or back into a file).

    Raised for unreadable or corrupt files, images that are not 3D, labels that match no class, and grids that
    do not fit the reference volume.
    """


class BackendStartError(ActiveSegModuleError):
    """The local backend process could not be started, exited early, or never announced its URL.

    Attributes:
        output: the last lines the process printed (stdout and stderr merged), possibly empty.
        returncode: the process's exit status if it exited, else ``None``.
    """

    def __init__(self, message: str, output: str = "", returncode: int | None = None) -> None:
        full = message if not output.strip() else f"{message}\n--- backend output (last lines) ---\n{output.rstrip()}"
        super().__init__(full)
        self.output = output
        self.returncode = returncode
