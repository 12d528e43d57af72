"""Crash-safe file writes: write a temp file beside the target, fsync, rename, fsync the folder.

A reader (or a restarted process) sees either no file or the whole file, never a partial one:
``os.replace`` is atomic on POSIX and Windows within one file system.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["TEMP_MARKER", "atomic_write", "atomic_write_bytes", "fsync_dir"]

TEMP_MARKER = ".tmp-"


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (the rename itself) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(target: Path, write: Callable[[Path], None]) -> Path:
    """Produce ``target`` atomically.

    Args:
        target: final path. Its suffix is kept on the temp file so format-by-suffix writers work.
        write: callable that writes the complete file at the path it is given.

    Returns:
        ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    name = target.name
    temp = target.with_name(f"{TEMP_MARKER}{uuid.uuid4().hex}-{name}")
    try:
        write(temp)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_bytes(target: Path, data: bytes) -> Path:
    """:func:`atomic_write` of a bytes payload."""
    return atomic_write(target, lambda path: Path(path).write_bytes(data))
