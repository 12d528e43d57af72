"""Sharded ranking on 2 gloo processes gives the one-process ranking: the same scores, queue, pseudo-labels and
predictions (``activeseg.pipeline.sharded_ranking``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from activeseg.experiments.phantoms import write_phantom_dataset
from activeseg.io.seg_nrrd import read_segmentation_labelmap
from activeseg.io.volumes import read_volume
from activeseg.pipeline.ranking_round import rank_round
from activeseg.pipeline.training_round import train_round
from activeseg.store.datastore import Datastore

from .distributed_support import rank_ranking, run_ranks
from ..tiny import image_pairs, tiny_config

pytestmark = pytest.mark.timeout(240)


def _trained_store(root: Path) -> Datastore:
    source = root / "phantoms"
    write_phantom_dataset(source, 12, seed=3, shape=(16, 32, 32))
    store, _ = Datastore.create(root / "store", image_pairs(source), tiny_config(), seed=1)
    labelled = [c.case_id for c in store.cases(split="val")] + [c.case_id for c in store.cases(split="train")][:4]
    for case_id in labelled:
        store.submit_label(case_id, read_volume(source / "labelsTr" / f"{case_id}.nii.gz", dtype=np.uint8), no_finding=True)
    train_round(store)
    return store


def _labelmaps(store: Datastore, paths: dict[str, Path]) -> dict[str, np.ndarray]:
    return {cid: read_segmentation_labelmap(path, store.config.labels).array for cid, path in paths.items()}


def test_sharded_ranking_equals_one_process(tmp_path: Path) -> None:
    store = _trained_store(tmp_path / "one")
    shutil.copytree(store.root, tmp_path / "sharded")
    single = rank_round(store)
    assert single.strong and single.weak, "the round queues and pseudo-labels some cases"

    out = tmp_path / "ranks"
    out.mkdir()
    (out / "store.txt").write_text(str(tmp_path / "sharded"))
    run_ranks(rank_ranking, 2, out)
    sharded = json.loads((out / "result.json").read_text())

    assert sharded["strong"] == single.strong and sharded["weak"] == single.weak
    count = len(single.scores)
    assert sharded["passes_by_rank"] == [count - count // 2, count // 2] and count >= 2, "each rank scored its share"
    assert sharded["inferred"] >= len(single.scores) and sharded["reused"] == 0
    expected = {s.case_id: [s.mdsc, s.confidence, s.foreground_voxels] for s in single.scores}
    assert sharded["scores"].keys() == expected.keys()
    for case_id, values in expected.items():
        assert sharded["scores"][case_id] == pytest.approx(values, rel=1e-6, abs=1e-9), case_id
    # What was committed: the same queue, scores and routes, pseudo-labels and predictions.
    other = Datastore(tmp_path / "sharded")
    queued = [case.case_id for case, _ in store.queue()]
    assert [case.case_id for case, _ in other.queue()] == queued and queued
    for case_id in queued:
        if store.case(case_id).split == "train":  # validation cases are queued without a prediction
            mine = read_segmentation_labelmap(store.prediction_path(case_id, 1), store.config.labels).array
            theirs = read_segmentation_labelmap(other.prediction_path(case_id, 1), other.config.labels).array
            assert np.array_equal(mine, theirs), case_id
    assert {c: s.route for c, s in other.scores(1).items()} == {c: s.route for c, s in store.scores(1).items()}
    pseudo = {c.case_id: c.pseudo_path for c in store.cases() if c.pseudo_path is not None}
    pseudo_other = {c.case_id: c.pseudo_path for c in other.cases() if c.pseudo_path is not None}
    assert pseudo.keys() == pseudo_other.keys() == set(single.weak)
    for case_id, labels in _labelmaps(store, pseudo).items():
        assert np.array_equal(labels, _labelmaps(other, pseudo_other)[case_id]), case_id
    states = {c.case_id: c.state for c in store.cases()}
    assert {c.case_id: c.state for c in other.cases()} == states


@pytest.mark.slow
def test_activeseg_rank_nproc_2_queues_what_one_process_queues(tmp_path: Path) -> None:
    """The command (and job) path: torchrun ranks score, the owner routes, writes and commits."""
    store = _trained_store(tmp_path / "one")
    shutil.copytree(store.root, tmp_path / "sharded")
    single = rank_round(store)
    result = subprocess.run([sys.executable, "-m", "activeseg", "rank", "--data", str(tmp_path / "sharded"), "--quiet",
                             "--nproc", "2"], capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(single.scores)} pass(es) on 2 processes" in result.stdout, result.stdout
    other = Datastore(tmp_path / "sharded")
    assert [c.case_id for c, _ in other.queue()] == [c.case_id for c, _ in store.queue()]
    theirs = other.scores(1)
    for case_id, mine in store.scores(1).items():
        assert theirs[case_id].route == mine.route, case_id
        assert theirs[case_id].mdsc == pytest.approx(mine.mdsc, rel=1e-6), case_id
        assert theirs[case_id].confidence == pytest.approx(mine.confidence, rel=1e-6), case_id
    assert not list(other.meta_dir.glob(".tmp-ddp-*"))
