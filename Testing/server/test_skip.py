"""Issue 14 item 5 over HTTP: ``POST /v1/cases/{id}/skip``."""

from __future__ import annotations

from .conftest import LiveServer


def test_skip_releases_and_next_serves_another_case(fresh: LiveServer) -> None:
    client = fresh.client
    first = client.post("/v1/queue/next", params={"annotator": "ann"}).json()["case"]["case_id"]
    skipped = client.post(f"/v1/cases/{first}/skip", params={"annotator": "ann"})
    assert skipped.status_code == 200 and skipped.json()["lease_holder"] is None
    second = client.post("/v1/queue/next", params={"annotator": "ann"}).json()["case"]["case_id"]
    assert second != first
    taken = client.post(f"/v1/cases/{second}/skip", params={"annotator": "other"})
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "leased"
    assert client.post(f"/v1/cases/{first}/skip").status_code == 422  # the annotator is required
    assert client.post("/v1/cases/nope/skip", params={"annotator": "ann"}).status_code == 404
