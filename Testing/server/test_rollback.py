"""Issue 14 item 7 over HTTP: a rollback re-ranks (or reports the queue stale and a ranking refreshes it); model
versions come with their validation Dice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from activeseg.experiments.phantoms import write_phantom_dataset
from activeseg.store.datastore import Datastore

from .support import SHAPE, ServerProcess, label_path, wait_for_job
from .test_end_to_end import TINY


def _label(client: httpx.Client, source: Path, case_id: str) -> None:
    response = client.put(f"/v1/cases/{case_id}/label", params={"annotator": "alice"},
                          content=label_path(source, case_id).read_bytes())
    assert response.status_code == 200, response.text


def _train_and_rank(client: httpx.Client) -> dict:
    started = client.post("/v1/jobs/train", json={"then_rank": True})
    assert started.status_code == 202, started.text
    job = wait_for_job(client, started.json()["job_id"], timeout=240)
    assert job["status"] == "succeeded", job
    return job


def _strong_queue(client: httpx.Client) -> list[dict]:
    return [item["case"] for item in client.get("/v1/queue").json()["items"] if item["case"]["split"] == "train"]


@pytest.mark.slow
def test_rollback_re_ranks_with_the_earlier_model(tmp_path: Path) -> None:
    dataset = write_phantom_dataset(tmp_path / "phantoms", count=8, shape=SHAPE)
    source, store = dataset.parent, tmp_path / "store"
    overrides = [arg for item in TINY for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "activeseg", "init", str(store), "--from", str(dataset), *overrides],
                   check=True, timeout=120, capture_output=True)
    with ServerProcess(store) as server, server.client(timeout=60) as client:
        train_ids = [c["case_id"] for c in client.get("/v1/cases").json()["cases"] if c["split"] == "train"]
        for case_id in train_ids[:2]:
            _label(client, source, case_id)
        _train_and_rank(client)
        first_validation = client.post("/v1/queue/next", params={"annotator": "alice"}).json()["case"]
        assert first_validation["split"] == "val"  # labelled validation cases give the next version a Dice
        _label(client, source, first_validation["case_id"])
        assert _train_and_rank(client)["result"]["model_version"] == 2

        models = client.get("/v1/models").json()
        assert models["active"] == 2 and models["queue_model"] == 2 and models["queue_stale"] is False
        v2 = models["models"][1]
        assert v2["val_dice"] == pytest.approx(v2["metrics"]["val_dice"]["mean"])
        assert set(v2["val_dice_classes"]) == set(v2["metrics"]["val_dice"]) - {"mean"}

        # --- roll back: the backend ranks with v1; meanwhile nothing else may change the active model
        rolled = client.post("/v1/models/1/activate")
        assert rolled.status_code == 200, rolled.text
        body = rolled.json()
        assert body["model"]["version"] == 1 and body["model"]["active"] is True
        assert body["rank_job"] is not None and body["rank_job"]["kind"] == "rank" and "ranking" in body["message"]
        busy = client.post("/v1/models/2/activate")
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "job_running"
        assert client.get("/v1/info").json()["active_model"] == 1  # the refused rollback changed nothing
        assert wait_for_job(client, body["rank_job"]["job_id"], timeout=240)["status"] == "succeeded"

        models = client.get("/v1/models").json()
        assert models["active"] == 1 and models["queue_model"] == 1 and models["queue_stale"] is False
        chosen_by_v1 = {case_id for case_id, score in Datastore(store).scores(1).items() if score.route == "strong"}
        queue = _strong_queue(client)
        assert queue and {case["case_id"] for case in queue} == chosen_by_v1
        for case in queue:  # each Next of them starts from v1's prediction
            assert case["mdsc"] is not None
            assert client.get(f"/v1/cases/{case['case_id']}/prediction").status_code == 200

        # --- roll forward without ranking: the queue is reported stale until a ranking job runs
        forward = client.post("/v1/models/2/activate", params={"rank": "false"}).json()
        assert forward["rank_job"] is None and forward["queue_stale"] is True and forward["queue_model"] == 1
        assert "rank to refresh" in forward["message"]
        assert client.get("/v1/models").json()["queue_stale"] is True
        ranked = client.post("/v1/jobs/rank")
        assert wait_for_job(client, ranked.json()["job_id"], timeout=240)["status"] == "succeeded"
        models = client.get("/v1/models").json()
        assert models["queue_model"] == 2 and models["queue_stale"] is False
        again = client.post("/v1/models/2/activate").json()  # already the queue's model: nothing to rank
        assert again["rank_job"] is None and again["queue_stale"] is False and "already" in again["message"]
        assert client.post("/v1/models/9/activate").status_code == 404
