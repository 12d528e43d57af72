"""``activeseg init`` on folders as real datasets ship them (issue 14 item 6), run through the CLI's ``main``:
images and masks in one folder, label subfolders, MR and CT mixed, ``--with-labels`` without labels, ``--from``
a single file, and every skipped file reported once with the counts right."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from activeseg.cli.main import main
from activeseg.io.volumes import Geometry, write_volume
from activeseg.store.cases import CaseState
from activeseg.store.datastore import Datastore

SHAPE = (6, 8, 8)  # (k, j, i) voxels
GEOMETRY = Geometry(size=(8, 8, 6), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _ct(path: Path, seed: int) -> None:
    """An int16 CT volume: air (-1000 HU) around soft tissue with noise."""
    rng = np.random.default_rng(seed)
    array = rng.normal(40.0, 20.0, SHAPE)
    array[:, :, :2] = -1000.0 + rng.normal(0.0, 5.0, (SHAPE[0], SHAPE[1], 2))
    write_volume(array.astype(np.int16), GEOMETRY, path)


def _mr(path: Path, seed: int) -> None:
    """An MR volume: non-negative float intensities, no air values."""
    write_volume(np.random.default_rng(seed).uniform(0.0, 800.0, SHAPE).astype(np.float32), GEOMETRY, path)


def _mask(path: Path, values: tuple[int, ...] = (0, 1)) -> None:
    """A uint8 label map with the given values."""
    array = np.zeros(SHAPE, np.uint8)
    for n, value in enumerate(values):
        array[n % SHAPE[0], 2:6, 2:6] = value
    write_volume(array, GEOMETRY, path)


def _init(caplog: pytest.LogCaptureFixture, *args: str) -> tuple[int, list[str]]:
    """``activeseg init ARGS`` as a user runs it; exit status and the lines it printed."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main(["init", *args])
    return code, caplog.messages


def _problems_reported(lines: list[str]) -> int:
    """The count the summary line states (0 when it names none)."""
    summary = next(line for line in lines if line.startswith("Created "))
    match = re.search(r"(\d+) problem\(s\) listed above", summary)
    return int(match.group(1)) if match else 0


def _skipped_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("skipped ", "label of "))]


def test_images_and_masks_in_one_folder_are_paired_not_imported_as_cases(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Masks beside their images (X_seg, X_mask, X-label, labels/X, a Slicer X.seg.nrrd) become X's labels; a label
    map with another name, a label without its image, a non-volume file, an unreadable volume and an unsearched
    folder are each reported once, with the count right. Before: every mask became a CT case."""
    source = tmp_path / "ct"
    (source / "labels").mkdir(parents=True)
    (source / "other").mkdir()
    for n in range(6):
        _ct(source / f"case{n}.nii.gz", seed=n)
    _mask(source / "case0_seg.nii.gz")
    _mask(source / "case1_MASK.nii.gz")
    _mask(source / "case2-label.nii.gz")
    _mask(source / "labels" / "case3.nii.gz")
    _mask(source / "case4.seg.nrrd")
    _mask(source / "liver_ground_truth.nii.gz", values=(0, 1, 2))  # a label map by its voxels only
    _mask(source / "case9_label.nii.gz")  # no case9
    (source / "README.txt").write_text("scans from the archive")
    (source / "broken.nii.gz").write_bytes(b"not an image")
    _ct(source / "other" / "extra.nii.gz", seed=9)

    code, lines = _init(caplog, str(tmp_path / "store"), "--from", str(source), "--with-labels")
    assert code == 0, lines
    store = Datastore(tmp_path / "store")
    assert sorted(record.case_id for record in store.cases()) == [f"case{n}" for n in range(6)]
    assert sorted(record.case_id for record in store.cases() if record.label_path is not None) == \
        [f"case{n}" for n in range(5)]
    skipped = _skipped_lines(lines)
    for name, reason in (("liver_ground_truth.nii.gz", "a label map"), ("case9_label.nii.gz", "no image 'case9'"),
                         ("README.txt", "not a volume file"), ("broken.nii.gz", "not gzip-compressed"),
                         ("other/", "not searched")):
        mentioning = [line for line in lines if name in line]
        assert len(mentioning) == 1 and reason in mentioning[0], (name, lines)
    assert len(skipped) == 5 == _problems_reported(lines), lines

    code, lines = _init(caplog, str(tmp_path / "unlabelled"), "--from", str(source))
    assert code == 0, lines
    unlabelled = Datastore(tmp_path / "unlabelled")
    assert len(unlabelled.cases()) == 6 and unlabelled.counts()[CaseState.LABELED] == 0
    assert any("found 5 label(s)" in line and "--with-labels" in line for line in lines), lines
    assert _problems_reported(lines) == 5


def test_a_folder_mixing_mr_and_ct_is_reported_not_imported_as_ct(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The fewer kind is skipped by name with the reason; an MR-only folder gets z-score normalisation; a tie is
    refused; declaring the modality imports all. Before: all imported as CT, silently."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for n in range(4):
        _ct(mixed / f"ct{n}.nii.gz", seed=n)
    _mr(mixed / "t1_brain.nii.gz", seed=7)
    code, lines = _init(caplog, str(tmp_path / "s1"), "--from", str(mixed))
    assert code == 0, lines
    assert [record.case_id for record in Datastore(tmp_path / "s1").cases()] == [f"ct{n}" for n in range(4)]
    reported = [line for line in lines if "t1_brain.nii.gz" in line]
    assert len(reported) == 1 and "not CT" in reported[0] and "4 of the 5 volumes here are CT" in reported[0]
    assert _problems_reported(lines) == 1
    assert Datastore(tmp_path / "s1").config.intensity.mode == "ct"

    mr_only = tmp_path / "mr"
    mr_only.mkdir()
    for n in range(3):
        _mr(mr_only / f"mr{n}.nii.gz", seed=n)
    code, lines = _init(caplog, str(tmp_path / "s2"), "--from", str(mr_only))
    assert code == 0 and Datastore(tmp_path / "s2").config.intensity.mode == "zscore"
    assert any("no volume holds CT air" in line for line in lines), lines

    tie = tmp_path / "tie"
    tie.mkdir()
    _ct(tie / "a.nii.gz", seed=1)
    _mr(tie / "b.nii.gz", seed=2)
    code, lines = _init(caplog, str(tmp_path / "s3"), "--from", str(tie))
    assert code == 2 and "one datastore holds one modality" in lines[-1], lines
    assert not (tmp_path / "s3").exists()
    code, lines = _init(caplog, str(tmp_path / "s4"), "--from", str(tie), "--set", "intensity.mode=ct")
    assert code == 0 and len(Datastore(tmp_path / "s4").cases()) == 2, lines


def test_with_labels_on_a_folder_without_labels_is_a_clear_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: exit 0 and nothing labelled, without a word."""
    source = tmp_path / "plain"
    source.mkdir()
    for n in range(3):
        _ct(source / f"case{n}.nii.gz", seed=n)
    code, lines = _init(caplog, str(tmp_path / "store"), "--from", str(source), "--with-labels")
    assert code == 2, lines
    assert "--with-labels" in lines[-1] and "has no label to import" in lines[-1] and "X_label.nii.gz" in lines[-1]
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("content", [b"\x1f\x8b\x08\x00\xff\xfe binary", b"plain text"], ids=["gzip", "text"])
def test_from_a_single_file_is_a_clear_error(tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    """Before: a UnicodeDecodeError traceback (the file was read as a dataset.json)."""
    single = tmp_path / "scan.nii.gz"
    single.write_bytes(content)
    code, lines = _init(caplog, str(tmp_path / "store"), "--from", str(single))
    assert code == 2, lines
    assert "is a single file" in lines[-1] and "folder" in lines[-1]
    bad_json = tmp_path / "dataset.json"
    bad_json.write_bytes(b"\xff\xfe\x00 not utf-8")
    code, lines = _init(caplog, str(tmp_path / "store"), "--from", str(bad_json))
    assert code == 2 and "not an MSD-style dataset.json" in lines[-1], lines
