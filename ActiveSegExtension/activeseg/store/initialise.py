"""``activeseg init``: create a datastore from a source folder, with settings derived from it."""

from __future__ import annotations

import logging
from pathlib import Path

from activeseg.config import Config, apply_overrides
from activeseg.errors import DatastoreError
from activeseg.store.cases import CaseState
from activeseg.store.datastore import Datastore
from activeseg.store.importing import CT_AIR_BELOW, InspectedImage, inspect_images
from activeseg.store.sources import find_source

__all__ = ["init_datastore"]

logger = logging.getLogger(__name__)


def init_datastore(
    store: Path, source: Path, with_labels: bool = False, overrides: list[str] | None = None, seed: int = 0,
    config: Config | None = None,
) -> tuple[Datastore, list[str]]:
    """Create ``store`` from ``source`` (a folder of volumes, an MSD-style ``dataset.json``, or DICOM files).

    The label set comes from ``dataset.json`` when it has one; a non-CT modality switches intensity
    normalisation to z-score. ``overrides`` (``section.name=value``) are applied last and saved.

    A plain folder declares nothing, so its volumes are checked (:func:`_sort_plain_folder`): label maps are not
    imported as cases, and the modality is read from the voxels (CT holds air below -500 HU): a folder with no CT
    volume gets z-score normalisation, and in a folder mixing CT with other volumes the fewer kind is skipped (each
    file named); a tie is refused. ``--set intensity.mode=...`` declares the modality and turns the last two off.

    Args:
        store: datastore folder to create.
        source: folder or dataset.json.
        with_labels: import the dataset's labels as expert labels.
        overrides: ``--set`` strings.
        seed: validation-split seed.
        config: starting settings (default: :class:`Config` defaults).

    Returns:
        The datastore and one sentence per file not imported (each named once). Notes that concern no single file
        (labels found but not asked for, the modality chosen) are logged.

    Raises:
        DatastoreError: nothing to import; ``with_labels`` but the source has no label; a CT/non-CT tie.
        ConfigError: a bad override.
    """
    from activeseg.store.dicom_import import init_from_dicom_folder, looks_like_dicom_folder

    if looks_like_dicom_folder(source):  # DICOM files: one case per series (store/dicom_import.py)
        return init_from_dicom_folder(store, source, with_labels=with_labels, overrides=overrides, seed=seed, config=config)
    found = find_source(source)
    if with_labels and not found.labels:
        raise DatastoreError(
            f"--with-labels: {source} has no label to import. Name each label like its image plus _label, _seg or "
            "_mask (X.nii.gz and X_label.nii.gz), or put it under the image's name in labels/ or labelsTr/, or give "
            "an MSD-style dataset.json; without --with-labels the images are imported unlabelled")
    config = config or Config()
    if found.label_names:
        config.labels = dict(found.label_names)
    if found.modality and found.modality.upper() != "CT":
        config.intensity.mode = "zscore"
    modality_declared = bool(found.modality) or any(o.partition("=")[0].strip() == "intensity.mode" for o in overrides or [])
    checked, problems = inspect_images(found.images)
    if found.plain_folder:
        checked = _sort_plain_folder(checked, problems, config, modality_declared)
        if found.labels and not with_labels:
            logger.info("found %d label(s) named after their images (e.g. %s); not imported: add --with-labels to "
                        "import them as expert labels", len(found.labels), next(iter(found.labels.values())).name)
    apply_overrides(config, overrides or [])
    if not checked:
        raise DatastoreError(f"no readable 3D image to import ({len(found.problems) + len(problems)} file(s) skipped:"
                             f" {'; '.join((found.problems + problems)[:3])})"[:600])
    datastore, more = Datastore.create(store, [(image.case_id, image.path) for image in checked], config,
                                       found.labels if with_labels else None, seed=seed, inspected=True)
    problems = found.problems + problems + more
    counts = datastore.counts()
    logger.debug(  # the caller (the CLI) prints the summary with the problems
        "datastore %s: %d case(s) (%d validation), %d labelled, %d problem(s)",
        datastore.root, counts["total"], counts["val"], counts[CaseState.LABELED], len(problems),
    )
    return datastore, problems


def _sort_plain_folder(
    checked: list[InspectedImage], problems: list[str], config: Config, modality_declared: bool,
) -> list[InspectedImage]:
    """The images of a plain folder to import: label maps and (unless the modality is declared) the fewer of CT and
    non-CT volumes go to ``problems``; a folder without CT gets z-score normalisation (changes ``config``).

    Raises:
        DatastoreError: as many CT as non-CT volumes (which are the cases cannot be guessed).
    """
    images: list[InspectedImage] = []
    for image in checked:
        if image.label_values is not None:
            values = ", ".join(str(v) for v in image.label_values[:8]) + (", ..." if len(image.label_values) > 8 else "")
            problems.append(
                f"skipped {image.path.name}: a label map, not an image (integer voxels, {len(image.label_values)} "
                f"value(s): {values}); to import a label, name it like its image plus _label (X_label.nii.gz) or put it "
                "in labels/ under its image's name, and add --with-labels")
        else:
            images.append(image)
    if modality_declared or not images:
        return images
    ct = [image for image in images if image.looks_like_ct]
    other = [image for image in images if not image.looks_like_ct]
    if not ct:
        config.intensity.mode = "zscore"
        logger.warning(
            "no volume holds CT air (a value below %g HU): taken for MR (or another non-CT modality) and normalised "
            "per volume (z-score); if they are CT, add --set intensity.mode=ct", CT_AIR_BELOW)
        return images
    if not other:
        return images
    if len(ct) == len(other):
        raise DatastoreError(
            f"{len(ct)} volume(s) look like CT (air below {CT_AIR_BELOW:g} HU, e.g. {ct[0].path.name}) and "
            f"{len(other)} do not (e.g. {other[0].path.name}, lowest value {other[0].minimum:g}); one datastore holds "
            "one modality: split the folder, or declare it with --set intensity.mode=ct (or zscore) to import all")
    keep, drop, kind = (ct, other, "CT") if len(ct) > len(other) else (other, ct, "non-CT")
    for image in drop:
        problems.append(
            f"skipped {image.path.name}: {'not ' if kind == 'CT' else ''}CT (lowest value {image.minimum:g}; CT has "
            f"air below {CT_AIR_BELOW:g} HU) while {len(keep)} of the {len(images)} volumes here are {kind}; one "
            "datastore holds one modality (declare it with --set intensity.mode=ct or zscore to import all)")
    if kind == "non-CT":
        config.intensity.mode = "zscore"
    return keep
