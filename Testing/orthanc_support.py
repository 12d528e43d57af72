"""A real Orthanc PACS with its DICOMweb plugin, for tests: free loopback port, private storage, stopped after.

Debian packages ``orthanc`` and ``orthanc-dicomweb`` provide it (``.ci/run`` installs them; on a developer
machine: ``sudo apt-get install orthanc orthanc-dicomweb``). Where they are missing, :func:`orthanc_or_skip`
skips the test with that sentence. The service the package installs is not used: each server here runs
from its own temporary folder with a generated configuration, DICOM (C-STORE) listener off, remote access
off (Orthanc 1.10 has no bind-address option, so it refuses every client but loopback), and is killed
(its process only) when the test ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

__all__ = ["OrthancServer", "orthanc_available", "orthanc_or_skip", "running_orthanc"]

ORTHANC_BINARY_NAMES = ("Orthanc",)
DICOMWEB_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
INSTALL_HINT = "install the Debian packages 'orthanc' and 'orthanc-dicomweb' (apt-get install orthanc orthanc-dicomweb)"


def _binary() -> str | None:
    for name in ORTHANC_BINARY_NAMES:
        found = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


def _plugin() -> Path | None:
    return next((p for p in DICOMWEB_PLUGIN_CANDIDATES if p.exists()), None)


def orthanc_available() -> str | None:
    """``None`` when Orthanc and its DICOMweb plugin are installed, else the reason they cannot be used."""
    if _binary() is None:
        return f"Orthanc is not installed: {INSTALL_HINT}"
    if _plugin() is None:
        return f"Orthanc's DICOMweb plugin is not installed: {INSTALL_HINT}"
    return None


def orthanc_or_skip() -> None:
    """Skip the calling test with a clear reason when Orthanc cannot be started here."""
    reason = orthanc_available()
    if reason is not None:
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OrthancServer:
    """One Orthanc process.

    Attributes:
        root: its private folder (configuration, storage, index, log).
        port: HTTP port on 127.0.0.1.
        process: the running process (``None`` once stopped).
    """

    root: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Orthanc's REST root."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root (QIDO-RS, WADO-RS and STOW-RS live under it)."""
        return f"{self.url}/dicom-web"

    def _write_config(self) -> Path:
        config = {
            "Name": "activeseg-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "HttpPort": self.port,
            "HttpServerEnabled": True,
            "DicomServerEnabled": False,
            "DicomPort": _free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SaveJobs": False,
            "StableAge": 1,
            "OverwriteInstances": False,
            "HttpThreadsCount": 8,
            "Plugins": [str(_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": f"127.0.0.1:{self.port}"},
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 60.0, attempts: int = 3) -> OrthancServer:
        """Start on a free loopback port and wait until the DICOMweb plugin answers.

        A port found free can be taken by another process before Orthanc binds it; then another port is tried.

        Raises:
            RuntimeError: Orthanc did not come up (its log's tail is in the message).
        """
        binary = _binary()
        if binary is None or _plugin() is None:
            raise RuntimeError(orthanc_available() or "Orthanc is not usable")
        self.root.mkdir(parents=True, exist_ok=True)
        last_log = ""
        for _ in range(attempts):
            self.port = _free_port()
            config = self._write_config()
            log = open(self.root / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process below
            self.process = subprocess.Popen(
                [binary, "--logfile=" + str(self.root / "orthanc-internal.log"), str(config)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
            )
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    if requests.get(f"{self.dicomweb_url}/studies", timeout=2).status_code == 200:
                        return self
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            last_log = self._log_tail()
            self.stop()
        raise RuntimeError(f"Orthanc did not start in {timeout:.0f} s; log tail:\n{last_log}")

    def _log_tail(self) -> str:
        texts = []
        for name in ("orthanc.log", "orthanc-internal.log"):
            path = self.root / name
            if path.is_file():
                texts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(texts)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 15 s); idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)

    def upload(self, path: Path) -> int:
        """Store a DICOM file, or every file under a folder, through Orthanc's REST API; returns how many."""
        path = Path(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        if not files:
            raise FileNotFoundError(f"no DICOM file at {path}")
        stored = 0
        for path in files:
            response = requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=60)
            response.raise_for_status()
            stored += 1
        return stored

    def instance_count(self) -> int:
        """Number of instances Orthanc holds."""
        return int(requests.get(f"{self.url}/statistics", timeout=10).json()["CountInstances"])


@contextmanager
def running_orthanc(root: Path) -> Iterator[OrthancServer]:
    """An Orthanc server for the duration of a ``with`` block (skips the test when Orthanc is missing)."""
    orthanc_or_skip()
    server = OrthancServer(root).start()
    try:
        yield server
    finally:
        server.stop()
