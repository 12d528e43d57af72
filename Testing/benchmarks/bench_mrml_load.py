"""Loading a full-size CT and a two-segment pseudo-label into MRML nodes from bytes (the Slicer side of Next).

What the module does when a case arrives: image bytes -> ``vtkMRMLScalarVolumeNode`` and ``.seg.nrrd``
bytes -> ``vtkMRMLSegmentationNode`` with the image as reference geometry, through
``ActiveSegLib.mrml`` on the real MRML libraries (``slicer-core``), including the integrity checks that
guard Slicer against truncated files. Target: image + segmentation <= 2 s on this CPU for 512x512x300.

The CT is synthetic but CT-like for compression (smooth anatomy-sized blobs plus +/-20 HU noise, int16);
the label has two segments (a large "lung" and a small "lesion"). Bytes are produced once, outside the
timing; each row is the median of several loads into a fresh scene.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["run"]

MODULE_DIR = Path(__file__).resolve().parents[2] / "ActiveSegModule"
TARGET_S = 2.0


def _ct_and_label(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume (k, j, i) and a two-class label of it."""
    rng = np.random.default_rng(0)
    k, j, i = np.ogrid[: shape[0], : shape[1], : shape[2]]
    body = ((j - shape[1] / 2) / (0.42 * shape[1])) ** 2 + ((i - shape[2] / 2) / (0.45 * shape[2])) ** 2 <= 1
    lungs = (((j - shape[1] * 0.45) / (0.25 * shape[1])) ** 2 + ((np.abs(i - shape[2] / 2) - shape[2] * 0.2) / (0.13 * shape[2])) ** 2 <= 1)
    lesion = ((k - shape[0] / 2) / 6.0) ** 2 + ((j - shape[1] * 0.45) / 14.0) ** 2 + ((i - shape[2] * 0.3) / 14.0) ** 2 <= 1
    image = np.full(shape, -1000, dtype=np.int16)
    image[np.broadcast_to(body, shape)] = 40
    lung_mask = np.broadcast_to(lungs & body, shape)
    image[lung_mask] = -850
    image[lesion & lung_mask] = 30
    image += rng.integers(-20, 21, size=shape, dtype=np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    label[lung_mask] = 1
    label[lesion & lung_mask] = 2
    return image, label


def _encode(image: np.ndarray, label: np.ndarray) -> tuple[dict[str, bytes], bytes]:
    import tempfile

    from activeseg.io.volumes import Geometry, write_volume
    from activeseg.io.seg_nrrd import segmentation_bytes

    geometry = Geometry(size=(image.shape[2], image.shape[1], image.shape[0]), spacing=(0.7, 0.7, 1.25),
                        origin=(-180.0, -200.0, -350.0), direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    images = {}
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".nii.gz", ".nrrd"):
            path = Path(folder) / f"ct{suffix}"
            write_volume(image, geometry, path, compress=True)
            images[suffix] = path.read_bytes()
    return images, segmentation_bytes(label, geometry, {1: "lung", 2: "lesion"})


def _median_time(action, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(quick: bool) -> str:
    """Markdown table of load times and their ratio to the 2 s target."""
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    import vtk

    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    from ActiveSegLib.mrml import MrmlContext, segmentation_node_from_bytes, volume_node_from_bytes

    shape = (60, 512, 512) if quick else (300, 512, 512)
    repeats = 2 if quick else 3
    image, label = _ct_and_label(shape)
    images, segmentation = _encode(image, label)
    rows = []
    for suffix, data in images.items():
        def load_image(data: bytes = data, suffix: str = suffix) -> None:
            ctx = MrmlContext.headless()
            volume_node_from_bytes(ctx, data, suffix, "ct")
            ctx.scene.Clear(1)

        def load_both(data: bytes = data, suffix: str = suffix) -> None:
            ctx = MrmlContext.headless()
            volume = volume_node_from_bytes(ctx, data, suffix, "ct")
            segmentation_node_from_bytes(ctx, segmentation, "pseudo", volume)
            ctx.scene.Clear(1)

        image_s = _median_time(load_image, repeats)
        both_s = _median_time(load_both, repeats)
        rows.append((f"image {suffix} ({len(data) / 1e6:.0f} MB)", image_s))
        rows.append((f"image {suffix} + 2-segment .seg.nrrd ({len(segmentation) / 1e6:.1f} MB)", both_s))
    size = "x".join(str(s) for s in reversed(shape))
    lines = [
        f"Volume {size} voxels (i x j x k) int16, median of {repeats} loads into a fresh headless scene.",
        "",
        "| load | seconds | ratio to the 2 s target |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {seconds:.2f} | {seconds / TARGET_S:.2f} |" for name, seconds in rows]
    return "\n".join(lines)
