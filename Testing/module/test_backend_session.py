"""BackendSession (the Logic's Backend section) with fake backends: a local backend is tracked from the moment
it is spawned (Stop during the start-up wait ends it), and Start is idempotent (a second Start joins the first:
one process, one backend)."""

from __future__ import annotations

import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ActiveSegLib import BackendStartError
from ActiveSegLib.session import BackendSession

from .backend_support import FIXTURES
from .backend_support import alive
from .test_launcher import fake_backend, wait_dead

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process handling is tested on POSIX")

# A backend that answers /v1/info with the recorded fixture, after a start-up delay; logs each start to a file.
SERVING = """
    import http.server, pathlib, sys, time
    args = sys.argv[1:]
    data = pathlib.Path(args[args.index("--data") + 1])
    with open(data / "starts.log", "a") as log:
        log.write("start\\n")
    time.sleep(1.0)  # "importing torch"
    body = pathlib.Path(%r).read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print("ACTIVESEG_SERVER_URL=http://127.0.0.1:%%d" %% server.server_address[1], flush=True)
    server.serve_forever()
""" % str(FIXTURES / "info.json")


def serving_backend(tmp_path: Path) -> dict[str, str]:
    package = tmp_path / "fakes" / "serving" / "activeseg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(SERVING))
    env = fake_backend(tmp_path, "plain")
    env["PYTHONPATH"] = str(package.parent)
    return env


def test_second_start_joins_the_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    session = BackendSession(env=serving_backend(tmp_path))
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(
        session.start_local_backend(sys.executable, str(data), timeout_s=30))) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
            time.sleep(0.2)  # the second click comes while the first start waits
        for thread in threads:
            thread.join(timeout=30)
        assert len(results) == 2 and results[0] == results[1] and results[0].labels == {1: "lung", 2: "lesion"}
        assert (data / "starts.log").read_text() == "start\n", "a second Start spawned a second backend"
        first = session.launcher
        assert session.start_local_backend(sys.executable, str(data), timeout_s=30).version == "0.1.0"
        assert session.launcher is first and (data / "starts.log").read_text() == "start\n"
    finally:
        session.stop_local_backend()
    assert not first.running


def test_stop_during_start_up_leaves_no_backend(tmp_path: Path) -> None:
    session = BackendSession(env=fake_backend(tmp_path, "silent"))
    errors: list[BaseException] = []

    def start() -> None:
        try:
            session.start_local_backend(sys.executable, str(tmp_path), timeout_s=60)
        except BackendStartError as exc:
            errors.append(exc)

    thread = threading.Thread(target=start)
    thread.start()
    deadline = time.monotonic() + 30
    while (session.launcher is None or session.launcher.pid is None) and time.monotonic() < deadline:
        time.sleep(0.02)
    launcher = session.launcher
    assert launcher is not None and alive(launcher.pid), "the process is tracked while it starts"
    session.stop_local_backend()  # the user clicks Stop (or closes Slicer) during the start-up wait
    thread.join(timeout=15)
    assert not thread.is_alive() and errors and "stopped" in str(errors[0])
    assert wait_dead(launcher.pid) and session.launcher is None and not session.connected


def test_labels_are_never_fetched_on_the_main_thread() -> None:
    from ActiveSegLib import ClientError

    session = BackendSession()
    with pytest.raises(ClientError, match="connect to a backend first"):
        session.require_labels()
