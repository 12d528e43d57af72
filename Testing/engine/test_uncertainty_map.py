"""The voxel-wise uncertainty map (activeseg.method.uncertainty_map) on constructed heads: its maximum lies where
the heads disagree, it is written in the case's own geometry, atomically, and bad input is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from activeseg.io.volumes import Geometry, read_volume
from activeseg.method.uncertainty_map import (
    UNCERTAINTY_SCALE,
    head_disagreement,
    normalised_entropy,
    uncertainty_map,
    uncertainty_map_path,
    write_uncertainty_map,
)

SHAPE = (12, 20, 24)  # (k, j, i)
CUBE = (slice(3, 7), slice(10, 16), slice(4, 9))  # where the auxiliary heads contradict the main head


def constructed_heads() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three classes. The main head is sure everywhere (background, a 'lung' slab); the auxiliary heads agree with
    it except in CUBE, where both say 'lesion'. A band of voxels where every head is mildly unsure (0.6/0.4)."""
    main = np.zeros((3, *SHAPE), np.float32)
    main[0] = 0.98
    main[1] = 0.01
    main[2] = 0.01
    main[:, :, :8, :] = np.array([0.01, 0.98, 0.01], np.float32)[:, None, None, None]
    main[:, :, :, 20:] = np.array([0.6, 0.4, 0.0], np.float32)[:, None, None, None]  # mild, all heads alike
    half, quarter = main.copy(), main.copy()
    for aux in (half, quarter):
        aux[(slice(None), *CUBE)] = np.array([0.01, 0.01, 0.98], np.float32)[:, None, None, None]
    return main, half, quarter


def test_maximum_lies_where_the_heads_disagree() -> None:
    main, half, quarter = constructed_heads()
    u = uncertainty_map(main, half, quarter)
    assert u.dtype == np.float32 and u.shape == SHAPE
    assert 0.0 <= u.min() and u.max() <= 1.0
    peak = np.unravel_index(int(np.argmax(u)), SHAPE)
    assert all(s.start <= p < s.stop for p, s in zip(peak, CUBE)), f"peak {peak} outside the disagreement cube"
    inside = u[CUBE]
    outside = np.ones(SHAPE, bool)
    outside[CUBE] = False
    assert inside.min() > u[outside].max()
    assert head_disagreement(main, half, quarter)[CUBE] == pytest.approx(0.97, abs=1e-5)
    # The mildly unsure band shows through the entropy term although the heads agree there.
    band = u[:, :, 20:]
    assert band.min() == pytest.approx(normalised_entropy(main)[0, 0, 21]) and band.min() > 0.5
    assert head_disagreement(main, half, quarter)[:, :, 20:].max() == 0.0


def test_limits_of_both_signals() -> None:
    uniform = np.full((4, 2, 2, 2), 0.25, np.float32)
    assert normalised_entropy(uniform) == pytest.approx(1.0)
    sure = np.zeros((4, 2, 2, 2), np.float32)
    sure[1] = 1.0
    assert normalised_entropy(sure).max() == 0.0
    assert uncertainty_map(sure, sure, sure).max() == 0.0
    other = np.zeros_like(sure)
    other[3] = 1.0
    assert head_disagreement(sure, other, other) == pytest.approx(1.0)
    assert head_disagreement(sure, other, sure) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [np.zeros((2, 3, 4), np.float32), np.zeros((1, 2, 3, 4), np.float32)])
def test_bad_probabilities_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="main head"):
        uncertainty_map(bad, bad, bad)


def test_mismatched_or_non_finite_heads_are_refused() -> None:
    main, half, _ = constructed_heads()
    with pytest.raises(ValueError, match="quarter head: shape"):
        uncertainty_map(main, half, main[:, :-1])
    broken = half.copy()
    broken[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="half head: probabilities contain NaN"):
        uncertainty_map(main, broken, half)


def test_written_map_has_the_case_geometry(tmp_path: Path) -> None:
    main, half, quarter = constructed_heads()
    direction = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry(size=(SHAPE[2], SHAPE[1], SHAPE[0]), spacing=(0.7, 0.8, 2.5), origin=(-12.0, 30.5, 7.25),
                        direction=direction)
    meta = tmp_path / ".activeseg"
    path = write_uncertainty_map(meta, "case_01", main, half, quarter, geometry)
    assert path == uncertainty_map_path(meta, "case_01") == meta / "uncertainty" / "case_01.nrrd"
    assert [p.name for p in path.parent.iterdir()] == ["case_01.nrrd"]  # no temp file left behind
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt8
    volume = read_volume(path)
    assert volume.geometry.size == geometry.size
    assert np.allclose(volume.geometry.spacing, geometry.spacing) and np.allclose(volume.geometry.origin, geometry.origin)
    assert np.allclose(volume.geometry.direction, direction)
    expected = np.rint(uncertainty_map(main, half, quarter) * UNCERTAINTY_SCALE)
    assert np.array_equal(volume.array, expected)
    # A second ranking replaces the map.
    write_uncertainty_map(meta, "case_01", main, main, main, geometry)
    assert np.array_equal(read_volume(path).array[CUBE], np.rint(normalised_entropy(main) * UNCERTAINTY_SCALE)[CUBE])


def test_case_id_cannot_walk_out_of_the_folder(tmp_path: Path) -> None:
    from activeseg.errors import InvalidCaseIdError

    with pytest.raises(InvalidCaseIdError):
        uncertainty_map_path(tmp_path, "../escape")
