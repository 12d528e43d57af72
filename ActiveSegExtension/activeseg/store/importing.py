"""Creating a datastore: checking and copying the images, drawing the fixed validation split once,
and importing existing labels as expert labels."""

from __future__ import annotations

import logging
import random
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from activeseg.config import Config
from activeseg.errors import ActiveSegError, DatastoreError
from activeseg.io.volumes import read_volume, strip_image_suffix
from activeseg.store.case_ids import validate_case_id
from activeseg.store.cases import CaseState
from activeseg.store.database import SCHEMA_VERSION, SUBFOLDERS, Database, create_schema
from activeseg.store.labels import LabelStore

__all__ = [
    "InspectedImage", "inspect_images", "MAX_LABEL_MAP_VALUES", "CT_AIR_BELOW", "import_images", "import_labels",
    "draw_validation_split", "small_store_advice", "MIN_CASES_FOR_VALIDATION",
]

logger = logging.getLogger(__name__)


#: A volume is taken for a label map when its voxels are integers, none negative, with at most this many values.
MAX_LABEL_MAP_VALUES = 32
#: A volume whose lowest value is below this (HU) holds air as CT stores it (about -1000 HU); MR and other
#: modalities have no such values.
CT_AIR_BELOW = -500.0


@dataclass(frozen=True)
class InspectedImage:
    """An image file that decodes as a 3D volume, with what its voxels say about it.

    Attributes:
        case_id: its case id. path: the file.
        minimum: its lowest voxel value (HU for CT).
        label_values: the distinct values when it looks like a label map (integer voxel type, no negative value,
            at most :data:`MAX_LABEL_MAP_VALUES` values), else ``None``.
    """

    case_id: str
    path: Path
    minimum: float
    label_values: tuple[int, ...] | None

    @property
    def looks_like_ct(self) -> bool:
        """Whether it holds CT air (a value below :data:`CT_AIR_BELOW`)."""
        return self.minimum < CT_AIR_BELOW


_INTEGER_PIXELS = {sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
                   sitk.sitkUInt64, sitk.sitkInt64}


def _label_values(path: Path, array: np.ndarray, minimum: float) -> tuple[int, ...] | None:
    """The distinct values of a volume stored with an integer voxel type and at most MAX_LABEL_MAP_VALUES
    non-negative values, else ``None`` (read from the file's header: the array itself is float32)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    if reader.GetPixelID() not in _INTEGER_PIXELS or minimum < 0:
        return None
    flat = array.ravel()
    if len(np.unique(flat[:: max(1, flat.size // 100_000)])) > MAX_LABEL_MAP_VALUES:  # a sample already says no
        return None
    values = np.unique(flat)
    return tuple(int(v) for v in values) if len(values) <= MAX_LABEL_MAP_VALUES else None


def inspect_images(images: list[tuple[str, Path]]) -> tuple[list[InspectedImage], list[str]]:
    """Read every image once: the pairs whose id is valid and unique and whose file decodes as a 3D volume, with
    their lowest value and label-map verdict, and one sentence per skipped pair."""
    problems: list[str] = []
    accepted: list[InspectedImage] = []
    seen: set[str] = set()
    for case_id, path in images:
        try:
            validate_case_id(case_id)
            if case_id in seen:
                raise DatastoreError(f"duplicate case id {case_id!r}")
            volume = read_volume(path)  # full decode: catches truncated data, not only bad headers
        except ActiveSegError as exc:  # unreadable, not 3D, bad or duplicate id
            reason = str(exc).removeprefix(f"{path.name}: ")  # the readers start with the file's name
            problems.append(f"skipped {path.name}: {reason}")
            logger.debug("skipped %s: %s", path, exc)  # returned to the caller, which reports it once
            continue
        seen.add(case_id)
        minimum = float(volume.array.min())
        accepted.append(InspectedImage(case_id, path, minimum, _label_values(path, volume.array, minimum)))
    return accepted, problems


# Under this many cases a val_fraction that rounds to no case gets none (every case is needed for training).
MIN_CASES_FOR_VALIDATION = 5


def small_store_advice(total: int, val: int) -> str | None:
    """Advice for a datastore that got no validation split, or ``None`` when it has one."""
    if val > 0:
        return None
    return (
        f"note: no validation split ({total} case(s); with fewer than {MIN_CASES_FOR_VALIDATION} cases the split is "
        "only made when val_fraction names at least one case). Without it a round cannot check its new weights "
        "against the active model and the learning curve shows no validation Dice. Add cases and run init again"
        + (f", or ask for one validation case with --set val_fraction={1 / total:.2f}." if total >= 2 else "."))


def draw_validation_split(case_ids: list[str], val_fraction: float, seed: int) -> set[str]:
    """The fixed validation cases: ``round(val_fraction * n)`` ids drawn with ``seed`` (at least one when
    ``val_fraction > 0`` and there are 5 or more cases)."""
    ids = sorted(case_ids)
    n_val = int(round(val_fraction * len(ids)))
    if val_fraction > 0 and n_val == 0 and len(ids) >= MIN_CASES_FOR_VALIDATION:
        n_val = 1
    return set(random.Random(seed).sample(ids, n_val))


def import_images(
    database: Database, images: list[tuple[str, Path]], config: Config, seed: int, inspected: bool = False,
) -> tuple[set[str], list[str]]:
    """Create the datastore's folders, settings and database and copy the readable images in.

    Args:
        database: where the datastore goes (its folder may exist but must not be a datastore yet).
        images: (case id, image path) pairs. Unreadable or non-3D images are skipped and reported.
        config: settings to store.
        seed: seed of the validation split.
        inspected: the pairs passed :func:`inspect_images` already (not read again).

    Returns:
        The imported case ids and one human sentence per skipped file.

    Raises:
        DatastoreError: already a datastore, or no image could be imported.
    """
    if database.db_path.exists():
        raise DatastoreError(f"{database.root} is already an ActiveSeg datastore")
    config.validate()
    if inspected:
        accepted, problems = list(images), []
    else:
        checked, problems = inspect_images(images)
        accepted = [(image.case_id, image.path) for image in checked]
    if not accepted:
        raise DatastoreError(f"no readable 3D image to import ({len(problems)} skipped)")

    (database.root / "images").mkdir(parents=True, exist_ok=True)
    for sub in SUBFOLDERS:
        (database.meta_dir / sub).mkdir(parents=True, exist_ok=True)
    config.save(database.meta_dir / "config.json")
    val_ids = draw_validation_split([case_id for case_id, _ in accepted], config.val_fraction, seed)
    connection = sqlite3.connect(database.db_path)
    try:
        create_schema(connection)
        now = time.time()
        with connection:
            for case_id, path in accepted:
                suffix = path.name[len(strip_image_suffix(path.name) or path.stem) :]
                relative = f"images/{case_id}{suffix}"
                shutil.copyfile(path, database.root / relative)
                split = "val" if case_id in val_ids else "train"
                connection.execute(
                    "INSERT INTO cases (case_id, image_file, split, state, updated) VALUES (?, ?, ?, ?, ?)",
                    (case_id, relative, split, CaseState.UNLABELED.value, now),
                )
            connection.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            connection.execute("INSERT INTO meta VALUES ('split_seed', ?)", (str(seed),))
    finally:
        connection.close()
    return {case_id for case_id, _ in accepted}, problems


def import_labels(labels: LabelStore, label_files: dict[str, Path], imported: set[str]) -> list[str]:
    """Import label files of imported cases as expert labels (an all-background one means "no finding").

    Returns:
        One sentence per label not imported (the others go on), including the labels of cases not imported.
    """
    problems: list[str] = []
    for case_id, label_path in label_files.items():
        if case_id not in imported:  # its image was skipped (and reported): say the label goes with it
            problems.append(f"label of {case_id} not imported: its image was not imported (see above)")
            continue
        try:
            label = read_volume(label_path, dtype=np.uint8)
            labels.submit_label(case_id, label, no_finding=not label.array.any(), annotator="import")
        except Exception as exc:  # noqa: BLE001 - any bad label is reported and skipped, the rest go on
            problems.append(f"label of {case_id} not imported: {exc}")
            logger.debug("label of %s not imported: %s", case_id, exc)  # returned to the caller, which reports it once
    return problems
