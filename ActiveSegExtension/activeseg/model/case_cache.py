"""Preprocessed cases cached on disk as memory-mapped arrays, so a pool of full-size CTs never sits in RAM.

One folder per case and planned spacing::

    CACHE/<spacing digest>/<case_id>/<source key>/image.npy    float32 (k, j, i), raw intensities on the planned grid
                                                  label.npy    uint8 (k, j, i) (absent for unlabelled cases)
                                                  meta.json    planned geometry (LPS), volume mean/sd/min,
                                                               foreground locations per class, statistics

The source key hashes the image and label files' size and modification time, so an edited label gets a new
entry (the old one is removed). Raw intensities are cached (not normalised ones) because the CT normalisation is
global and may be re-planned when the labelled set grows; normalising a crop costs microseconds.

Foreground locations: per class up to 10,000 voxel indices (k, j, i) sampled once at caching (nnU-Net does the
same); crops centred on foreground then cost nothing instead of an ``np.argwhere`` over a 16 M-voxel label per crop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activeseg.io.volumes import Geometry, Volume
from activeseg.model.plan import CaseStatistics, case_statistics
from activeseg.model.preprocessing import resample_volume

__all__ = ["CachedCase", "CaseCache", "source_key"]

logger = logging.getLogger(__name__)

_LOCATIONS_PER_CLASS = 10_000


def source_key(*paths: Path | None) -> str:
    """Hash of the files' names, sizes and modification times (ns): changes whenever a file is replaced."""
    digest = hashlib.sha1()
    for path in paths:
        if path is None:
            digest.update(b"-")
            continue
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@dataclass
class CachedCase:
    """One preprocessed case, arrays memory-mapped read-only.

    Attributes:
        case_id: the datastore's case id.
        image: (k, j, i) float32 raw intensities on the planned grid (memory-mapped).
        label: (k, j, i) uint8 or None.
        geometry: the planned grid, LPS.
        mean, sd, minimum: of the resampled image (per-volume z-score and padding need them).
        locations: class value -> (N, 3) int32 voxel indices (k, j, i) of that class, N <= 10,000.
        statistics: the case's contribution to the dataset fingerprint.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    geometry: Geometry
    mean: float
    sd: float
    minimum: float
    locations: dict[int, np.ndarray]
    statistics: CaseStatistics


class CaseCache:
    """The on-disk cache of one datastore (``STORE/.activeseg/cache``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _folder(self, case_id: str, spacing: tuple[float, float, float]) -> Path:
        digest = hashlib.sha1(json.dumps([round(s, 6) for s in spacing]).encode()).hexdigest()[:12]
        return self.root / digest / case_id

    def get(self, case_id: str, key: str, spacing: tuple[float, float, float], load_image: Callable[[], Volume],
            load_label: Callable[[], Volume] | None, num_classes: int) -> CachedCase:
        """The cached case, preprocessing it first when absent or stale.

        Args:
            case_id: case id.
            key: :func:`source_key` of its image and label files.
            spacing: planned spacing (k, j, i), mm.
            load_image: returns the source image :class:`Volume` (called only on a cache miss).
            load_label: returns the label :class:`Volume` (same grid as the image), or None for unlabelled cases.
            num_classes: C, background included.
        """
        folder = self._folder(case_id, spacing)
        entry = folder / key
        if not (entry / "meta.json").exists():
            self._build(entry, case_id, spacing, load_image, load_label, num_classes)
            for stale in folder.iterdir():  # older versions of this case (a replaced label)
                if stale.name != key and not stale.name.startswith("."):
                    shutil.rmtree(stale, ignore_errors=True)
        return self._open(entry, case_id)

    def _build(self, entry: Path, case_id: str, spacing: tuple[float, float, float], load_image: Callable[[], Volume],
               load_label: Callable[[], Volume] | None, num_classes: int) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        source: Volume = load_image()
        image = resample_volume(source, spacing, is_label=False)
        label = resample_volume(load_label(), spacing, is_label=True) if load_label is not None else None
        label_array = label.array.astype(np.uint8) if label is not None else None
        rng = np.random.default_rng(int(hashlib.sha1(case_id.encode()).hexdigest()[:8], 16))  # same sample every run
        locations: dict[str, list] = {}
        if label_array is not None:
            for value in range(1, num_classes):
                voxels = np.argwhere(label_array == value)
                if len(voxels) > _LOCATIONS_PER_CLASS:
                    voxels = voxels[rng.choice(len(voxels), _LOCATIONS_PER_CLASS, replace=False)]
                if len(voxels):
                    locations[str(value)] = voxels.astype(np.int32).tolist()
        spacing_kji = tuple(reversed(image.geometry.spacing))
        stats = case_statistics(image.array, label_array, spacing_kji, num_classes)  # type: ignore[arg-type]
        meta = {
            "geometry": {"size": image.geometry.size, "spacing": image.geometry.spacing, "origin": image.geometry.origin,
                         "direction": image.geometry.direction},
            "mean": float(image.array.mean()), "sd": float(image.array.std()), "minimum": float(image.array.min()),
            "locations": locations,
            "statistics": {"spacing": stats.spacing, "shape": stats.shape, "class_voxels": stats.class_voxels},
        }
        temp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            np.save(temp / "image.npy", image.array.astype(np.float32, copy=False))
            if label_array is not None:
                np.save(temp / "label.npy", label_array)
            np.save(temp / "foreground_samples.npy", stats.foreground_samples)
            (temp / "meta.json").write_text(json.dumps(meta))
            os.replace(temp, entry)  # atomic: a killed process leaves a .tmp- folder, never a half entry
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)
            if not (entry / "meta.json").exists():
                raise

    @staticmethod
    def _open(entry: Path, case_id: str) -> CachedCase:
        meta = json.loads((entry / "meta.json").read_text())
        g = meta["geometry"]
        geometry = Geometry(tuple(g["size"]), tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))  # type: ignore[arg-type]
        label_path = entry / "label.npy"
        s = meta["statistics"]
        stats = CaseStatistics(tuple(s["spacing"]), tuple(s["shape"]), np.load(entry / "foreground_samples.npy"),  # type: ignore[arg-type]
                               list(s["class_voxels"]))
        return CachedCase(
            case_id=case_id,
            image=np.load(entry / "image.npy", mmap_mode="r"),
            label=np.load(label_path, mmap_mode="r") if label_path.exists() else None,
            geometry=geometry,
            mean=float(meta["mean"]), sd=float(meta["sd"]), minimum=float(meta["minimum"]),
            locations={int(k): np.asarray(v, dtype=np.int32) for k, v in meta["locations"].items()},
            statistics=stats,
        )
