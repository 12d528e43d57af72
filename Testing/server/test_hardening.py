"""The backend attacked as a demanding user and an attacker would, through a real server on 127.0.0.1
(issue 12, items 1-3, 10-12, 14). Each test failed against the server before the hardening."""

from __future__ import annotations

import gzip
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from activeseg.store.datastore import Datastore

from .conftest import LiveServer
from .support import ServerProcess, label_path, make_store, store_fingerprint

IDLE_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def hard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A loopback (no-token) server with a short body idle timeout."""
    root = tmp_path_factory.mktemp("hard")
    store, source = make_store(root, count=6)
    os.environ["ACTIVESEG_BODY_IDLE_TIMEOUT_S"] = str(IDLE_TIMEOUT_S)
    try:
        server = ServerProcess(store).start()
    finally:
        del os.environ["ACTIVESEG_BODY_IDLE_TIMEOUT_S"]
    client = server.client()
    yield LiveServer(server, store, source, client)
    client.close()
    server.stop()


def _put(client: httpx.Client, data: bytes, case_id: str = "phantom_001", **params: str) -> httpx.Response:
    return client.put(f"/v1/cases/{case_id}/label", params={"annotator": "ann", **params}, content=data)


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def _nrrd(fields: list[str], data: bytes = b"") -> bytes:
    return ("\n".join(["NRRD0004", *fields]) + "\n\n").encode() + data


# ------------------------------------------------------------------ item 2: server files read through an upload
def test_upload_naming_a_server_file_is_refused_and_leaks_nothing(hard: LiveServer, tmp_path: Path) -> None:
    """Before: a .seg.nrrd whose 'data file' named a matching server file was stored as the label (then
    downloadable); other files leaked their size in the error; a FIFO hung the request."""
    truth = label_path(hard.source, "phantom_001")
    import numpy as np

    from activeseg.io.volumes import read_volume

    label = read_volume(truth, dtype=np.uint8)
    secret = tmp_path / "server-secret.raw"
    secret.write_bytes(np.ascontiguousarray(label.array).tobytes())
    size = " ".join(str(s) for s in label.geometry.size)
    directions = " ".join(f"({c[0]},{c[1]},{c[2]})" for c in np.asarray(label.geometry.direction).reshape(3, 3).T
                          * np.asarray(label.geometry.spacing)[:, None])
    origin = "({},{},{})".format(*label.geometry.origin)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = store_fingerprint(hard.store)
    for target in (secret, Path("/etc/passwd"), Path("/dev/zero"), fifo):
        fields = ["type: uint8", "dimension: 3", f"sizes: {size}", "encoding: raw", "space: left-posterior-superior",
                  f"space directions: {directions}", f"space origin: {origin}", f"data file: {target}",
                  "Segment0_ID:=Segment_1", "Segment0_Name:=lung", "Segment0_LabelValue:=1", "Segment0_Layer:=0",
                  "Segment1_ID:=Segment_2", "Segment1_Name:=lesion", "Segment1_LabelValue:=2", "Segment1_Layer:=0"]
        for file_format in (".seg.nrrd", ".nrrd"):
            response = _put(hard.client, _nrrd(fields), format=file_format, no_finding="true")
            assert response.status_code == 422, (target, file_format, response.text)
            message = response.json()["error"]["message"]
            assert "data file" in message and str(target) not in message and str(tmp_path) not in message
    assert store_fingerprint(hard.store) == before


# ------------------------------------------------------------------ item 3: decompression bombs
def test_bombs_are_refused_from_the_header_with_bounded_memory(hard: LiveServer) -> None:
    """Before: a 522 KB upload raised the server's peak memory by 3.07 GB; now refused before decoding."""
    pid = hard.server.process.pid
    baseline = _peak_rss_kib(pid)
    zeros = gzip.compress(b"\0" * (16 << 20), 9)  # ~16 KB of gzip that claims far more
    bombs = {
        "nrrd 3 GiB declared": (_nrrd(["type: uint8", "dimension: 3", "sizes: 2048 2048 768", "encoding: gzip"], zeros),
                                ".nrrd"),
        "seg.nrrd 3 GiB declared": (_nrrd(["type: uint8", "dimension: 3", "sizes: 2048 2048 768", "encoding: gzip",
                                           "Segment0_Name:=lung", "Segment0_LabelValue:=1"], zeros), ".seg.nrrd"),
        "nii.gz 4 GiB declared": (gzip.compress(_huge_nifti_header() + b"\0" * (4 << 20)), ".nii.gz"),
    }
    for name, (data, file_format) in bombs.items():
        started = time.perf_counter()
        response = _put(hard.client, data, format=file_format)
        assert response.status_code == 422, (name, response.text)
        assert "limit" in response.json()["error"]["message"], name
        assert time.perf_counter() - started < 10, name
    growth_mib = (_peak_rss_kib(pid) - baseline) / 1024
    print(f"server peak RSS growth over {len(bombs)} bombs: {growth_mib:.1f} MiB")
    assert growth_mib < 100


def _huge_nifti_header() -> bytes:
    import struct

    head = bytearray(352)
    struct.pack_into("<i", head, 0, 348)
    struct.pack_into("<8h", head, 40, 3, 2048, 2048, 1024, 1, 1, 1, 1)
    struct.pack_into("<2h", head, 70, 2, 8)  # uint8
    struct.pack_into("<8f", head, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<f", head, 108, 352.0)
    struct.pack_into("<f", head, 112, 1.0)
    head[344:348] = b"n+1\0"
    return bytes(head)


# ------------------------------------------------------------------ item 10: cross-site requests in loopback mode
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/jobs/train", {"Origin": "http://evil.example", "Content-Type": "application/json"}),
        ("POST", "/v1/cases/phantom_002/pseudo/accept", {"Origin": "http://evil.example"}),
        ("POST", "/v1/models/1/activate", {"Origin": "null"}),
        ("GET", "/v1/cases", {"Host": "evil.example"}),
        ("GET", "/v1/cases/phantom_001/image", {"Host": "evil.example:8000"}),
        ("POST", "/v1/queue/next?annotator=a", {"Host": "rebind.evil.example"}),
    ],
)
def test_cross_site_requests_are_refused_in_loopback_mode(
    hard: LiveServer, method: str, path: str, headers: dict[str, str]
) -> None:
    before = store_fingerprint(hard.store)
    response = hard.client.request(method, path, headers=headers, content=b"{}" if "json" in str(headers) else None)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] in ("forbidden_origin", "forbidden_host")
    assert store_fingerprint(hard.store) == before
    assert hard.client.get("/v1/info").json()["running_job"] is None


def test_loopback_origins_and_hosts_are_served(hard: LiveServer) -> None:
    port = hard.server.url.rsplit(":", 1)[1]
    for headers in ({"Origin": f"http://127.0.0.1:{port}"}, {"Origin": "http://localhost:3000"},
                    {"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"}):
        assert hard.client.get("/v1/cases", headers=headers).status_code == 200, headers


def test_simple_content_types_cannot_start_writes(hard: LiveServer) -> None:
    """What a cross-site form or no-cors fetch can send without a CORS preflight."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = hard.client.post("/v1/jobs/rank", content=b'{"write_pseudo": false}',
                                    headers={"Content-Type": content_type})
        assert response.status_code == 415, (content_type, response.text)
    assert hard.client.post("/v1/jobs/rank", content=b"{}").status_code == 415  # a body needs a type
    assert hard.client.get("/v1/info").json()["running_job"] is None


def test_token_mode_does_not_need_the_loopback_checks(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, count=5)
    with ServerProcess(store, token="t0ken") as server, server.client() as client:
        assert client.get("/v1/cases", headers={"Origin": "https://viewer.example"}).status_code == 200


# ------------------------------------------------------------------ item 11: bounded bodies, idle timeouts
def _raw_request(url: str, request: bytes, read_timeout: float = 30.0) -> tuple[float, bytes]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    started = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=read_timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"}" in answer:
                break
    return time.perf_counter() - started, answer


def test_huge_json_body_is_refused_before_it_is_read(hard: LiveServer) -> None:
    """Before: a 200 MB JSON body was read (+600 MB RSS) and the job started."""
    elapsed, answer = _raw_request(
        hard.server.url,
        b"POST /v1/jobs/train HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200000000\r\n\r\n{\"then_rank\": false, \"pad\": \"",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert elapsed < 5
    chunked = hard.client.post("/v1/jobs/train", content=iter([b'{"pad": "' + b"x" * 65536] * 4),
                               headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert hard.client.get("/v1/info").json()["running_job"] is None


def test_stalled_upload_times_out_and_leaves_no_temp_file(hard: LiveServer) -> None:
    """Before: an upload that stopped sending was held open with no timeout."""
    elapsed, answer = _raw_request(
        hard.server.url,
        b"PUT /v1/cases/phantom_003/label?annotator=a HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Length: 100000\r\n\r\n" + b"\x1f\x8b" + b"\0" * 1000,
    )
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert IDLE_TIMEOUT_S <= elapsed < IDLE_TIMEOUT_S + 10
    uploads = hard.store / ".activeseg" / "uploads"
    assert not list(uploads.glob("*")) if uploads.exists() else True


# ------------------------------------------------------------------ item 14: smaller
def test_get_on_a_job_start_path_is_405(hard: LiveServer) -> None:
    for path in ("/v1/jobs/train", "/v1/jobs/rank", "/v1/jobs/pseudo-label"):
        response = hard.client.get(path)
        assert response.status_code == 405, path
        assert response.headers["allow"] == "POST"


def test_cancelling_a_finished_job_says_so_not_job_running(hard: LiveServer) -> None:
    from activeseg.jobs.runner import JobTable

    table = JobTable(hard.store / ".activeseg")
    job = table.create("rank", {})
    table.finish(job.job_id, "succeeded", result={})
    response = hard.client.post(f"/v1/jobs/{job.job_id}/cancel")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "job_finished" and "succeeded" in error["message"], error


def test_openapi_declares_the_bearer_scheme_and_the_case_id_pattern(hard: LiveServer) -> None:
    from activeseg.store.case_ids import CASE_ID_PATTERN

    schema = hard.client.get("/v1/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"]
    }
    assert {"bearerAuth": []} in schema["security"]
    case_params = [p for item in schema["paths"].values() for op in item.values()
                   for p in op.get("parameters", []) if p["name"] == "case_id"]
    assert len(case_params) >= 8
    assert all(p["schema"]["pattern"] == CASE_ID_PATTERN.pattern for p in case_params)


def test_empty_token_means_loopback_mode_not_401_everywhere(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, count=5)
    # server.client(): a 30 s read timeout (httpx's own 5 s failed once on a loaded machine, before the first answer)
    with ServerProcess(store, token="") as server, server.client(token="") as client:
        assert client.get("/v1/info").status_code == 200
        assert client.get("/v1/info").json()["auth_required"] is False


def test_upload_spool_lives_in_the_store_and_is_recovered_after_a_kill(tmp_path: Path) -> None:
    """Before: upload temp files stayed in /tmp after a kill -9."""
    store, _ = make_store(tmp_path, count=5)
    server = ServerProcess(store).start()
    try:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"PUT /v1/cases/phantom_001/label?annotator=a HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 100000\r\n\r\n" + b"\0" * 70000)
        uploads = store / ".activeseg" / "uploads"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (uploads.exists() and list(uploads.iterdir())):
            time.sleep(0.05)
        spooled = list(uploads.iterdir()) if uploads.exists() else []
        assert len(spooled) == 1 and spooled[0].name.startswith(".tmp-upload-")
    finally:
        server.kill()
    sock.close()
    assert spooled[0].exists()  # the kill left it behind ...
    old = time.time() - 3600
    os.utime(spooled[0], (old, old))
    with ServerProcess(store):
        pass
    assert not spooled[0].exists()  # ... and the restarted server's recovery removed it


# ------------------------------------------------------------------ item 12 (and 1): resource faults
def _one_line_exit(store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "activeseg", "serve", "--data", str(store), "--port", "0"],
        capture_output=True, text=True, timeout=60,
    )


def test_start_on_a_read_only_store_exits_with_one_line(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, count=5)
    result = subprocess.run(["mount", "--bind", str(store), str(store)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot bind-mount the store read-only (needs root/CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(store)], check=True)
        result = _one_line_exit(store)
    finally:
        subprocess.run(["umount", "-l", str(store)], check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "read-only" in lines[0], result.stderr


def test_start_on_a_locked_store_exits_with_one_line(tmp_path: Path) -> None:
    store, _ = make_store(tmp_path, count=5)
    holder = sqlite3.connect(Datastore(store).db_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.perf_counter()
        result = _one_line_exit(store)
        elapsed = time.perf_counter() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "locked by another process" in lines[0], result.stderr
    assert elapsed < 30


def test_write_under_another_process_lock_answers_503_quickly(hard: LiveServer) -> None:
    """Before: the write hung 30 s on SQLite's lock, then answered an opaque 500."""
    holder = sqlite3.connect(Datastore(hard.store).db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.perf_counter()
        response = hard.client.post("/v1/cases/phantom_004/lease", params={"annotator": "ann"})
        elapsed = time.perf_counter() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "store_locked" and response.headers["retry-after"]
    assert elapsed < 15
    assert hard.client.post("/v1/cases/phantom_004/lease", params={"annotator": "ann"}).status_code == 200


def test_full_disk_answers_507_and_keeps_the_acknowledged_label(tmp_path: Path) -> None:
    """Before: 200 with a 0-byte label committed, the previous label deleted; GET label then 422."""
    store, source = make_store(tmp_path, count=5)
    labels_dir = store / ".activeseg" / "labels"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(labels_dir)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root/CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        with ServerProcess(store) as server, server.client() as client:
            first = _put(client, label_path(source, "phantom_001").read_bytes())
            assert first.status_code == 200, first.text
            acknowledged = client.get("/v1/cases/phantom_001/label").content
            fd = os.open(labels_dir / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\1" * 4096):
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            import numpy as np

            from activeseg.io.volumes import read_volume, write_volume

            volume = read_volume(label_path(source, "phantom_001"), dtype=np.uint8)
            edited = volume.array.copy()
            edited[edited == 0] = np.random.default_rng(0).integers(0, 3, int((edited == 0).sum()), dtype=np.uint8)
            path = tmp_path / "edited.nii.gz"
            write_volume(edited, volume.geometry, path)
            response = _put(client, path.read_bytes())
            assert response.status_code == 507, response.text
            assert response.json()["error"]["code"] == "storage_full"
            assert str(labels_dir) not in response.json()["error"]["message"]
            again = client.get("/v1/cases/phantom_001/label")
            assert again.status_code == 200 and again.content == acknowledged
    finally:
        subprocess.run(["umount", "-l", str(labels_dir)], check=False)
