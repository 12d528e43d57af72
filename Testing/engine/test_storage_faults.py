"""Resource faults on a real file system (issue 12, items 1 and 12): a full disk or a read-only folder loses no
acknowledged label, and each fault is reported as a typed error with a clear message.

The faults are real: a small tmpfs mounted over a datastore folder, then filled or remounted read-only. That
needs root (or CAP_SYS_ADMIN); elsewhere these tests skip with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from activeseg.errors import ActiveSegError
from activeseg.io.atomic import atomic_write
from activeseg.io.volumes import Geometry, read_volume, write_volume
from activeseg.store.datastore import Datastore

from .conftest import image_pairs, tiny_config


def _mount_tmpfs(folder: Path, size: str) -> None:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to provoke the fault (needs root/CAP_SYS_ADMIN): {result.stderr.strip()}")


@contextmanager
def small_tmpfs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` over ``folder`` (its previous content is hidden until unmounted)."""
    folder.mkdir(parents=True, exist_ok=True)
    _mount_tmpfs(folder, size)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave_bytes: int = 0) -> None:
    """Fill the file system of ``folder`` until at most ``leave_bytes`` are free."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    free = shutil.disk_usage(folder).free - leave_bytes
    with open(filler, "wb") as handle:
        try:
            while free > 0:
                handle.write(b"\1" * min(free, 1 << 16))
                free -= 1 << 16
            handle.flush()
        except OSError:
            pass


def read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


LABEL_GRID = Geometry((128, 128, 40), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def _noise_label() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 3, LABEL_GRID.array_shape, dtype=np.uint8)  # compresses badly


def test_silent_short_write_is_caught_and_reported_as_disk_full(tmp_path: Path) -> None:
    """SimpleITK leaves a short file on ENOSPC without raising; nothing may be renamed into place."""
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        target = disk / "label.nii.gz"
        with pytest.raises(ActiveSegError) as caught:
            atomic_write(target, lambda path: write_volume(_noise_label(), LABEL_GRID, path))
        assert caught.value.code == "storage_full" and caught.value.http_status == 507
        assert "no space left" in str(caught.value) and str(disk) not in str(caught.value)
        assert list(disk.iterdir()) == []  # no target, no temp file left


def test_python_writer_enospc_is_typed(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        with pytest.raises(ActiveSegError) as caught:
            atomic_write(disk / "model.pt", lambda path: Path(path).write_bytes(b"\0" * (1 << 20)))
        assert caught.value.code == "storage_full"
        assert list(disk.iterdir()) == []


def test_read_only_folder_is_typed(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        read_only(disk)
        for writer in (lambda p: write_volume(_noise_label(), LABEL_GRID, p), lambda p: Path(p).write_bytes(b"x")):
            with pytest.raises(ActiveSegError) as caught:
                atomic_write(disk / "label.nii.gz", writer)
            assert caught.value.code == "storage_read_only" and caught.value.http_status == 503


@pytest.fixture()
def store(tmp_path: Path, phantom_source: Path) -> Datastore:
    pairs = image_pairs(phantom_source)[:4]
    store, _ = Datastore.create(tmp_path / "store", pairs, tiny_config())
    return store


def _truth(source: Path, case_id: str):
    return read_volume(source / "labelsTr" / f"{case_id}.nii.gz", dtype=np.uint8)


def test_full_disk_keeps_the_acknowledged_label(store: Datastore, phantom_source: Path) -> None:
    """Before the fix: 200, a 0-byte label committed, the previous label deleted; GET label then failed."""
    case_id = store.cases()[0].case_id
    truth = _truth(phantom_source, case_id)
    labels_dir = store.meta_dir / "labels"
    with small_tmpfs(labels_dir, "1m"):
        store.submit_label(case_id, truth, annotator="ann")  # acknowledged
        fill(labels_dir, leave_bytes=512)
        edited = truth.array.copy()
        edited[edited == 0] = np.random.default_rng(1).integers(0, 3, int((edited == 0).sum()), dtype=np.uint8)
        with pytest.raises(ActiveSegError) as caught:
            store.submit_label(case_id, type(truth)(edited, truth.geometry), annotator="ann")
        assert caught.value.code == "storage_full" and caught.value.http_status == 507
        kept = store.load_label(case_id)  # the acknowledged label is intact and still served
        assert np.array_equal(kept.array, truth.array)
        assert store.case(case_id).state == "labeled"
        assert not [p for p in labels_dir.iterdir() if p.name.startswith(".tmp-")]


def test_full_disk_on_pseudo_label_accept_keeps_the_pseudo_label(store: Datastore, phantom_source: Path) -> None:
    from activeseg.io.seg_nrrd import write_segmentation_file

    case_id = store.cases(split="train")[0].case_id
    truth = _truth(phantom_source, case_id)
    pseudo = store.meta_dir / "pseudo" / f"{case_id}.v1.seg.nrrd"
    atomic_write(pseudo, lambda p: write_segmentation_file(p, truth.array, truth.geometry, store.config.labels))
    store.set_pseudo_labels(1, {case_id: pseudo})
    labels_dir = store.meta_dir / "labels"
    with small_tmpfs(labels_dir, "64k"):
        fill(labels_dir, leave_bytes=512)
        with pytest.raises(ActiveSegError) as caught:
            store.accept_pseudo(case_id)
        assert caught.value.code == "storage_full"
    record = store.case(case_id)
    assert record.state == "pseudo" and record.pseudo_path is not None and record.pseudo_path.is_file()


def test_full_disk_on_model_save_registers_nothing(store: Datastore, tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    weights.write_bytes(os.urandom(256 << 10))
    models_dir = store.meta_dir / "models"
    with small_tmpfs(models_dir, "128k"):
        with pytest.raises(ActiveSegError) as caught:
            store.add_model(weights, {"val_dice": 0.5}, parent=None)
        assert caught.value.code == "storage_full"
        assert store.models() == [] and store.active_version() is None
