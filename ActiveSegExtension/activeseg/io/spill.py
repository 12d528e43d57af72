"""Arrays parked on disk while a job needs them later: the ranking round's candidate label maps.

A ranking round learns which candidates get a prediction or a pseudo-label only after all are scored, so it needs
each scored candidate's label map until then. Held in memory that is one uint8 map per candidate (79 MB for a
512x512x300 CT, so gigabytes for a pool of full-size CTs); :class:`ArraySpill` writes each to a temp folder
instead and reads back one at a time.

The folder is ``<parent>/<TEMP_MARKER>spill-...`` (:data:`activeseg.io.atomic.TEMP_MARKER`): removed by
:meth:`ArraySpill.close`, when the spill is garbage-collected, or, after a crash, by the datastore's
``recover()``, which removes every temp entry under ``.activeseg``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from activeseg.io.atomic import TEMP_MARKER, storage_error

__all__ = ["ArraySpill"]

logger = logging.getLogger(__name__)


class ArraySpill:
    """A dict-like store of numpy arrays kept as ``.npy`` files in a private temp folder.

    Args:
        parent: where the temp folder is made (the datastore's ``.activeseg``, so the files stay on its disk).

    Example:
        >>> import tempfile
        >>> spill = ArraySpill(Path(tempfile.mkdtemp()))
        >>> spill["case_1"] = np.zeros((2, 3, 4), np.uint8)
        >>> "case_1" in spill, spill["case_1"].shape
        (True, (2, 3, 4))
        >>> spill.close()
    """

    def __init__(self, parent: Path) -> None:
        Path(parent).mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_MARKER}spill-", dir=parent))
        self._files: dict[str, Path] = {}
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def __setitem__(self, key: str, array: np.ndarray) -> None:
        """Write ``array`` (replacing an earlier one under ``key``).

        Raises:
            StorageFullError, StorageReadOnlyError, StorageError: the disk refused the file (it is removed).
        """
        path = self._files.get(key, self.folder / f"{len(self._files)}.npy")
        try:
            np.save(path, np.asarray(array), allow_pickle=False)
        except OSError as exc:
            path.unlink(missing_ok=True)
            self._files.pop(key, None)
            raise storage_error(exc, f"a temporary array of {key!r}") from exc
        self._files[key] = path

    def __getitem__(self, key: str) -> np.ndarray:
        """The array, read into memory (only this one)."""
        return np.load(self._files[key], allow_pickle=False)

    def __contains__(self, key: object) -> bool:
        return key in self._files

    def __len__(self) -> int:
        return len(self._files)

    def close(self) -> None:
        """Remove the folder and its files (idempotent)."""
        self._cleanup()
        self._files.clear()

    def __enter__(self) -> ArraySpill:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
