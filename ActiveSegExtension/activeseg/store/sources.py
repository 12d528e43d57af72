"""Finding the volumes (and optional labels) to import: a folder of images or an MSD-style dataset.json."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from activeseg.errors import DatastoreError
from activeseg.io.volumes import strip_image_suffix

__all__ = ["ImportSource", "find_source"]


@dataclass
class ImportSource:
    """Images and labels found in a source folder.

    Attributes:
        images: (case id, path) pairs; the id is the file name without its image suffix.
        labels: case id -> label path (MSD ``labelsTr`` entries), possibly empty.
        label_names: class value -> name from ``dataset.json`` (background excluded), possibly empty.
        modality: the dataset's first modality name (e.g. "CT", "MRI"), or "" when unknown.
    """

    images: list[tuple[str, Path]] = field(default_factory=list)
    labels: dict[str, Path] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)
    modality: str = ""


def find_source(source: Path) -> ImportSource:
    """Read ``source``: a ``dataset.json``, a folder holding one, or a folder of image files.

    Raises:
        DatastoreError: nothing usable found, or a malformed dataset.json.
    """
    source = Path(source)
    dataset_json = source if source.is_file() else source / "dataset.json"
    if dataset_json.is_file():
        return _from_dataset_json(dataset_json)
    if not source.is_dir():
        raise DatastoreError(f"{source}: neither a folder of images nor a dataset.json")
    found = ImportSource()
    for path in sorted(source.iterdir()):
        stem = strip_image_suffix(path.name)
        if path.is_file() and stem is not None:
            found.images.append((stem, path))
    if not found.images:
        raise DatastoreError(f"{source}: no .nii.gz, .nii or .nrrd files found")
    return found


def _from_dataset_json(path: Path) -> ImportSource:
    try:
        dataset = json.loads(path.read_text())
        entries = dataset["training"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatastoreError(f"{path}: not an MSD-style dataset.json with a 'training' list ({exc})") from exc
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
    return found
