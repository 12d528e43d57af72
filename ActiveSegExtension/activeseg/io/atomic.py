"""Crash-safe file writes: write a temp file beside the target, verify it, fsync, rename, fsync the folder.

A reader (or a restarted process) sees either no file or the whole file, never a partial one:
``os.replace`` is atomic on POSIX and Windows within one file system.

Verification: some writers fail silently. SimpleITK's ``WriteImage`` does not raise when the disk fills: it
leaves a short (often 0-byte) file. So before the rename the temp file is read back as far as its format
allows without decoding (a NIfTI or NRRD file's header and full data length, gzip CRC included); a file that
does not check out is never renamed into place, and the error says whether space ran out.

Errors: ``OSError`` from the file system becomes a typed :class:`~activeseg.errors.StorageError`
(:class:`~activeseg.errors.StorageFullError` for ENOSPC/EDQUOT, :class:`~activeseg.errors.StorageReadOnlyError`
for EROFS/EACCES/EPERM), so the API can answer 507/503 with a clear message instead of a 500.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from activeseg.errors import ActiveSegError, StorageError, StorageFullError, StorageReadOnlyError

__all__ = [
    "TEMP_MARKER",
    "LOW_SPACE_BYTES",
    "atomic_write",
    "fsync_dir",
    "storage_error",
    "verify_written",
]

logger = logging.getLogger(__name__)

TEMP_MARKER = ".tmp-"
# A write that failed verification with less free space than this in its folder is reported as "disk full".
LOW_SPACE_BYTES = 16 << 20

_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


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


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def storage_error(exc: OSError, what: str) -> StorageError:
    """A typed error for a file-system failure while writing ``what`` (no server path in the message)."""
    if exc.errno in _FULL:
        return StorageFullError(f"no space left on the datastore's disk while writing {what}; nothing was changed. "
                                "Free some space and retry.")
    if exc.errno in _READ_ONLY:
        return StorageReadOnlyError(f"the datastore is read-only ({os.strerror(exc.errno)}) while writing {what}; "
                                    "nothing was changed")
    return StorageError(f"writing {what} failed ({os.strerror(exc.errno) if exc.errno else type(exc).__name__}); "
                        "nothing was changed")


def verify_written(path: Path) -> None:
    """Check a just-written file is complete, by its format (the suffix of ``path``'s name).

    ``.nii``/``.nii.gz``: a valid header and exactly the data it declares (gzip stream complete, CRC checked);
    ``.nrrd``/``.seg.nrrd``: header and data length; anything else: not empty.

    Raises:
        ActiveSegError: (an ImageReadError) the file is empty, truncated or corrupt.
    """
    from activeseg.errors import ImageReadError
    from activeseg.io.nifti_integrity import check_nifti_complete
    from activeseg.io.nrrd_header import check_nrrd_complete

    name = Path(path).name.lower()
    if os.path.getsize(path) == 0:
        raise ImageReadError("the written file is empty")
    if name.endswith((".nii", ".nii.gz")):
        check_nifti_complete(Path(path), compressed=name.endswith(".gz"))
    elif name.endswith(".nrrd"):
        check_nrrd_complete(Path(path))


def atomic_write(target: Path, write: Callable[[Path], None], verify: bool = True) -> Path:
    """Produce ``target`` atomically, after checking what was written.

    Args:
        target: final path. Its suffix is kept on the temp file so format-by-suffix writers work.
        write: callable that writes the complete file at the path it is given.
        verify: read the temp file back (:func:`verify_written`) before renaming it into place.

    Returns:
        ``target``.

    Raises:
        StorageFullError: space ran out (raised by the writer, or a file that fails verification while the
            disk is nearly full). StorageReadOnlyError: the folder is read-only. StorageError: another write
            failure. In every case ``target`` is untouched and the temp file removed.
    """
    target = Path(target)
    what = f"'{target.name}'"
    temp = target.with_name(f"{TEMP_MARKER}{uuid.uuid4().hex}-{target.name}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(temp)
        if verify:
            try:
                verify_written(temp)
            except ActiveSegError as exc:
                free = _free_bytes(target.parent)
                logger.error("write of %s failed verification (%s); %s bytes free", target, exc, free)
                if free is not None and free < LOW_SPACE_BYTES:
                    raise StorageFullError(
                        f"no space left on the datastore's disk while writing {what} ({free} bytes free); "
                        "nothing was changed. Free some space and retry."
                    ) from exc
                raise StorageError(f"writing {what} produced an incomplete file ({exc}); nothing was changed") from exc
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except OSError as exc:
        _remove_quietly(temp)
        raise storage_error(exc, what) from exc
    except RuntimeError as exc:  # SimpleITK reports I/O failures as RuntimeError: classify them by the folder
        _remove_quietly(temp)
        folder = target.parent
        if folder.is_dir() and not _writable(folder):
            raise StorageReadOnlyError(f"the datastore is read-only while writing {what}; nothing was changed") from exc
        free = _free_bytes(folder)
        if free is not None and free < LOW_SPACE_BYTES:
            raise StorageFullError(f"no space left on the datastore's disk while writing {what} ({free} bytes free); "
                                   "nothing was changed. Free some space and retry.") from exc
        raise
    except BaseException:
        _remove_quietly(temp)
        raise
    fsync_dir(target.parent)
    return target


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: ``os.access`` ignores read-only mounts for root)."""
    probe = folder / f"{TEMP_MARKER}probe-{uuid.uuid4().hex}"
    try:
        probe.touch()
    except OSError:
        return False
    _remove_quietly(probe)
    return True


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a read-only folder: nothing was created there either
        pass
