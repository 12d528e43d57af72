"""``activeseg init``: create a datastore from a source folder, with settings derived from it."""

from __future__ import annotations

import logging
from pathlib import Path

from activeseg.config import Config, apply_overrides
from activeseg.store.cases import CaseState
from activeseg.store.datastore import Datastore
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

    Args:
        store: datastore folder to create.
        source: folder or dataset.json.
        with_labels: import the dataset's labels as expert labels.
        overrides: ``--set`` strings.
        seed: validation-split seed.
        config: starting settings (default: :class:`Config` defaults).

    Returns:
        The datastore and one sentence per skipped file.
    """
    from activeseg.store.dicom_import import init_from_dicom_folder, looks_like_dicom_folder

    if looks_like_dicom_folder(source):  # DICOM files: one case per series (store/dicom_import.py)
        return init_from_dicom_folder(store, source, with_labels=with_labels, overrides=overrides, seed=seed, config=config)
    found = find_source(source)
    config = config or Config()
    if found.label_names:
        config.labels = dict(found.label_names)
    if found.modality and found.modality.upper() != "CT":
        config.intensity.mode = "zscore"
    apply_overrides(config, overrides or [])
    datastore, problems = Datastore.create(store, found.images, config, found.labels if with_labels else None, seed=seed)
    counts = datastore.counts()
    logger.debug(  # the caller (the CLI) prints the summary with the problems
        "datastore %s: %d case(s) (%d validation), %d labelled, %d problem(s)",
        datastore.root, counts["total"], counts["val"], counts[CaseState.LABELED], len(problems),
    )
    return datastore, problems
