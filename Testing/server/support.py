"""Helpers shared by the server tests and the API benchmark: a real server subprocess and a fingerprint of a
datastore's files for "nothing changed" checks; tiny datastores come from ``Testing/tiny.py`` (re-exported)."""

from __future__ import annotations

import hashlib
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from activeseg.api.server import URL_LINE_PREFIX

from ..tiny import PHANTOM_SHAPE as SHAPE
from ..tiny import make_store, tiny_config

__all__ = ["SHAPE", "tiny_config", "make_store", "ServerProcess", "store_fingerprint", "label_path", "wait_for_job"]

def label_path(source: Path, case_id: str) -> Path:
    """The ground-truth label file of a phantom case."""
    return source / "labelsTr" / f"{case_id}.nii.gz"


class ServerProcess:
    """``python -m activeseg serve`` as a child process; :attr:`url` comes from its protocol line.

    Args:
        store: datastore folder.
        token: bearer token (passed through ``$ACTIVESEG_TOKEN`` so it is not visible in ``ps``).
        host: address to bind.
        extra_args: more command-line arguments.
        log_path: where its stderr goes (default: beside the store).
    """

    def __init__(
        self, store: Path, token: str | None = None, host: str = "127.0.0.1", extra_args: tuple[str, ...] = (),
        log_path: Path | None = None,
    ) -> None:
        self.store = Path(store)
        self.token = token
        self.command = [sys.executable, "-m", "activeseg", "serve", "--data", str(store), "--host", host, "--port", "0", *extra_args]
        self.log_path = log_path or self.store.parent / "server.log"
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start and wait for the URL line. Raises RuntimeError (with the log) if it does not come."""
        env = dict(os.environ)
        env.pop("ACTIVESEG_TOKEN", None)
        if self.token is not None:
            env["ACTIVESEG_TOKEN"] = self.token
        log = open(self.log_path, "a")  # noqa: SIM115 - stays open for the child's lifetime
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        log.close()
        threading.Thread(target=self._read_stdout, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith(URL_LINE_PREFIX):
                self.url = line[len(URL_LINE_PREFIX):].strip()
                return self
        self.kill()
        raise RuntimeError(f"server did not start; log:\n{self.log_path.read_text()[-4000:]}")

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def client(self, timeout: float = 30.0, token: str | None = None) -> httpx.Client:
        """An httpx client for this server (sending the token if it has one)."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def kill(self) -> None:
        """SIGKILL (a crash); the server gets no chance to clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM (a clean stop); returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def store_fingerprint(store: Path) -> dict[str, str]:
    """SHA-256 of every file under ``store``; the SQLite database by its logical content (a dump), because
    readers legitimately touch its ``-wal``/``-shm`` side files without changing any data."""
    store = Path(store)
    result: dict[str, str] = {}
    for path in sorted(store.rglob("*")):
        if not path.is_file():
            continue
        relative = str(path.relative_to(store))
        if relative.endswith(("-wal", "-shm")):
            continue
        if path.name == "activeseg.db":
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                dump = "\n".join(connection.iterdump())
            finally:
                connection.close()
            result[relative] = hashlib.sha256(dump.encode()).hexdigest()
        else:
            result[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 180.0, until: tuple[str, ...] | None = None) -> dict:
    """Poll a job until it leaves ``running`` (or reaches a status in ``until``); return its last JSON."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", params={"log_lines": 50}).json()
        if (until is not None and job["status"] in until) or (until is None and job["status"] != "running"):
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout} s: {job}")
        time.sleep(0.2)
