"""Synthetic chest-CT-like phantoms with ground-truth masks, deterministic by seed.

Each phantom is an elliptic-cylinder body of soft tissue (~40 HU) in air (-1000 HU), two lungs
(~-850 HU), a spine and ribs (~+700 HU), and 0-4 lesions inside the lungs of varying size, shape and
contrast, plus Gaussian noise. Voxels are anisotropic (thicker slices) and the origin is not zero, so
geometry bugs show. Labels: 0 background, 1 lung, 2 lesion.

All random parameters are drawn once per phantom from ``numpy.random.default_rng(seed)``, then a
deterministic step renders them (repeatable and testable).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activeseg.io.volumes import Geometry, Volume, write_volume

__all__ = ["PHANTOM_LABELS", "PhantomParameters", "draw_parameters", "render_phantom", "make_phantom", "write_phantom_dataset"]

PHANTOM_LABELS = {1: "lung", 2: "lesion"}

# Hounsfield units of each tissue.
HU_AIR = -1000.0
HU_SOFT_TISSUE = 40.0
HU_LUNG = -850.0
HU_BONE = 700.0


@dataclass(frozen=True)
class PhantomParameters:
    """Everything random about one phantom, in normalised body coordinates ([-1, 1] across the body).

    Attributes:
        body_radii: body half-width and half-depth as fractions of the in-plane field of view.
        body_centre: in-plane shift of the body centre, fraction of the field of view.
        lung_radii: (x, y, z) semi-axes of each lung, body-normalised.
        lung_offset_x: lateral offset of each lung centre from the midline, body-normalised.
        lesions: per lesion (centre x, y, z body-normalised, semi-axes mm x3, contrast HU).
        noise_sd: Gaussian noise standard deviation, HU.
    """

    body_radii: tuple[float, float]
    body_centre: tuple[float, float]
    lung_radii: tuple[float, float, float]
    lung_offset_x: float
    lesions: tuple[tuple[float, float, float, float, float, float, float], ...]
    noise_sd: float


def draw_parameters(rng: np.random.Generator, max_lesions: int = 4) -> PhantomParameters:
    """Draw one phantom's parameters (the only random step)."""
    n_lesions = int(rng.integers(0, max_lesions + 1))
    lesions = []
    for _ in range(n_lesions):
        side = rng.choice([-1.0, 1.0])
        lesions.append(
            (
                float(side * rng.uniform(0.3, 0.6)),  # x, inside one lung
                float(rng.uniform(-0.35, 0.3)),  # y
                float(rng.uniform(-0.6, 0.6)),  # z
                float(rng.uniform(6.0, 22.0)),  # semi-axes, mm
                float(rng.uniform(6.0, 22.0)),
                float(rng.uniform(8.0, 26.0)),
                float(rng.uniform(-120.0, 120.0)),  # lesion HU (soft-tissue nodules, varying contrast)
            )
        )
    return PhantomParameters(
        body_radii=(float(rng.uniform(0.38, 0.46)), float(rng.uniform(0.27, 0.34))),
        body_centre=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
        lung_radii=(float(rng.uniform(0.28, 0.36)), float(rng.uniform(0.45, 0.6)), float(rng.uniform(0.75, 0.95))),
        lung_offset_x=float(rng.uniform(0.42, 0.5)),
        lesions=tuple(lesions),
        noise_sd=float(rng.uniform(15.0, 35.0)),
    )


def render_phantom(
    params: PhantomParameters, shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render HU image and label arrays.

    Args:
        params: from :func:`draw_parameters`.
        shape: array shape (k, j, i).
        spacing: mm per voxel (i, j, k).
        seed: seed of the noise.

    Returns:
        ``(image int16 HU, label uint8)``, both (k, j, i).
    """
    nk, nj, ni = shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    # Field-of-view-normalised in-plane coordinates, [-1, 1].
    x = (i + 0.5) / ni * 2.0 - 1.0 - params.body_centre[0]
    y = (j + 0.5) / nj * 2.0 - 1.0 - params.body_centre[1]
    z = (k + 0.5) / nk * 2.0 - 1.0
    bx, by = params.body_radii
    body = (x / (2 * bx)) ** 2 + (y / (2 * by)) ** 2 <= 0.25
    # Body-normalised coordinates: the body spans [-1, 1] in x and y.
    u, v = x / bx, y / by

    image = np.full(shape, HU_AIR, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    image[body] = HU_SOFT_TISSUE

    lrx, lry, lrz = params.lung_radii
    lungs = np.zeros(shape, dtype=bool)
    for side in (-1.0, 1.0):
        cu = side * params.lung_offset_x
        lungs |= ((u - cu) / lrx) ** 2 + ((v + 0.05) / lry) ** 2 + (z / lrz) ** 2 <= 1.0
    lungs &= body
    image[lungs] = HU_LUNG
    label[lungs] = 1

    # Spine: a posterior cylinder; ribs: a thin shell near the body wall on every third slice pair.
    spine = (u / 0.13) ** 2 + ((v - 0.72) / 0.14) ** 2 <= 1.0
    radius = np.sqrt(u**2 + v**2)
    ribs = (radius > 0.82) & (radius < 0.9) & ((k // 2) % 3 == 0) & (v > -0.7)
    image[(spine | ribs) & body] = HU_BONE

    # Lesions: ellipsoids in mm, edges roughened by a low-frequency cosine so shapes vary.
    si, sj, sk = spacing
    for cx, cy, cz, ax, ay, az, hu in params.lesions:
        ci = (cx * bx / 2.0 + 0.5 + params.body_centre[0] / 2.0) * ni
        cj = (cy * by / 2.0 + 0.5 + params.body_centre[1] / 2.0) * nj
        ck = (cz / 2.0 + 0.5) * nk
        d = ((i - ci) * si / ax) ** 2 + ((j - cj) * sj / ay) ** 2 + ((k - ck) * sk / az) ** 2
        wobble = 0.15 * np.cos(3.0 * np.arctan2((j - cj) * sj, (i - ci) * si) + cx * 10.0)
        lesion = (d <= 1.0 + wobble) & lungs
        image[lesion] = hu
        label[lesion] = 2

    noise_rng = np.random.default_rng(seed + 7919)
    image += noise_rng.normal(0.0, params.noise_sd, size=shape).astype(np.float32)
    return np.clip(image, -1024, 3071).astype(np.int16), label


def make_phantom(
    seed: int,
    shape: tuple[int, int, int] = (32, 64, 64),
    spacing: tuple[float, float, float] = (6.0, 6.0, 10.0),
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    max_lesions: int = 4,
) -> tuple[Volume, Volume]:
    """One phantom: ``(image, label)`` sharing a geometry whose origin is offset from zero.

    Args:
        seed: the phantom's seed; the same seed gives the same phantom.
        shape: (k, j, i) voxels.
        spacing: (i, j, k) mm; the default is anisotropic (10 mm slices).
        direction: LPS direction cosines, row-major.
        max_lesions: lesions are drawn from 0..max_lesions.
    """
    rng = np.random.default_rng(seed)
    params = draw_parameters(rng, max_lesions=max_lesions)
    image, label = render_phantom(params, shape, spacing, seed)
    extent = [shape[2] * spacing[0], shape[1] * spacing[1], shape[0] * spacing[2]]
    origin = (-extent[0] / 2 + 3.5, -extent[1] / 2 - 12.25, -extent[2] / 2 + 40.0)
    geometry = Geometry(size=(shape[2], shape[1], shape[0]), spacing=spacing, origin=origin, direction=direction)
    return Volume(image, geometry), Volume(label, geometry)


def write_phantom_dataset(
    out_dir: Path,
    count: int,
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 64, 64),
    file_format: str = "nii.gz",
) -> Path:
    """Write ``count`` phantoms as an MSD-style folder (``imagesTr/``, ``labelsTr/``, ``dataset.json``).

    Args:
        out_dir: created if missing.
        count: number of cases, named ``phantom_000`` ...
        seed: base seed; case n uses ``seed * 100003 + n``.
        shape: (k, j, i) voxels per phantom.
        file_format: ``nii.gz`` or ``nrrd``.

    Returns:
        Path of the written ``dataset.json``.
    """
    if file_format not in ("nii.gz", "nrrd"):
        raise ValueError(f"file_format must be 'nii.gz' or 'nrrd', got {file_format!r}")
    out_dir = Path(out_dir)
    (out_dir / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out_dir / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for n in range(count):
        image, label = make_phantom(seed * 100003 + n, shape=shape)
        name = f"phantom_{n:03d}.{file_format}"
        write_volume(image.array, image.geometry, out_dir / "imagesTr" / name)
        write_volume(label.array, label.geometry, out_dir / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset = {
        "name": "ActiveSegPhantoms",
        "description": "Synthetic chest-CT-like phantoms generated by activeseg",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(k): v for k, v in PHANTOM_LABELS.items()}},
        "numTraining": count,
        "training": training,
    }
    path = out_dir / "dataset.json"
    path.write_text(json.dumps(dataset, indent=2) + "\n")
    return path
