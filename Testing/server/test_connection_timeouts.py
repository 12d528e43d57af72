"""A connection cannot be held open by sending nothing, or a byte at a time (issue 12 item 11).

Before: uvicorn timed out only an idle keep-alive connection after a response, so a connection that sent nothing,
or dripped its headers a byte at a time, was held for ever; a body dripped a few bytes just inside every idle
timeout was read for ever. Against a real server on 127.0.0.1 with short limits (header deadline 1 s, body idle
1 s, least body rate 1000 bytes/s); each wait is bounded at 30 s so a regression fails instead of hanging.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from .conftest import LiveServer
from .support import ServerProcess, make_store

LIMITS = {"ACTIVESEG_HEADER_TIMEOUT_S": "1", "ACTIVESEG_BODY_IDLE_TIMEOUT_S": "1", "ACTIVESEG_MIN_BODY_RATE": "1000"}
GIVE_UP_S = 30.0


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    store, source = make_store(tmp_path_factory.mktemp("strict"), count=4)
    saved = {key: os.environ.get(key) for key in LIMITS}
    os.environ.update(LIMITS)
    try:
        server = ServerProcess(store).start()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    client = server.client()
    yield LiveServer(server, store, source, client)
    client.close()
    server.stop()


def _connect(server: LiveServer) -> socket.socket:
    host, port = server.server.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=GIVE_UP_S)
    return sock


def _rest_until_close(sock: socket.socket, deadline: float) -> bytes:
    """What the server sends after the first bytes of its answer, until it closes (``connection: close``): the
    status line and the body may come in separate segments (on a loaded machine the body of a 408 came apart)."""
    rest = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        rest += chunk
    return rest


def _drip(sock: socket.socket, prefix: bytes, byte: bytes, interval_s: float = 0.2) -> bytes:
    """Send ``prefix``, then ``byte`` every ``interval_s`` until the server answers or closes; return what it sent
    (b"" for a plain close). Raises AssertionError when it still holds the connection after GIVE_UP_S."""
    sock.sendall(prefix)
    sock.settimeout(interval_s)
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        try:
            answer = sock.recv(65536)
            return answer + _rest_until_close(sock, deadline) if answer else answer
        except TimeoutError:
            pass
        try:
            sock.sendall(byte)
        except (BrokenPipeError, ConnectionResetError):
            return b""
    raise AssertionError(f"the server still held the connection after {GIVE_UP_S} s")


def test_a_silent_connection_is_closed(strict: LiveServer) -> None:
    with _connect(strict) as sock:
        assert sock.recv(65536) == b""  # closed without a word (a recv timeout raises instead)


def test_dripped_request_headers_get_408_and_a_close(strict: LiveServer) -> None:
    with _connect(strict) as sock:
        answer = _drip(sock, b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: ", b"a")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer


def test_a_dripped_body_gets_408(strict: LiveServer) -> None:
    """Ten bytes every 0.2 s: inside the 1 s idle timeout each time, 50 bytes/s against the least 1000."""
    with _connect(strict) as sock:
        answer = _drip(sock, b"PUT /v1/cases/phantom_001/label?annotator=a HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Length: 1000000\r\n\r\n\x1f\x8b", b"\0" * 10)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"too slowly" in answer
    assert strict.client.get("/v1/cases/phantom_001").json()["has_label"] is False


def test_keep_alive_requests_are_still_served(strict: LiveServer) -> None:
    """The deadline restarts after each response: requests on one connection, each well inside it, all answered."""
    with _connect(strict) as sock:
        for _ in range(3):
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, f"closed after {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            time.sleep(0.5)


def test_a_normal_upload_is_accepted(strict: LiveServer) -> None:
    from .support import label_path

    response = strict.client.put("/v1/cases/phantom_002/label", params={"annotator": "a"},
                                 content=label_path(strict.source, "phantom_002").read_bytes())
    assert response.status_code == 200, response.text
