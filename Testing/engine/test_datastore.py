"""The datastore: import, fixed validation split, label writes (atomic, validated), states, leases, models."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from activeseg.store.datastore import Datastore, ScoreRecord
from activeseg.errors import (
    CaseStateError,
    DatastoreError,
    EmptyLabelError,
    GeometryMismatchError,
    InvalidCaseIdError,
    LabelValueError,
    LeaseError,
    ModelVersionError,
    UnknownCaseError,
)
from activeseg.io.volumes import Volume, read_volume

from .conftest import create_store, image_pairs, tiny_config


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except SQLite's WAL side files' volatile content is included too."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def store(phantom_source: Path, tmp_path: Path) -> Datastore:
    return create_store(tmp_path / "store", phantom_source, seed=1)


def truth(phantom_source: Path, case_id: str) -> Volume:
    return read_volume(phantom_source / "labelsTr" / f"{case_id}.nii.gz", dtype=np.uint8)


def test_init_reports_and_skips_corrupt_and_2d_files(phantom_source: Path, tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(phantom_source / "imagesTr", source)
    (source / "corrupt.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    truncated = (source / "phantom_000.nii.gz").read_bytes()[:200]
    (source / "truncated.nii.gz").write_bytes(truncated)
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkInt16), str(source / "flat.nrrd"))
    pairs = [(p.name.split(".")[0], p) for p in sorted(source.iterdir())]
    datastore, problems = Datastore.create(tmp_path / "store", pairs, tiny_config())
    assert len(problems) == 3
    text = "\n".join(problems)
    assert "corrupt.nii.gz" in text and "truncated.nii.gz" in text and "flat.nrrd" in text
    assert "3D" in text
    assert datastore.counts()["total"] == 10


def test_validation_split_is_drawn_once_and_never_changes(store: Datastore, phantom_source: Path) -> None:
    val = [c.case_id for c in store.cases(split="val")]
    assert len(val) == 2  # 20% of 10
    train_ids = [c.case_id for c in store.cases(split="train")]
    store.submit_label(train_ids[0], truth(phantom_source, train_ids[0]), no_finding=True)
    store.set_queue(train_ids[1:3])
    reopened = Datastore(store.root)
    assert [c.case_id for c in reopened.cases(split="val")] == val


def test_init_twice_is_refused(store: Datastore, phantom_source: Path) -> None:
    with pytest.raises(DatastoreError, match="already"):
        Datastore.create(store.root, image_pairs(phantom_source), tiny_config())


def test_submit_label_round_trip_and_state(store: Datastore, phantom_source: Path) -> None:
    case_id = store.cases(split="train")[0].case_id
    label = truth(phantom_source, case_id)
    record = store.submit_label(case_id, label, no_finding=True)
    assert record.state == "labeled" and record.label_source == "expert"
    assert np.array_equal(store.load_label(case_id).array, label.array)
    assert store.load_label(case_id).geometry == store.image_geometry(case_id)


@pytest.mark.parametrize("bad_id", ["../etc/passwd", "a/b", "..", "", ".hidden", "x" * 200, "a\\b"])
def test_path_like_case_ids_are_refused(store: Datastore, bad_id: str) -> None:
    with pytest.raises(InvalidCaseIdError):
        store.case(bad_id)


def test_bad_labels_are_refused_and_change_nothing(store: Datastore, phantom_source: Path) -> None:
    case_id = store.cases(split="train")[0].case_id
    label = truth(phantom_source, case_id)
    before = tree_digest(store.meta_dir / "labels")
    db_before = store.counts()
    wrong_size = Volume(label.array[:-1], label.geometry.__class__(
        size=(label.geometry.size[0], label.geometry.size[1], label.geometry.size[2] - 1),
        spacing=label.geometry.spacing, origin=label.geometry.origin, direction=label.geometry.direction))
    shifted = Volume(label.array, label.geometry.__class__(
        size=label.geometry.size, spacing=label.geometry.spacing,
        origin=(label.geometry.origin[0] + 5.0, *label.geometry.origin[1:]), direction=label.geometry.direction))
    bad_values = Volume(np.where(label.array > 0, 7, 0).astype(np.uint8), label.geometry)
    empty = Volume(np.zeros_like(label.array), label.geometry)
    for bad, error in ((wrong_size, GeometryMismatchError), (shifted, GeometryMismatchError),
                       (bad_values, LabelValueError), (empty, EmptyLabelError)):
        with pytest.raises(error, match=case_id):
            store.submit_label(case_id, bad)
    with pytest.raises(UnknownCaseError, match="no_such_case"):
        store.submit_label("no_such_case", label)
    assert tree_digest(store.meta_dir / "labels") == before
    assert store.counts() == db_before


def test_empty_label_accepted_when_no_finding(store: Datastore, phantom_source: Path) -> None:
    case_id = store.cases(split="train")[0].case_id
    label = truth(phantom_source, case_id)
    record = store.submit_label(case_id, Volume(np.zeros_like(label.array), label.geometry), no_finding=True)
    assert record.state == "labeled" and record.no_finding


def test_leases_serve_each_case_to_one_annotator(store: Datastore, phantom_source: Path) -> None:
    train = [c.case_id for c in store.cases(split="train")]
    store.set_queue(train[:3])
    first = store.lease_next("alice")
    second = store.lease_next("bob")
    assert first is not None and second is not None and first.case_id != second.case_id
    with pytest.raises(LeaseError, match="alice"):
        store.lease(first.case_id, "bob")
    with pytest.raises(LeaseError):
        store.submit_label(first.case_id, truth(phantom_source, first.case_id), no_finding=True, annotator="bob")
    store.release(first.case_id, "alice")
    assert store.lease(first.case_id, "bob").lease_holder == "bob"


def test_expired_lease_is_free_again(store: Datastore) -> None:
    store.config.lease_seconds = 0.05
    case_id = store.cases(split="train")[0].case_id
    store.set_queue([case_id])
    store.lease(case_id, "alice")
    time.sleep(0.1)
    # bob's own lease must outlive the call that reads it back (a 50 ms one expired there on a loaded clean clone)
    store.config.lease_seconds = 60.0
    assert store.lease(case_id, "bob").lease_holder == "bob"


def test_requeueing_keeps_leased_cases(store: Datastore) -> None:
    train = [c.case_id for c in store.cases(split="train")]
    store.set_queue(train[:2])
    store.lease(train[0], "alice")
    store.set_queue(train[2:4])
    states = {c.case_id: c.state for c in store.cases()}
    assert states[train[0]] == "queued" and states[train[1]] == "unlabeled"
    assert states[train[2]] == "queued" and states[train[3]] == "queued"


def _register_model(store: Datastore, tmp_path: Path) -> int:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    return store.add_model(weights, {}, parent=None).version


def test_queue_order_validation_first_then_ascending_mdsc(store: Datastore, tmp_path: Path) -> None:
    """Unlabelled validation cases lead; then ascending M-DSC under the active model, larger predicted
    foreground first among equal M-DSC, then case id; unscored cases last. The scores are given in an order
    that case ids, insertion or descending M-DSC would all get wrong."""
    train = [c.case_id for c in store.cases(split="train")]  # id order
    val = [c.case_id for c in store.cases(split="val")]
    version = _register_model(store, tmp_path)
    mdsc = {train[0]: 0.9, train[1]: 0.2, train[2]: 0.5, train[3]: 0.2, train[4]: 0.7}
    foreground = {train[0]: 1.0, train[1]: 1.0, train[2]: 1.0, train[3]: 3.0, train[4]: 1.0}
    store.store_scores([ScoreRecord(cid, version, m, 0.9, foreground[cid], "strong") for cid, m in mdsc.items()])
    # Scores of another version must not decide the order of the active one's queue.
    store.store_scores([ScoreRecord(cid, version + 1, 1.0 - m, 0.9, 1.0, "strong") for cid, m in mdsc.items()])
    store.set_queue([train[5], *reversed(list(mdsc)), val[1], val[0]])
    want = [val[0], val[1], train[3], train[1], train[2], train[4], train[0], train[5]]
    order = [record.case_id for record, _ in store.queue()]
    assert order == want
    scores = [score.mdsc if score else None for _, score in store.queue()]
    assert scores == [None, None, 0.2, 0.2, 0.5, 0.7, 0.9, None]
    # Leasing serves the same order, skipping what another annotator holds; an annotator gets her own back.
    store.lease(want[1], "bob")
    served = [store.lease_next(name) for name in ("alice", "carol", "dave", "alice")]
    assert [r.case_id for r in served if r is not None] == [want[0], want[2], want[3], want[0]]
    # Activating another version re-orders by its scores.
    store.add_model(tmp_path / "w.pt", {}, parent=version)
    assert store.active_version() == version + 1
    strong = [record.case_id for record, _ in store.queue() if record.split == "train"]
    assert strong == [train[0], train[4], train[2], train[1], train[3], train[5]]


def test_model_versions_are_never_overwritten_and_can_roll_back(store: Datastore, tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"first")
    v1 = store.add_model(weights, {"round": 1}, parent=None)
    weights.write_bytes(b"second")
    v2 = store.add_model(weights, {"round": 2}, parent=v1.version)
    assert v1.weights_path.read_bytes() == b"first" and v2.weights_path.read_bytes() == b"second"
    assert store.active_version() == v2.version
    store.activate(v1.version)
    assert store.active_version() == v1.version
    with pytest.raises(ModelVersionError):
        store.activate(99)


def test_pseudo_review_accept_and_reject(store: Datastore, phantom_source: Path) -> None:
    from activeseg.io.atomic import atomic_write
    from activeseg.io.seg_nrrd import write_segmentation_file

    a, b = [c.case_id for c in store.cases(split="train")][:2]
    written = {}
    for case_id in (a, b):
        label = truth(phantom_source, case_id)
        path = store.meta_dir / "pseudo" / f"{case_id}.test.seg.nrrd"
        atomic_write(path, lambda p, label=label: write_segmentation_file(p, label.array, label.geometry, store.config.labels))
        written[case_id] = path
    store.set_pseudo_labels(1, written)
    assert store.case(a).state == "pseudo"
    accepted = store.accept_pseudo(a)
    assert accepted.state == "accepted" and accepted.label_source == "accepted"
    assert np.array_equal(store.load_label(a).array, truth(phantom_source, a).array)
    assert store.reject_pseudo(b).state == "rejected"
    with pytest.raises(CaseStateError):
        store.accept_pseudo(b)
    # Rebuilding the pseudo set never touches reviewed cases.
    store.set_pseudo_labels(2, {})
    assert store.case(a).state == "accepted" and store.case(b).state == "rejected"


# ---------------------------------------------------------------- crash safety

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from pathlib import Path
    from activeseg.store.datastore import Datastore
    from activeseg.io import atomic
    from activeseg.io.volumes import read_volume
    store = Datastore(Path(sys.argv[1]))
    case_id, mode = sys.argv[2], sys.argv[3]
    label = read_volume(Path(sys.argv[4]), dtype=np.uint8)
    if mode == "before-rename":
        def die(*args): os.kill(os.getpid(), signal.SIGKILL)
        atomic.os.replace = die  # the label file is complete but not yet renamed
    elif mode == "before-commit":
        def die(*args, **kwargs): os.kill(os.getpid(), signal.SIGKILL)
        store.label_store._commit_label = die  # the file is written, the database not yet pointed at it
    print("ready", flush=True)
    n = 0
    while True:
        # alternate between the label and its lung-only version, so old and new differ
        array = label.array if n % 2 == 0 else np.where(label.array == 1, 1, 0).astype(np.uint8)
        store.submit_label(case_id, type(label)(array, label.geometry), no_finding=True)
        n += 1
        if mode != "loop":
            break
    """
)


def _check_consistent(store: Datastore, case_id: str, allowed: list[np.ndarray]) -> None:
    record = store.case(case_id)
    if record.label_path is None:
        assert record.state != "labeled"
    else:
        assert record.label_path.is_file(), "the database points at a missing file"
        array = store.load_label(case_id).array
        assert any(np.array_equal(array, a) for a in allowed), "label is neither the old nor the new one"
    store.recover()
    referenced = {p.name for p in [store.case(case_id).label_path] if p}
    assert {p.name for p in (store.meta_dir / "labels").iterdir()} == referenced


@pytest.mark.parametrize("mode", ["before-rename", "before-commit"])
def test_killed_at_a_crash_point_keeps_the_old_label(store: Datastore, phantom_source: Path, mode: str) -> None:
    case_id = store.cases(split="train")[0].case_id
    label_file = phantom_source / "labelsTr" / f"{case_id}.nii.gz"
    original = truth(phantom_source, case_id)
    lung_only = np.where(original.array == 1, 1, 0).astype(np.uint8)
    store.submit_label(case_id, Volume(lung_only, original.geometry), no_finding=True)
    result = subprocess.run([sys.executable, "-c", _CHILD, str(store.root), case_id, mode, str(label_file)],
                            capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert np.array_equal(store.load_label(case_id).array, lung_only)
    _check_consistent(store, case_id, [lung_only])


def test_killed_at_random_moments_never_leaves_a_partial_label(store: Datastore, phantom_source: Path) -> None:
    case_id = store.cases(split="train")[0].case_id
    label_file = phantom_source / "labelsTr" / f"{case_id}.nii.gz"
    original = truth(phantom_source, case_id)
    allowed = [original.array, np.where(original.array == 1, 1, 0).astype(np.uint8)]
    rng = np.random.default_rng(0)
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(store.root), case_id, "loop", str(label_file)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.01, 0.3)))
        child.kill()
        child.wait(timeout=30)
        _check_consistent(store, case_id, allowed)


def test_cold_start_serves_unlabelled_training_cases_before_any_model(store: Datastore) -> None:
    first = store.lease_next("alice")
    second = store.lease_next("bob")
    assert first is not None and second is not None and first.case_id != second.case_id
    assert first.split == "train" and second.split == "train"
