"""Bulk transfers by helper processes (issue 13 item 6): against a real backend (``activeseg serve`` with a token),
the process path downloads the same bytes as the thread path, raises the same typed errors, uploads a label, and
runs through BackgroundTasks like a thread task; cancel and shutdown kill the helper and leave no file behind
(a stalling stdlib server keeps a download in flight)."""

from __future__ import annotations

import http.server
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ActiveSegLib import AuthenticationError, BackendRequestError, BackendUnavailableError
from ActiveSegLib.client import ActiveSegClient, Download
from ActiveSegLib.session import BackendSession
from ActiveSegLib.transfer import TEMP_PREFIX, ProcessTransfer, download_file, upload_label
from ActiveSegLib.worker import BackgroundTasks, settle

from .backend_support import alive, ground_truth_path, running_backend

TOKEN = "transfer-token-41c2"


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real backend with a bearer token on a 4-phantom datastore: (URL, phantom folder)."""
    pytest.importorskip("activeseg")
    with running_backend(tmp_path_factory.mktemp("transfer"), TOKEN) as started:
        yield started


def _session(url: str, mode: str, temp_dir: Path | None = None, token: str = TOKEN) -> BackendSession:
    session = BackendSession(bulk_transfers=mode, transfer_temp_dir=str(temp_dir) if temp_dir else None)  # type: ignore[arg-type]
    session.connect(url, token)
    return session


def _train_case(session: BackendSession) -> str:
    return next(c.case_id for c in session.client.cases(split="train").cases)




def test_process_download_is_byte_identical_to_the_thread_download(backend: tuple[str, Path], tmp_path: Path) -> None:
    threaded, process = _session(backend[0], "thread"), _session(backend[0], "process", tmp_path)
    case_id = _train_case(threaded)
    old = threaded.download("image", case_id)
    pending = process.download("image", case_id)
    assert isinstance(pending, ProcessTransfer) and pending.pid is None  # nothing spawned before the first step
    new = settle(pending)
    assert isinstance(old, Download) and isinstance(new, Download)
    assert new.data == old.data and new.filename == old.filename and new.suffix == ".nii.gz"
    # an optional file the case lacks is None on both paths (409 before any ranking)
    assert threaded.download("prediction", case_id) is None
    assert settle(process.download("prediction", case_id)) is None
    assert list(tmp_path.iterdir()) == []  # every transfer removed its folder


def test_http_errors_arrive_as_the_same_typed_errors(backend: tuple[str, Path], tmp_path: Path) -> None:
    url = backend[0]
    process = _session(url, "process", tmp_path)
    client = process.client
    with pytest.raises(BackendRequestError) as thread_error:
        client.download_image("phantom_999")
    with pytest.raises(BackendRequestError) as process_error:
        settle(process.download("image", "phantom_999"))
    for caught in (thread_error.value, process_error.value):
        assert type(caught) is BackendRequestError
    assert (process_error.value.status, process_error.value.code, process_error.value.message, process_error.value.url) == (
        thread_error.value.status, thread_error.value.code, thread_error.value.message, thread_error.value.url)
    assert process_error.value.status == 404 and process_error.value.code == "unknown_case"

    tasks = BackgroundTasks()  # as the widget gets it: through on_error, on the polling thread
    delivered: list[BaseException] = []
    try:
        tasks.submit(process.download, "image", "phantom_999", on_done=delivered.append, on_error=delivered.append)
        assert tasks.wait_idle(60)
    finally:
        tasks.shutdown()
    assert len(delivered) == 1 and type(delivered[0]) is BackendRequestError
    assert delivered[0].code == "unknown_case"  # type: ignore[attr-defined]

    wrong = ActiveSegClient(url, token="nope")
    with pytest.raises(AuthenticationError) as auth:
        settle(download_file(wrong, "image", "phantom_000", temp_dir=str(tmp_path)))
    assert auth.value.status == 401 and str(auth.value) == "wrong bearer token"

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(BackendUnavailableError) as unavailable:
        settle(download_file(ActiveSegClient(dead, timeout_s=5), "image", "phantom_000", temp_dir=str(tmp_path)))
    assert "cannot reach the backend" in str(unavailable.value)
    assert list(tmp_path.iterdir()) == []


def test_label_upload_by_helper_returns_the_case(backend: tuple[str, Path], tmp_path: Path) -> None:
    url, source = backend
    process = _session(url, "process", tmp_path)
    case_id = _train_case(process)
    data = ground_truth_path(source, case_id).read_bytes()
    with pytest.raises(BackendRequestError) as refused:  # the backend's validation error, typed
        settle(process.upload_label(case_id, b"not a nifti file", "alice"))
    assert refused.value.status == 422
    with pytest.raises(ValueError):
        upload_label(process.client, case_id, data, "alice", file_format=".png")
    case = settle(process.upload_label(case_id, data, "alice"))
    assert case.case_id == case_id and case.state == "labeled"
    assert process.client.download_label(case_id).data[:4]  # stored
    assert list(tmp_path.iterdir()) == []


def test_fetch_through_background_tasks_delivers_the_settled_download(backend: tuple[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("vtk")
    from ActiveSegLib.cases import CaseDownload, CasesSection

    threaded, process = _session(backend[0], "thread"), _session(backend[0], "process", tmp_path)
    case = threaded.client.cases(split="train").cases[-1]
    tasks = BackgroundTasks()
    delivered: list[CaseDownload] = []
    errors: list[BaseException] = []
    try:
        tasks.submit(CasesSection(process).fetch_case, case, "alice", on_done=delivered.append,
                     on_error=errors.append)
        assert tasks.wait_idle(60)
    finally:
        tasks.shutdown()
    assert errors == [] and len(delivered) == 1
    got, expected = delivered[0], CasesSection(threaded).fetch_case(case, "alice")
    assert got.settled and isinstance(got.image, Download)
    assert got.image.data == expected.image.data and got.start == expected.start is None
    assert got.start_kind == expected.start_kind == "" and got.uncertainty == expected.uncertainty is None
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- cancel and close


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    """Announces a large file, sends its first MiB, then stalls (a slow backend in the middle of a download)."""

    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(64 << 20))
        self.end_headers()
        self.wfile.write(b"\0" * (1 << 20))
        self.wfile.flush()
        self.release.wait(30)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def stalling_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _StallingHandler.release.set()
        server.shutdown()
        server.server_close()
        _StallingHandler.release.clear()


def _wait_in_flight(transfer: ProcessTransfer, timeout_s: float = 30.0) -> Path:
    """Step until the helper is receiving (its answer file has bytes); returns its folder."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert not transfer.step(), "the stalled transfer finished"
        folder = transfer.folder
        if folder is not None and (folder / "answer.bin").exists() and (folder / "answer.bin").stat().st_size:
            return folder
        time.sleep(0.02)
    raise AssertionError("the helper never started receiving")


def test_cancel_kills_the_helper_and_removes_its_files(stalling_url: str, tmp_path: Path) -> None:
    transfer = download_file(ActiveSegClient(stalling_url), "image", "big", temp_dir=str(tmp_path))
    folder = _wait_in_flight(transfer)
    pid = transfer.pid
    assert pid is not None and alive(pid) and folder.name.startswith(TEMP_PREFIX)
    started = time.monotonic()
    transfer.cancel()
    assert time.monotonic() - started < 5
    assert not alive(pid) and list(tmp_path.iterdir()) == []
    assert transfer.step() is True
    with pytest.raises(RuntimeError, match="cancelled"):
        transfer.result()
    transfer.cancel()  # idempotent


def test_cancelled_task_and_shutdown_end_their_helpers(stalling_url: str, tmp_path: Path) -> None:
    client = ActiveSegClient(stalling_url)
    tasks = BackgroundTasks()
    made: list[ProcessTransfer] = []

    def fetch() -> ProcessTransfer:  # what a Logic fetch_* returns in process mode
        made.append(download_file(client, "image", f"case{len(made)}", temp_dir=str(tmp_path)))
        return made[-1]

    results: list[object] = []
    cancelled = tasks.submit(fetch, on_done=results.append, on_error=results.append)
    tasks.submit(fetch, on_done=results.append, on_error=results.append)
    deadline = time.monotonic() + 30
    while not (len(made) == 2 and all(t.pid is not None for t in made)) and time.monotonic() < deadline:
        tasks.poll()
        time.sleep(0.02)
    pids = [t.pid for t in made]
    assert all(pid is not None and alive(pid) for pid in pids)
    cancelled.cancel()
    tasks.poll()  # the next tick ends the cancelled task's helper
    assert not alive(pids[0]) and alive(pids[1]) and len(list(tmp_path.iterdir())) == 1
    started = time.monotonic()
    tasks.shutdown()  # closing Slicer: the other helper is killed, nothing waits for the stalled server
    assert time.monotonic() - started < 5
    assert not alive(pids[1]) and list(tmp_path.iterdir()) == [] and results == []


def test_a_helper_that_dies_is_a_client_error(tmp_path: Path) -> None:
    transfer = ProcessTransfer(ActiveSegClient("http://127.0.0.1:9"), "GET", "/health", temp_dir=str(tmp_path),
                               python=sys.executable + "-does-not-exist")
    from ActiveSegLib import ClientError

    with pytest.raises(ClientError, match="could not start the transfer helper"):
        settle(transfer)
    assert list(tmp_path.iterdir()) == []


def test_the_logic_labels_a_case_with_process_transfers(backend: tuple[str, Path], ctx: object,
                                                         tmp_path: Path) -> None:
    """Next and Submit of the Logic as Slicer runs them (bulk_transfers="process"), through MRML (slicer-core)."""
    import numpy as np
    import slicer

    from ActiveSegLib import mrml
    from ActiveSegLib.logic import ActiveSegCoreLogic

    url, source = backend
    core = ActiveSegCoreLogic(ctx, bulk_transfers="process")  # type: ignore[arg-type]
    core.session.transfer_temp_dir = str(tmp_path)
    core.session.connect(url, TOKEN)
    loaded = core.cases.load_next_case("carol")
    assert loaded is not None
    truth = mrml.volume_node_from_file(ctx, ground_truth_path(source, loaded.case_id), "truth", labelmap=True)
    array = slicer.util.arrayFromVolume(truth).copy()
    assert array.shape == mrml.grid_shape_kji(loaded.volume_node) and array.any()
    core.cases.fill_segmentation(loaded.segmentation_node, loaded.volume_node, array)
    case = core.cases.submit()
    assert case.case_id == loaded.case_id and case.state == "labeled" and not core.has_unsaved_edits()
    assert np.array_equal(mrml.labelmap_array_from_segmentation(ctx, loaded.segmentation_node, loaded.volume_node,
                                                                core.session.labels), array)
    assert list(tmp_path.iterdir()) == []
