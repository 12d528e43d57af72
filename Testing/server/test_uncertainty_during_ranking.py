"""Uncertainty overlays downloaded while a ranking replaces them (issue 12 item 7): only a whole, committed map is
served.

* A map replaced between the server's look at the file and its read (the ranking renames a new map over it) must
  still be answered whole, with a Content-Length that matches its bytes. Injected deterministically: every
  ``os.stat`` of the map path swaps the file for the other version (the server used to stat it, then open it).
* A ranking that does not commit (cancelled, failed, or killed) must leave the committed map served, not its own
  (expected to fail until the ranking writes its maps aside and renames them at its commit).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from activeseg.api.server import create_app
from activeseg.io.volumes import read_volume
from activeseg.method.uncertainty_map import uncertainty_map_path, write_uncertainty_volume
from activeseg.pipeline.ranking_round import rank_round
from activeseg.pipeline.training_round import train_round
from activeseg.store.datastore import Datastore

from .support import SHAPE, label_path, make_store, tiny_config


def test_a_map_replaced_between_lookup_and_read_is_served_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store_root, _ = make_store(tmp_path, count=3)
    store = Datastore(store_root)
    case_id = store.cases()[0].case_id
    geometry = store.image_geometry(case_id)
    rng = np.random.default_rng(0)
    versions = []
    for smooth in (True, False):  # compressible and incompressible: different sizes
        values = np.full(SHAPE, 0.5, np.float32) if smooth else rng.random(SHAPE, dtype=np.float32)
        write_uncertainty_volume(store.meta_dir, case_id, values, geometry)
        versions.append(uncertainty_map_path(store.meta_dir, case_id).read_bytes())
    assert len(versions[0]) != len(versions[1])
    target = uncertainty_map_path(store.meta_dir, case_id)
    real_stat = os.stat
    swaps = {"n": 0}

    def stat_then_replace(path: object, *args: object, **kwargs: object) -> os.stat_result:
        result = real_stat(path, *args, **kwargs)  # type: ignore[arg-type]
        if str(path) == str(target):
            swaps["n"] += 1
            spare = target.with_name(".tmp-swap")
            spare.write_bytes(versions[swaps["n"] % 2])
            os.replace(spare, target)
        return result

    with TestClient(create_app(store.root, recover=False), base_url="http://127.0.0.1") as client:
        monkeypatch.setattr(os, "stat", stat_then_replace)
        try:
            responses = [client.get(f"/v1/cases/{case_id}/uncertainty") for _ in range(4)]
        finally:
            monkeypatch.setattr(os, "stat", real_stat)
    for response in responses:
        assert response.status_code == 200
        assert int(response.headers["content-length"]) == len(response.content)
        assert response.content in versions


def test_a_ranking_that_does_not_commit_leaves_the_committed_maps(tmp_path: Path) -> None:
    """Issue 12 item 7: a ranking wrote each uncertainty map over the served one before its commit, so a cancelled,
    failed or killed ranking left its maps served (failed before: the maps after a discarded ranking differed)."""
    config = tiny_config()
    config.training.keep_better_parent = False  # every round registers its model
    store_root, source = make_store(tmp_path, count=6, config=config)
    store = Datastore(store_root)
    for case_id in ("phantom_000", "phantom_001", "phantom_002"):
        store.submit_label(case_id, read_volume(label_path(source, case_id)), annotator="a")
    train_round(store)
    rank_round(store)  # commits its own maps
    unlabelled = [r.case_id for r in store.cases() if uncertainty_map_path(store.meta_dir, r.case_id).is_file()]
    assert unlabelled
    with TestClient(create_app(store.root, recover=False), base_url="http://127.0.0.1") as client:
        committed = {c: client.get(f"/v1/cases/{c}/uncertainty").content for c in unlabelled}
        assert all(data.startswith(b"NRRD") for data in committed.values())
        assert train_round(store).registered  # a different active model: its maps differ
        commit = store.new_commit()
        rank_round(store, commit=commit)
        commit.discard()  # the job was cancelled (or failed, or its worker killed) before its commit
        after = {c: client.get(f"/v1/cases/{c}/uncertainty").content for c in unlabelled}
        assert after == committed
        commit = store.new_commit()
        rank_round(store, commit=commit)
        commit.commit()
        ranked = {c: client.get(f"/v1/cases/{c}/uncertainty").content for c in unlabelled}
        assert ranked != committed  # a committed ranking's maps are served
    assert not [p for p in (store.meta_dir / "uncertainty").iterdir() if p.name.startswith(".tmp-")]
