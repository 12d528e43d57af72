"""Reading and writing 3D volumes (NIfTI, NRRD) through SimpleITK, with geometry kept explicit.

Conventions used everywhere in the engine:

* Arrays are indexed ``(k, j, i)`` = (slice, row, column), as SimpleITK's ``GetArrayFromImage`` and
  Slicer's ``arrayFromVolume`` return them.
* :class:`Geometry` is in ITK's **LPS** physical space (what the files store); Slicer shows RAS, which
  negates the first two axes of origin and direction. Spacing and origin are in millimetres, in
  ``(i, j, k)`` = (x, y, z) order; ``direction`` is a row-major 3x3 matrix whose columns are the i, j, k
  axis directions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from activeseg.errors import GeometryMismatchError, ImageReadError, LabelValueError, NotThreeDimensionalError
from activeseg.io.nifti_integrity import check_nifti_complete
from activeseg.io.nrrd_header import check_nrrd_complete

__all__ = [
    "IMAGE_SUFFIXES",
    "Geometry",
    "Volume",
    "strip_image_suffix",
    "read_volume",
    "read_geometry",
    "read_untrusted_volume",
    "volume_from_bytes",
    "write_volume",
    "check_same_geometry",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Geometry:
    """Voxel grid in LPS physical space.

    Attributes:
        size: voxels per axis, (i, j, k) order.
        spacing: mm per voxel, (i, j, k) order.
        origin: LPS position of voxel (0, 0, 0) centre, mm.
        direction: row-major 3x3 direction cosines (columns = i, j, k axes), LPS.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: sitk.Image) -> Geometry:
        """Geometry of a SimpleITK image."""
        return cls(
            size=tuple(int(s) for s in image.GetSize()),  # type: ignore[arg-type]
            spacing=tuple(float(s) for s in image.GetSpacing()),  # type: ignore[arg-type]
            origin=tuple(float(o) for o in image.GetOrigin()),  # type: ignore[arg-type]
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        """Set spacing, origin and direction on ``image`` (its size must match) and return it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """Shape of the voxel array, (k, j, i) order."""
        return (self.size[2], self.size[1], self.size[0])

    def to_json(self) -> dict[str, list[float] | list[int]]:
        """JSON-ready dictionary."""
        return {
            "size": list(self.size),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }


@dataclass
class Volume:
    """A 3D image: voxel array (k, j, i) plus its geometry."""

    array: np.ndarray
    geometry: Geometry


def strip_image_suffix(name: str) -> str | None:
    """File name without its image suffix, or ``None`` when it is not a supported image name."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _check_3d(image: sitk.Image, what: str) -> None:
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NotThreeDimensionalError(
            f"{what}: expected a single-component 3D volume, got {image.GetDimension()}D "
            f"with {image.GetNumberOfComponentsPerPixel()} component(s) per voxel"
        )
    if min(image.GetSize()) < 2:
        raise NotThreeDimensionalError(f"{what}: size {image.GetSize()} has an axis of fewer than 2 voxels")


def _read_sitk(path: Path) -> sitk.Image:
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        try:
            check_nifti_complete(path, compressed=lower.endswith(".gz"))
        except ImageReadError as exc:
            raise ImageReadError(f"{path.name}: {exc}") from exc
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise ImageReadError(f"{path.name}: not a readable NIfTI/NRRD image ({first_line})") from exc


def read_volume(path: Path, dtype: type = np.float32) -> Volume:
    """Read a 3D volume.

    Args:
        path: ``.nii.gz``, ``.nii``, ``.nrrd`` (or another format SimpleITK reads).
        dtype: array dtype to convert to.

    Raises:
        ImageReadError: missing, corrupt or truncated file.
        NotThreeDimensionalError: a 2D, 4D or multi-component image.
    """
    path = Path(path)
    image = _read_sitk(path)
    _check_3d(image, path.name)
    return Volume(sitk.GetArrayFromImage(image).astype(dtype, copy=False), Geometry.of(image))


def read_geometry(path: Path) -> Geometry:
    """Read only the header of a 3D image (fast: no voxel data).

    Raises:
        ImageReadError: unreadable header. NotThreeDimensionalError: not a 3D volume.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"{path.name}: not a readable NIfTI/NRRD image") from exc
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        raise NotThreeDimensionalError(
            f"{path.name}: expected a single-component 3D volume, got {reader.GetDimension()}D"
        )
    return Geometry(
        size=tuple(int(s) for s in reader.GetSize()),  # type: ignore[arg-type]
        spacing=tuple(float(s) for s in reader.GetSpacing()),  # type: ignore[arg-type]
        origin=tuple(float(o) for o in reader.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(d) for d in reader.GetDirection()),
    )


# The one ITK reader an untrusted file of each format may reach (ITK otherwise picks a reader by content).
_UNTRUSTED_IO = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".nrrd": "NrrdImageIO"}


def read_untrusted_volume(
    path: Path, suffix: str, max_decoded_bytes: int, what: str = "upload", allow_nonfinite: bool = True
) -> Volume:
    """Read a file that came from outside (an upload): its header is checked before any reader sees it.

    NIfTI headers are validated fully and NRRD headers may not name another file (detached data); the declared
    decoded size (dimensions x type) must be at most ``max_decoded_bytes`` and the data must be complete and no
    longer than declared, all checked streaming before decoding; then only the ITK reader of ``suffix``'s format
    decodes it. Error messages name the file ``what``, never its server path.

    Args:
        path: the file (a private temp file).
        suffix: ``.nii.gz``, ``.nii`` or ``.nrrd`` (a ``.seg.nrrd`` read as a plain NRRD).
        max_decoded_bytes: the largest decoded voxel data accepted, bytes.
        what: how to name the file in errors.
        allow_nonfinite: accept NaN or infinite voxels (ITK's NIfTI reader turns them into 0 silently, so
            with False they are counted in the raw data and refused).

    Returns:
        The volume in the file's own voxel type (k, j, i), geometry in LPS.

    Raises:
        ImageReadError: a refused header, too much declared data, truncated or corrupt data, or an unsupported
            suffix. NotThreeDimensionalError: not a single-component 3D volume. LabelValueError: NaN or
            infinite voxels when ``allow_nonfinite`` is False.
    """
    path = Path(path)
    suffix = ".nrrd" if suffix.lower().endswith(".nrrd") else suffix.lower()
    if suffix not in _UNTRUSTED_IO:
        raise ImageReadError(f"unsupported upload format {suffix!r}; send .nii.gz, .nii or .nrrd")
    try:
        if suffix == ".nrrd":
            check_nrrd_complete(path, max_decoded_bytes=max_decoded_bytes)
        else:
            header = check_nifti_complete(path, compressed=suffix == ".nii.gz", max_decoded_bytes=max_decoded_bytes,
                                          count_nonfinite=not allow_nonfinite)
            if header.nonfinite:
                raise LabelValueError(f"{header.nonfinite} voxel(s) are NaN or infinite")
    except (ImageReadError, LabelValueError) as exc:
        raise type(exc)(f"{what}: {exc}") from exc
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_UNTRUSTED_IO[suffix])
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        lines = [line for line in str(exc).replace(str(path), what).strip().splitlines() if line.strip()]
        raise ImageReadError(f"{what}: not a readable {suffix} image ({lines[-1] if lines else 'unknown error'})") from exc
    _check_3d(image, what)
    array = sitk.GetArrayFromImage(image)
    if not allow_nonfinite and array.dtype.kind == "f" and not np.isfinite(array).all():
        raise LabelValueError(f"{what}: {int(np.count_nonzero(~np.isfinite(array)))} voxel(s) are NaN or infinite")
    return Volume(array, Geometry.of(image))


def volume_from_bytes(
    data: bytes, suffix: str, dtype: type = np.float32, scratch_dir: Path | None = None,
    max_decoded_bytes: int = 1 << 30,
) -> Volume:
    """Decode an image file's bytes from outside, as :func:`read_untrusted_volume` (via a private temp file).

    Args:
        data: the file's bytes.
        suffix: its format suffix, e.g. ``.nii.gz`` or ``.nrrd`` (``.seg.nrrd`` counts as ``.nrrd``).
        dtype: array dtype.
        scratch_dir: where to place the temp file (default: the system temp dir).
        max_decoded_bytes: the largest decoded voxel data accepted, bytes.

    Raises:
        ImageReadError, NotThreeDimensionalError: as :func:`read_untrusted_volume`.
    """
    import tempfile

    if suffix.lower().endswith(".seg.nrrd"):
        suffix = ".nrrd"
    if suffix.lower() not in _UNTRUSTED_IO:
        raise ImageReadError(f"unsupported upload format {suffix!r}; send .nii.gz, .nii or .nrrd")
    fd, name = tempfile.mkstemp(suffix=suffix, dir=scratch_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        volume = read_untrusted_volume(Path(name), suffix, max_decoded_bytes, what="file")
        return Volume(volume.array.astype(dtype, copy=False), volume.geometry)
    finally:
        os.unlink(name)


def write_volume(array: np.ndarray, geometry: Geometry, path: Path, compress: bool = True) -> None:
    """Write ``array`` (k, j, i) with ``geometry`` to ``path`` (format from the suffix). Not atomic by itself."""
    if tuple(array.shape) != geometry.array_shape:
        raise GeometryMismatchError(f"array shape {array.shape} != geometry {geometry.array_shape} (k, j, i)")
    image = geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    sitk.WriteImage(image, str(path), useCompression=compress)


def check_same_geometry(
    label: Geometry, image: Geometry, what: str, spacing_tol: float = 1e-3, origin_tol_mm: float = 1e-2
) -> None:
    """Raise :class:`GeometryMismatchError` naming the first difference between a label's grid and its image's.

    Args:
        spacing_tol: relative tolerance on spacing.
        origin_tol_mm: absolute tolerance on origin, mm (files round positions differently).
    """
    if label.size != image.size:
        raise GeometryMismatchError(f"{what}: size {label.size} != image size {image.size} (i, j, k)")
    if not np.allclose(label.spacing, image.spacing, rtol=spacing_tol, atol=0):
        raise GeometryMismatchError(f"{what}: spacing {label.spacing} mm != image spacing {image.spacing} mm")
    if not np.allclose(label.origin, image.origin, rtol=0, atol=origin_tol_mm):
        raise GeometryMismatchError(f"{what}: origin {label.origin} != image origin {image.origin} (LPS mm)")
    if not np.allclose(label.direction, image.direction, rtol=0, atol=1e-4):
        raise GeometryMismatchError(f"{what}: direction {label.direction} != image direction {image.direction}")
