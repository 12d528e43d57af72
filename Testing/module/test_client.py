"""ActiveSegClient: against a real backend (``activeseg serve`` started by BackendLauncher, with a token), and
against a stdlib stub that answers with the protocol's JSON fixtures (parsing, headers, error bodies)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ActiveSegLib import AuthenticationError, BackendRequestError, BackendUnavailableError, ClientError, ProtocolError
from ActiveSegLib.client import ActiveSegClient, Download
from ActiveSegLib.responses import Case, CaseList, CurvePoint, Info, Job, ModelList, Queue

from .backend_support import fixture, ground_truth_path, running_backend

TOKEN = "test-token-7f3a"


# ----------------------------------------------------------------------------------------- real backend


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real backend with a bearer token on a 4-phantom datastore: (URL, phantom folder)."""
    pytest.importorskip("activeseg")
    with running_backend(tmp_path_factory.mktemp("client"), TOKEN) as started:
        yield started


@pytest.fixture()
def client(backend: tuple[str, Path]) -> ActiveSegClient:
    return ActiveSegClient(backend[0], token=TOKEN, timeout_s=30)


def test_info_matches_the_fixture_shape(client: ActiveSegClient) -> None:
    info = client.info()
    assert isinstance(info, Info)
    assert info.labels == {1: "lung", 2: "lesion"}
    assert info.auth_required is True and info.counts["total"] == 4 and info.active_model is None
    assert client.health() == "ok"


def test_wrong_or_missing_token_is_an_authentication_error(backend: tuple[str, Path]) -> None:
    with pytest.raises(AuthenticationError) as wrong:
        ActiveSegClient(backend[0], token="nope").info()
    assert wrong.value.status == 401 and wrong.value.code == "unauthorized"
    assert str(wrong.value) == "wrong bearer token"
    with pytest.raises(AuthenticationError, match="missing bearer token"):
        ActiveSegClient(backend[0]).cases()


def test_unknown_case_carries_the_backend_message(client: ActiveSegClient) -> None:
    expected = fixture("error_unknown_case")["error"]
    with pytest.raises(BackendRequestError) as caught:
        client.case("phantom_999")
    error = caught.value
    assert not isinstance(error, AuthenticationError)
    assert (error.status, error.code) == (404, expected["code"])
    assert str(error) == error.message == expected["message"]
    assert "Traceback" not in str(error)


def test_cases_image_and_lease_round_trip(client: ActiveSegClient) -> None:
    cases = client.cases().cases
    assert len(cases) == 4 and all(isinstance(c, Case) for c in cases)
    case_id = next(c.case_id for c in cases if c.split == "train")
    image = client.download_image(case_id)
    assert isinstance(image, Download) and image.suffix == ".nii.gz" and image.data[:2] == b"\x1f\x8b"
    assert client.queue() == Queue(active_model=None, items=[])  # nothing ranked yet
    cold = client.lease_next("alice")  # cold start: an unlabelled training case, leased to alice
    assert cold is not None and cold.split == "train" and cold.lease_holder == "alice"
    client.release(cold.case_id, "alice")
    leased = client.lease(case_id, "alice")
    assert leased.lease_holder == "alice"
    with pytest.raises(BackendRequestError) as caught:
        client.lease(case_id, "bob")
    assert caught.value.status == 409 and caught.value.code == fixture("error_leased")["error"]["code"]
    assert "alice" in caught.value.message
    assert client.release(case_id, "alice").lease_holder is None


def test_submit_label_and_errors_on_bad_uploads(client: ActiveSegClient, backend: tuple[str, Path]) -> None:
    case_id = next(c.case_id for c in client.cases(split="train").cases if c.state == "unlabeled")
    with pytest.raises(BackendRequestError) as bad:
        client.submit_label(case_id, b"not a nifti file", "alice", file_format=".nii.gz")
    assert bad.value.status == 422 and bad.value.code == fixture("error_unreadable_image")["error"]["code"]
    assert client.case(case_id).state == "unlabeled"  # nothing changed
    data = ground_truth_path(backend[1], case_id).read_bytes()
    submitted = client.submit_label(case_id, data, "alice", file_format=".nii.gz")
    assert submitted.state == "labeled" and submitted.has_label is True
    label = client.download_label(case_id)
    assert label.data.startswith(b"NRRD") and label.suffix == ".seg.nrrd"
    with pytest.raises(ValueError):
        client.submit_label(case_id, data, "alice", file_format=".png")


def test_prediction_absent_is_none_and_jobs_models_answer(client: ActiveSegClient) -> None:
    case_id = client.cases().cases[0].case_id
    assert client.download_prediction(case_id) is None  # no ranking yet: degrade, do not raise
    assert client.download_uncertainty(case_id) is None  # no ranking yet: no map
    with pytest.raises(BackendRequestError) as unknown:
        client.download_uncertainty("phantom_999")
    assert unknown.value.status == 404 and unknown.value.code == "unknown_case"
    with pytest.raises(BackendRequestError) as no_pseudo:
        client.download_pseudo(case_id)
    assert no_pseudo.value.status == 409
    assert client.models() == ModelList(active=None, models=[])
    assert client.learning_curve() == []
    assert client.jobs() == []
    with pytest.raises(BackendRequestError) as unknown_job:
        client.job("0" * 32)
    assert unknown_job.value.status == 404
    with pytest.raises(BackendRequestError) as unknown_model:
        client.activate_model(7)
    assert unknown_model.value.status == 404 and unknown_model.value.message


# ----------------------------------------------------------------------------------------- unavailable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_refused_connection_is_unavailable_quickly() -> None:
    client = ActiveSegClient(f"http://127.0.0.1:{_free_port()}", timeout_s=5)
    started = time.monotonic()
    with pytest.raises(BackendUnavailableError) as caught:
        client.info()
    assert time.monotonic() - started < 2.0
    assert "cannot reach the backend" in str(caught.value)
    assert isinstance(caught.value, ClientError)


def test_silent_backend_times_out_as_unavailable() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        client = ActiveSegClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="did not answer within 0.5 s"):
            client.info()
        assert time.monotonic() - started < 3.0


@pytest.mark.parametrize("url", ["", "ftp://host", "127.0.0.1:8000", "http://"])
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        ActiveSegClient(url)


# ----------------------------------------------------------------------------------------- fixture stub


class _Stub(http.server.BaseHTTPRequestHandler):
    routes: dict[tuple[str, str], tuple[int, Any]] = {}
    seen: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        type(self).seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                "body": body})
        status, payload = type(self).routes.get((self.command, path), (404, fixture("error_unknown_case")))
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                         else "application/json")
        if isinstance(payload, bytes):
            self.send_header("Content-Disposition", 'attachment; filename="phantom_003.pseudo.seg.nrrd"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture()
def stub() -> Iterator[tuple[str, type[_Stub]]]:
    handler = type("Stub", (_Stub,), {"routes": {}, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_fixture_bodies_parse_and_token_header_is_sent(stub: tuple[str, type[_Stub]]) -> None:
    url, handler = stub
    handler.routes.update({
        ("GET", "/v1/queue"): (200, fixture("queue")),
        ("POST", "/v1/queue/next"): (200, fixture("queue_next")),
        ("POST", "/v1/jobs/train"): (202, fixture("job_started")),
        ("GET", "/v1/learning-curve"): (200, fixture("learning_curve")),
        ("POST", "/v1/jobs/daae87aae3414c84a0cca070076fb91b/cancel"): (409, fixture("error_job_running")),
        ("GET", "/v1/cases/phantom_003/pseudo"): (200, b"NRRD0004\n"),
    })
    client = ActiveSegClient(url + "/v1/", token="abc")  # a trailing /v1 is tolerated
    queue = client.queue()
    assert queue == Queue.from_json(fixture("queue"))
    assert [i.rank for i in queue.items] == [1, 2, 3, 4] and queue.items[2].case.mdsc == pytest.approx(fixture("queue")["items"][2]["case"]["mdsc"])
    assert client.lease_next("alice") == Case.from_json(fixture("queue_next")["case"])
    started = client.start_train()
    assert isinstance(started, Job) and started.job_id == fixture("job_started")["job_id"] and not started.done
    assert client.learning_curve() == [CurvePoint(version=1, active=True, round=1, n_expert=3, n_pseudo=0,
                                                  val_dice=None, final_loss=pytest.approx(fixture("learning_curve")["points"][0]["final_loss"]))]
    pseudo = client.download_pseudo("phantom_003")
    assert pseudo.data == b"NRRD0004\n" and pseudo.suffix == ".seg.nrrd"
    with pytest.raises(BackendRequestError) as caught:
        client.cancel_job("daae87aae3414c84a0cca070076fb91b")
    assert caught.value.code == "job_running"
    assert caught.value.message == fixture("error_job_running")["error"]["message"]
    assert all(r["headers"].get("Authorization") == "Bearer abc" for r in handler.seen)
    train = next(r for r in handler.seen if r["path"] == "/v1/jobs/train")
    assert json.loads(train["body"]) == {"then_rank": True, "write_pseudo": True}
    nxt = next(r for r in handler.seen if r["path"].startswith("/v1/queue/next"))
    assert nxt["path"] == "/v1/queue/next?annotator=alice"


def test_case_ids_are_escaped_and_non_json_errors_are_typed(stub: tuple[str, type[_Stub]]) -> None:
    url, handler = stub
    handler.routes[("GET", "/v1/info")] = (502, b"<html>bad gateway</html>")
    client = ActiveSegClient(url)
    with pytest.raises(BackendRequestError) as caught:
        client.info()
    assert caught.value.status == 502 and caught.value.code == "http_error" and "bad gateway" in caught.value.message
    with pytest.raises(BackendRequestError):
        client.case("../info")
    assert handler.seen[-1]["path"] == "/v1/cases/..%2Finfo"


def test_every_fixture_body_parses_into_its_typed_response() -> None:
    """The protocol's recorded answers parse into the module's dataclasses (so a change of the server's
    answers that the module relies on fails here, not in front of a radiologist)."""
    info = Info.from_json(fixture("info"))
    assert info.labels == {1: "lung", 2: "lesion"} and info.counts["total"] == 8 and info.running_job is None
    assert CaseList.from_json(fixture("cases")).cases[0].case_id.startswith("phantom_")
    succeeded = Job.from_json(fixture("job_succeeded"))
    assert succeeded.done and succeeded.model_version == 1 and succeeded.progress.history[0].epoch == 1
    assert [j.job_id for j in (Job.from_json(j) for j in fixture("jobs")["jobs"])] == [succeeded.job_id]
    models = ModelList.from_json(fixture("models"))
    assert models.active == 1 and models.models[0].metrics["n_expert"] == 3


@pytest.mark.parametrize("body, match", [
    ({"case_id": "x"}, "lacks the field 'state'"),
    (["not", "an", "object"], "list where case"),
])
def test_answers_missing_protocol_fields_are_protocol_errors(body: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        Case.from_json(body)
    assert issubclass(ProtocolError, ClientError)  # the widget shows it like any backend error


def test_unknown_fields_from_a_newer_backend_are_ignored() -> None:
    case = Case.from_json({**fixture("case"), "added_in_v2": 1})
    assert case == Case.from_json(fixture("case"))


def test_uncertainty_download_is_none_when_absent(stub: tuple[str, type[_Stub]]) -> None:
    url, handler = stub
    handler.routes[("GET", "/v1/cases/phantom_003/uncertainty")] = (409, {"error": {"code": "invalid_state",
                                                                                    "message": "no map"}})
    handler.routes[("GET", "/v1/cases/phantom_004/uncertainty")] = (200, b"NRRD0004\n")
    client = ActiveSegClient(url)
    assert client.download_uncertainty("phantom_003") is None
    assert client.download_uncertainty("phantom_004").data == b"NRRD0004\n"
