"""The simulated radiologist of the demo and the simulations: answers label requests from ground truth."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from activeseg.io.volumes import read_volume
from activeseg.store.datastore import Datastore

__all__ = ["SimulatedRadiologist"]


class SimulatedRadiologist:
    """Submits a case's ground-truth label file as its expert label (an all-background one as "no finding").

    Args:
        labels: case id -> ground-truth label file (NIfTI or NRRD, the case image's geometry).
        annotator: the name it labels under (it never holds a lease, so any name works).
    """

    def __init__(self, labels: Mapping[str, Path], annotator: str = "simulated-radiologist") -> None:
        self.labels = dict(labels)
        self.annotator = annotator

    @classmethod
    def from_folder(cls, folder: Path, suffix: str = ".nii.gz") -> SimulatedRadiologist:
        """Ground truth in ``folder`` named ``<case id><suffix>`` (an MSD ``labelsTr`` folder)."""
        folder = Path(folder)
        return cls({path.name[: -len(suffix)]: path for path in sorted(folder.glob(f"*{suffix}"))})

    def label(self, store: Datastore, case_id: str) -> None:
        """Submit the ground truth of ``case_id`` to ``store``.

        Raises:
            KeyError: no ground truth for ``case_id``; otherwise as :meth:`Datastore.submit_label`.
        """
        truth = read_volume(self.labels[case_id], dtype=np.uint8)
        store.submit_label(case_id, truth, no_finding=not truth.array.any(), annotator=self.annotator)
