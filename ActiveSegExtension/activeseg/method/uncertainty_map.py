"""Voxel-wise uncertainty of one case from the ranking pass's three heads: where the model is unsure.

Two signals, both in [0, 1], from the same deterministic forward pass DSAL ranks with (no extra inference):

* **disagreement** ``D``: the soft counterpart of M-DSC. Per voxel, the total-variation distance between the
  main head's class distribution and each auxiliary head's, ``0.5 * sum_c |p_main,c - p_aux,c|``, averaged over
  the two auxiliary heads. 0 = the heads give the same probabilities, 1 = they put all mass on different classes.
* **entropy** ``H``: the main head's predictive entropy normalised by ``log C`` (C classes, background included).
  0 = one class with probability 1, 1 = all classes equally likely.

The map is ``max(D, H)``: a voxel is as uncertain as the stronger of the two signals, so a region the heads
contradict each other on stands out even where the main head is confident, and a region where the main head
is at chance stands out even where the heads agree. (A mean would rate "heads contradict, main sure" equal to
"all heads at chance"; the maximum keeps both visible at full strength.)

Served to Slicer as a compact volume in the case's own geometry: uint8 percent (0-100), gzip NRRD, at
``STORE/.activeseg/uncertainty/<case_id>.nrrd`` (:func:`uncertainty_map_path`), written atomically by
:func:`write_uncertainty_map` (whole volumes) or :func:`write_uncertainty_volume` (a computed map; the ranking round
calls it once per ranked case).

Both signals are per voxel, so the map of a slab of slices is that slab of the whole volume's map: the ranking
round computes it slab by slab as the sliding window finishes slices
(:func:`activeseg.model.predictor.stream_heads`) and never holds the three heads' whole probability volumes.

Arrays are numpy ``(C, k, j, i)`` (softmax over axis 0) and ``(k, j, i)``; geometry is LPS (:class:`Geometry`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from activeseg.io.atomic import TEMP_MARKER, atomic_write
from activeseg.io.volumes import Geometry, write_volume
from activeseg.store.case_ids import validate_case_id

__all__ = [
    "UNCERTAINTY_DIR",
    "UNCERTAINTY_SCALE",
    "head_disagreement",
    "normalised_entropy",
    "uncertainty_map",
    "uncertainty_map_path",
    "write_uncertainty_map",
    "write_uncertainty_volume",
    "pending_uncertainty_path",
]

logger = logging.getLogger(__name__)

#: Folder under the datastore's ``.activeseg/`` holding the maps.
UNCERTAINTY_DIR = "uncertainty"

#: Stored value of uncertainty 1.0: the file holds ``round(100 * map)`` as uint8 (percent).
UNCERTAINTY_SCALE = 100

#: Voxels converted to percent at a time when writing (bounds the float temporaries).
_CHUNK_VOXELS = 1 << 22


def _check_probabilities(name: str, p: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(p)
    if array.ndim != 4 or array.shape[0] < 2:
        raise ValueError(f"{name} head: expected softmax probabilities (C, k, j, i) with C >= 2, got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} head: shape {array.shape} differs from the main head's {shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} head: probabilities contain NaN or infinity")
    return array.astype(np.float32, copy=False)


def head_disagreement(main: np.ndarray, half: np.ndarray, quarter: np.ndarray) -> np.ndarray:
    """Mean total-variation distance between the main head and each auxiliary head, per voxel.

    Args:
        main, half, quarter: softmax probabilities ``(C, k, j, i)`` of the main, 1/2- and 1/4-resolution heads,
            all on the image's voxel grid.

    Returns:
        float32 ``(k, j, i)`` in [0, 1].

    Raises:
        ValueError: not 4-D with at least two classes, differing shapes, or non-finite values.
    """
    main = _check_probabilities("main", main)
    half = _check_probabilities("half", half, main.shape)
    quarter = _check_probabilities("quarter", quarter, main.shape)
    distance = 0.25 * (np.abs(main - half).sum(axis=0) + np.abs(main - quarter).sum(axis=0))
    return np.clip(distance, 0.0, 1.0).astype(np.float32, copy=False)


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Predictive entropy per voxel divided by ``log C``.

    Args:
        probabilities: softmax ``(C, k, j, i)``.

    Returns:
        float32 ``(k, j, i)`` in [0, 1].
    """
    p = _check_probabilities("main", probabilities)
    clipped = np.clip(p, 1e-12, 1.0)
    entropy = -(p * np.log(clipped)).sum(axis=0) / np.log(p.shape[0])
    return (np.clip(entropy, 0.0, 1.0) + 0.0).astype(np.float32, copy=False)  # + 0.0: no -0.0 for sure voxels


def uncertainty_map(main: np.ndarray, half: np.ndarray, quarter: np.ndarray) -> np.ndarray:
    """The voxel-wise uncertainty ``max(disagreement, normalised main-head entropy)``.

    Args:
        main, half, quarter: softmax probabilities ``(C, k, j, i)`` of the three heads (see
            :class:`activeseg.model.predictor.HeadProbabilities`), on the image's voxel grid.

    Returns:
        float32 ``(k, j, i)`` in [0, 1]; 1 = the heads contradict each other or the main head is at chance.

    Raises:
        ValueError: see :func:`head_disagreement`.

    Example:
        >>> sure = np.zeros((2, 1, 1, 2), np.float32); sure[0] = 1
        >>> other = sure.copy(); other[:, 0, 0, 1] = (0, 1)   # second voxel: an auxiliary head says class 1
        >>> uncertainty_map(sure, other, other).round(3).tolist()
        [[[0.0, 1.0]]]
    """
    return np.maximum(head_disagreement(main, half, quarter), normalised_entropy(main))


def uncertainty_map_path(meta_dir: Path, case_id: str) -> Path:
    """Where a case's map is kept: ``<meta_dir>/uncertainty/<case_id>.nrrd``.

    Args:
        meta_dir: the datastore's ``.activeseg`` folder (``Datastore.meta_dir``).
        case_id: the case (validated: it never walks out of the folder).

    Raises:
        InvalidCaseIdError: a malformed case id.
    """
    return Path(meta_dir) / UNCERTAINTY_DIR / f"{validate_case_id(case_id)}.nrrd"


def write_uncertainty_map(meta_dir: Path, case_id: str, main: np.ndarray, half: np.ndarray, quarter: np.ndarray,
                          geometry: Geometry) -> Path:
    """Compute a case's map from its three heads and write it atomically, replacing an older one.

    For probabilities of whole volumes (e.g. from ``predict_heads``):
    ``write_uncertainty_map(store.meta_dir, case_id, heads.main, heads.half, heads.quarter, volume.geometry)``.
    The ranking round instead fills the map slab by slab with :func:`uncertainty_map` and writes it with
    :func:`write_uncertainty_volume`.

    Args:
        meta_dir: the datastore's ``.activeseg`` folder (``Datastore.meta_dir``).
        case_id: the case.
        main, half, quarter: softmax probabilities ``(C, k, j, i)`` on the image's grid.
        geometry: the case image's geometry (LPS); the map is written on exactly this grid.

    Returns:
        the written file (uint8 percent 0-100, gzip NRRD).

    Raises:
        ValueError: bad probability arrays. GeometryMismatchError: the arrays are not on ``geometry``'s grid.
    """
    return write_uncertainty_volume(meta_dir, case_id, uncertainty_map(main, half, quarter), geometry)


def pending_uncertainty_path(meta_dir: Path, case_id: str, token: str) -> Path:
    """Where a ranking writes a case's new map before its commit: beside the served one, under a temporary name
    (``<meta_dir>/uncertainty/.tmp-<token>-<case_id>.nrrd``) that recovery removes if the ranking dies.

    Args:
        token: names the ranking (its model version, ``v3``): every process of a sharded ranking writes the same
            names, so the one that commits finds them.
    """
    final = uncertainty_map_path(meta_dir, case_id)
    return final.with_name(f"{TEMP_MARKER}{token}-{final.name}")


def write_uncertainty_volume(meta_dir: Path, case_id: str, uncertainty: np.ndarray, geometry: Geometry,
                             pending: str | None = None) -> Path:
    """Write an already computed map (float (k, j, i) in [0, 1] on ``geometry``'s grid) as uint8 percent.

    The ranking round uses this: it computes :func:`uncertainty_map` on the plan's grid and resamples it onto
    the image's own grid first, and passes ``pending`` (:func:`pending_uncertainty_path`'s token): the map goes to
    the pending name, and replaces the served one only when the ranking commits (a client never downloads the
    map of a ranking that was cancelled or failed). Without ``pending`` it replaces the served map at once.

    Returns:
        the written file.
    """
    uncertainty = np.asarray(uncertainty)
    percent = np.empty(uncertainty.shape, np.uint8)
    step = max(1, _CHUNK_VOXELS // max(1, int(np.prod(uncertainty.shape[1:]))))
    for start in range(0, uncertainty.shape[0], step):  # slabs of slices: float temporaries stay small on a full CT
        part = uncertainty[start:start + step]
        percent[start:start + step] = np.rint(np.clip(part, 0.0, 1.0) * UNCERTAINTY_SCALE)
    target = uncertainty_map_path(meta_dir, case_id) if pending is None else pending_uncertainty_path(meta_dir, case_id, pending)
    atomic_write(target, lambda path: write_volume(percent, geometry, path, compress=True))
    logger.debug("uncertainty map of %s written (max %d %%)", case_id, int(percent.max(initial=0)))
    return target
