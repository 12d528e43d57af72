"""Finding the volumes (and optional labels) to import: a folder of images or an MSD-style dataset.json.

A plain folder is read by these conventions (an MSD ``dataset.json`` lists its files and needs none of them):

* images are the volume files in the folder itself and in an ``images/`` or ``imagesTr/`` subfolder;
* a label of image ``X`` is ``X_label``, ``X_labels``, ``X_seg``, ``X_segmentation`` or ``X_mask`` (``_`` or
  ``-``, any case, any volume suffix; also Slicer's ``X.seg.nrrd``) next to it, or ``X`` (or one of those names)
  in a ``labels/``, ``labelsTr/`` or ``masks/`` subfolder;
* a label whose image is missing, a file that is not a volume, and any other subfolder are skipped, each named
  once with its reason in :attr:`ImportSource.problems`. Hidden files (``.DS_Store``...) are ignored.

Label maps with other names are recognised by their voxels when the images are read
(:func:`activeseg.store.importing.inspect_images`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from activeseg.errors import DatastoreError
from activeseg.io.volumes import IMAGE_SUFFIXES, strip_image_suffix

__all__ = ["ImportSource", "find_source", "label_target", "IMAGE_FOLDERS", "LABEL_FOLDERS"]

#: Subfolders of a plain folder whose volumes are images.
IMAGE_FOLDERS = ("images", "imagesTr")
#: Subfolders of a plain folder whose volumes are labels (named like their image, or with a label suffix).
LABEL_FOLDERS = ("labels", "labelsTr", "masks")
# A label's name: its image's name plus one of these (case-insensitive).
_LABEL_NAME = re.compile(r"^(?P<image>.+?)(?:[_-](?:labels?|seg|segmentation|mask)|\.seg)$", re.IGNORECASE)


@dataclass
class ImportSource:
    """Images and labels found in a source folder.

    Attributes:
        images: (case id, path) pairs; the id is the file name without its image suffix.
        labels: case id -> label path (MSD ``labelsTr`` entries, or a plain folder's paired labels), possibly empty.
        label_names: class value -> name from ``dataset.json`` (background excluded), possibly empty.
        modality: the dataset's first modality name (e.g. "CT", "MRI"), or "" when unknown (a plain folder).
        problems: one sentence per file or folder of a plain folder that is not imported (see the module text).
        plain_folder: ``True`` for a folder without ``dataset.json``: nothing declares its files, so the
            importer also checks their voxels (label maps, modality).
    """

    images: list[tuple[str, Path]] = field(default_factory=list)
    labels: dict[str, Path] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)
    modality: str = ""
    problems: list[str] = field(default_factory=list)
    plain_folder: bool = False


def label_target(file_name: str) -> str | None:
    """The image stem a label file's name points to (``liver_3_seg.nii.gz`` -> ``liver_3``), or ``None`` when
    the name does not follow a label convention (or is not a volume file)."""
    stem = strip_image_suffix(file_name)
    match = _LABEL_NAME.match(stem) if stem else None
    return match.group("image") if match else None


def find_source(source: Path) -> ImportSource:
    """Read ``source``: a ``dataset.json``, a folder holding one, or a folder of image files.

    Raises:
        DatastoreError: a single file that is not a dataset.json, nothing usable found, or a malformed dataset.json.
    """
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() != ".json":
            raise DatastoreError(
                f"{source} is a single file: --from takes a folder of volumes (.nii.gz, .nrrd; with their labels "
                "as X_label.nii.gz or labels/X.nii.gz), an MSD-style dataset.json, or a folder of DICOM files. "
                "Put the volume in a folder of its own and give that folder")
        return _from_dataset_json(source)
    if (source / "dataset.json").is_file():
        return _from_dataset_json(source / "dataset.json")
    if not source.is_dir():
        raise DatastoreError(f"{source}: no such folder (--from takes a folder of volumes or a dataset.json)")
    return _from_folder(source)


def _volume_files(folder: Path, found: ImportSource, root: Path) -> list[Path]:
    """The volume files directly in ``folder``; other files (and subfolders of subfolders) go to problems."""
    volumes: list[Path] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        shown = path.relative_to(root).as_posix()
        if path.is_dir():
            if folder == root and path.name in IMAGE_FOLDERS + LABEL_FOLDERS:
                continue  # read by the caller
            found.problems.append(
                f"skipped folder {shown}/: not searched (images go in the folder itself or in "
                f"{'/, '.join(IMAGE_FOLDERS)}/, labels in {'/, '.join(LABEL_FOLDERS)}/)")
        elif strip_image_suffix(path.name) is None:
            found.problems.append(f"skipped {shown}: not a volume file ({', '.join(IMAGE_SUFFIXES)})")
        else:
            volumes.append(path)
    return volumes


def _from_folder(source: Path) -> ImportSource:
    """A folder without dataset.json: images and labels by the naming conventions of the module text."""
    found = ImportSource(plain_folder=True)
    images: dict[str, Path] = {}
    named_labels: list[tuple[str, Path]] = []  # (image stem it names, label path)
    folders = [(source, "mixed")] + [(source / name, "images") for name in IMAGE_FOLDERS if (source / name).is_dir()] \
        + [(source / name, "labels") for name in LABEL_FOLDERS if (source / name).is_dir()]
    for folder, role in folders:
        for path in _volume_files(folder, found, source):
            stem = strip_image_suffix(path.name) or path.name
            target = label_target(path.name)
            if role == "labels":
                named_labels.append((target or stem, path))
            elif target is not None and role == "mixed":
                named_labels.append((target, path))
            elif stem in images:
                found.problems.append(f"skipped {path.relative_to(source).as_posix()}: a second image named "
                                      f"{stem!r} (the first is {images[stem].relative_to(source).as_posix()})")
            else:
                images[stem] = path
    for target, path in named_labels:
        shown = path.relative_to(source).as_posix()
        if target not in images:
            found.problems.append(f"skipped {shown}: a label (by its name or folder) with no image {target!r} here")
        elif target in found.labels:
            found.problems.append(f"skipped {shown}: a second label of {target!r} "
                                  f"(using {found.labels[target].relative_to(source).as_posix()})")
        else:
            found.labels[target] = path
    found.images = sorted(images.items())
    if not found.images:
        raise DatastoreError(f"{source}: no .nii.gz, .nii or .nrrd image volumes found"
                             + (f" ({len(named_labels)} label file(s) only)" if named_labels else ""))
    return found


def _from_dataset_json(path: Path) -> ImportSource:
    try:
        dataset = json.loads(path.read_text(encoding="utf-8"))
        entries = dataset["training"]
        root = path.parent
        found = ImportSource()
        modality = dataset.get("modality", {})
        found.modality = str(next(iter(modality.values()), "")) if isinstance(modality, dict) else ""
        found.label_names = {int(k): str(v) for k, v in dataset.get("labels", {}).items() if int(k) != 0}
        for entry in entries:
            image = root / entry["image"] if isinstance(entry, dict) else root / entry
            stem = strip_image_suffix(image.name) or image.stem
            found.images.append((stem, image))
            if isinstance(entry, dict) and entry.get("label"):
                found.labels[stem] = root / entry["label"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatastoreError(f"{path}: not an MSD-style dataset.json with a 'training' list ({type(exc).__name__}: "
                             f"{exc})"[:400]) from exc
    except OSError as exc:
        raise DatastoreError(f"{path}: cannot be read ({exc})") from exc
    return found
