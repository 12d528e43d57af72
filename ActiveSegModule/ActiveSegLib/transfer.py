"""Bulk HTTP transfers (case images, labels, predictions, maps; label uploads) run by a helper process. Stdlib only.

Why: Slicer's PythonQt never enables thread support, so Slicer's main thread holds the GIL while Qt sits idle. A
Python worker thread then advances only while the module's 100 ms poll timer runs Python, roughly one blocking
call (one ``recv`` of a few MiB) per tick: a download that takes 0.3 s in a plain interpreter takes seconds there.
A helper process has its own interpreter and its own GIL, so it moves the bytes at full speed whatever Slicer's
main thread does, and the main thread only has to notice that it finished.

How one :class:`ProcessTransfer` runs (every step on the thread that calls :meth:`ProcessTransfer.step`, in
Slicer the main thread's poll timer; none of them blocks):
    1. ``start``: a private temporary folder is made (``activeseg-transfer-*``; an upload's bytes are written into
       it), and ``<python> -c <boot> <ActiveSegLib's folder>`` is spawned (``PythonSlicer`` inside Slicer, this
       interpreter elsewhere; no console window on Windows). The request (backend URL, path, query, bearer token,
       timeout) goes to the helper's stdin as JSON: the token is never on a command line.
    2. The helper (:func:`main`) runs :meth:`ActiveSegClient.stream` -- the module's own HTTP client, so the
       request, the proxy rules and the mapping of HTTP errors to typed errors are the same code as everywhere
       else -- streaming the answer's body into ``answer.bin`` in 1 MiB chunks, then writes ``result.json``
       (atomically): ``{"ok": true, "filename": ...}`` or ``{"ok": false, "error": {"type", "status", "code",
       "message", "url"}}``.
    3. ``step`` checks ``Popen.poll()`` (a non-blocking ``waitpid``). Once the helper exited, ``result`` reads the
       answer and rebuilds the helper's typed error (:class:`BackendRequestError`, :class:`AuthenticationError`,
       :class:`BackendUnavailableError`, ...), exactly as a call on a thread would have raised it; the folder is
       removed either way.
    4. ``cancel`` kills the helper, reaps it and removes the folder (nothing is left behind, nothing waits for
       the network: closing Slicer never hangs on a transfer).

A :class:`ProcessTransfer` is a :class:`~ActiveSegLib.worker.Deferred`: a Logic call running on a worker thread
returns it (or a value holding several) instead of waiting, and :class:`~ActiveSegLib.worker.BackgroundTasks`
steps it from its poll and delivers its result to the task's ``on_done``. Scripts wait with
:func:`~ActiveSegLib.worker.settle`. Small JSON requests stay on worker threads: a few ticks each.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from .client import ActiveSegClient, Download, file_path, is_absent
from .errors import (
    AuthenticationError,
    BackendRequestError,
    BackendUnavailableError,
    ClientError,
    ProtocolError,
)
from .launcher import CREATE_NO_WINDOW

__all__ = ["ProcessTransfer", "download_file", "upload_label", "helper_python", "main", "TEMP_PREFIX"]

logger = logging.getLogger(__name__)

#: Name prefix of every transfer's temporary folder.
TEMP_PREFIX = "activeseg-transfer-"

_ANSWER = "answer.bin"
_UPLOAD = "upload.bin"
_RESULT = "result.json"
_LOG = "helper.log"

#: What the helper's ``python -c`` runs: ActiveSegLib's parent folder comes as the first argument.
_BOOT = ("import sys; sys.path.insert(0, sys.argv[1]); "
         "from ActiveSegLib.transfer import main; raise SystemExit(main())")

#: The typed errors a helper may report, by class name (anything else arrives as a plain ClientError).
_ERRORS: dict[str, type[ClientError]] = {cls.__name__: cls for cls in (
    ClientError, BackendUnavailableError, BackendRequestError, AuthenticationError, ProtocolError)}


def helper_python() -> str:
    """The interpreter that runs helpers: ``PythonSlicer`` inside Slicer (whose ``sys.executable`` may be the
    application itself), this interpreter elsewhere."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None)
    if app is not None:
        found = shutil.which("PythonSlicer")
        if found:
            return found
        home = getattr(app, "slicerHome", "")
        candidate = os.path.join(home, "bin", "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
        if home and os.path.exists(candidate):
            return candidate
    return sys.executable


def _error_to_json(exc: BaseException) -> dict[str, Any]:
    """A helper's failure as JSON (the class name and the fields its constructor needs)."""
    if isinstance(exc, BackendRequestError):
        return {"type": type(exc).__name__, "status": exc.status, "code": exc.code, "message": exc.message,
                "url": exc.url}
    if isinstance(exc, BackendUnavailableError):
        return {"type": type(exc).__name__, "message": str(exc), "url": exc.url}
    if isinstance(exc, ClientError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "ClientError", "message": f"the transfer failed: {type(exc).__name__}: {exc}"}


def _error_from_json(error: dict[str, Any]) -> ClientError:
    """The typed error a helper reported (see :func:`_error_to_json`)."""
    cls = _ERRORS.get(str(error.get("type")), ClientError)
    message = str(error.get("message", ""))
    if issubclass(cls, BackendRequestError):
        return cls(int(error.get("status", 0)), str(error.get("code", "http_error")), message, str(error.get("url", "")))
    if issubclass(cls, BackendUnavailableError):
        return cls(message, str(error.get("url", "")))
    return cls(message)


def main() -> int:
    """The helper process: one request from stdin (JSON), its answer into the folder it names. Exit status 0
    whenever ``result.json`` was written (the request's own failure is reported there)."""
    request = json.loads(sys.stdin.read())
    folder = Path(request["folder"])
    try:
        client = ActiveSegClient(request["base_url"], token=request.get("token"), timeout_s=request["timeout_s"])
        source_path = folder / _UPLOAD if request.get("upload") else None
        with open(folder / _ANSWER, "wb") as sink, \
                (open(source_path, "rb") if source_path is not None else nullcontext()) as source:
            filename = client.stream(request["method"], request["path"], sink, params=request.get("params"),
                                     source=source, accept=request.get("accept", "application/octet-stream"))
        result: dict[str, Any] = {"ok": True, "filename": filename}
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent, typed
        result = {"ok": False, "error": _error_to_json(exc)}
    partial = folder / (_RESULT + ".part")
    partial.write_text(json.dumps(result), encoding="utf-8")
    os.replace(partial, folder / _RESULT)
    return 0


class ProcessTransfer:
    """One download or upload run by a helper process; advanced by :meth:`step`, never blocking.

    Args:
        client: the backend's client (its URL, token and timeout are handed to the helper).
        method: ``GET`` or ``PUT``.
        path: below ``/v1``.
        params: query parameters.
        upload: the request body (written to a file the helper sends), or ``None``.
        optional: an answer meaning "the case has no such file" (:func:`~ActiveSegLib.client.is_absent`) gives
            ``None`` instead of raising.
        convert: turns the answer (:class:`~ActiveSegLib.client.Download`) into the result; default: the answer.
        timeout_s: HTTP timeout (seconds to connect and for each read); default: the client's.
        python: the helper's interpreter; default :func:`helper_python`.
        temp_dir: where the transfer's private folder is made; default: the system's temporary folder.
        name: label for logs.
        accept: the ``Accept`` header (an upload's answer is JSON).
    """

    def __init__(self, client: ActiveSegClient, method: str, path: str, *, params: dict[str, Any] | None = None,
                 upload: bytes | None = None, optional: bool = False,
                 convert: Callable[[Download], Any] | None = None, timeout_s: float | None = None,
                 python: str | None = None, temp_dir: str | None = None, name: str = "",
                 accept: str = "application/octet-stream") -> None:
        self._request = {"base_url": client.base_url, "token": client.token,
                         "timeout_s": float(timeout_s if timeout_s is not None else client.timeout_s),
                         "method": method, "path": path, "params": dict(params or {}),
                         "upload": upload is not None, "accept": accept}
        self._upload = upload
        self._optional = optional
        self._convert = convert
        self._python = python
        self._temp_dir = temp_dir
        self.name = name or f"{method} {path}"
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._folder: Path | None = None
        self._finished = False
        self._cancelled = False
        self._outcome: tuple[bool, Any] | None = None  # (ok, value or error), once read
        self.started_at: float | None = None

    def __repr__(self) -> str:
        return f"ProcessTransfer({self.name!r}, pid={self.pid})"

    @property
    def pid(self) -> int | None:
        """The helper's process id once started."""
        return self._process.pid if self._process is not None else None

    @property
    def folder(self) -> Path | None:
        """The transfer's private temporary folder while it exists."""
        return self._folder

    def start(self) -> None:
        """Spawn the helper (once; :meth:`step` calls this). Does not wait for the network.

        Raises:
            ClientError: the helper could not be started (the folder is removed).
        """
        with self._lock:
            if self._process is not None or self._cancelled or self._finished:
                return
            folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self._temp_dir))
            self._folder = folder
            try:
                if self._upload is not None:
                    (folder / _UPLOAD).write_bytes(self._upload)
                    self._upload = None
                log = open(folder / _LOG, "wb")  # noqa: SIM115 - handed to the child, closed below
                try:
                    kwargs: dict[str, Any] = {"creationflags": CREATE_NO_WINDOW} if os.name == "nt" else {}
                    library = str(Path(__file__).resolve().parent.parent)
                    self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and code
                        [self._python or helper_python(), "-c", _BOOT, library], stdin=subprocess.PIPE,
                        stdout=subprocess.DEVNULL, stderr=log, **kwargs)
                finally:
                    log.close()
                self.started_at = time.monotonic()
                assert self._process.stdin is not None
                try:
                    self._process.stdin.write(json.dumps({**self._request, "folder": str(folder)}).encode("utf-8"))
                    self._process.stdin.close()
                except OSError:  # the helper died at once: step() reports its exit
                    pass
            except OSError as exc:
                self._remove_folder()
                raise ClientError(f"could not start the transfer helper for {self.name}: {exc}") from exc
        logger.debug("transfer %s: helper %s started", self.name, self.pid)

    def step(self) -> bool:
        """Start the helper if needed and say whether it finished. Never blocks on the network.

        Returns:
            ``True`` once :meth:`result` can be read without waiting (also after :meth:`cancel`).
        """
        if self._finished or self._cancelled:
            return True
        if self._process is None:
            self.start()
        process = self._process
        if process is None or process.poll() is None:
            return self._cancelled
        self._finished = True
        return True

    def result(self) -> Any:
        """The transfer's result (the converted answer; ``None`` for an absent optional file). Call after
        :meth:`step` returned ``True``; reads and then removes the temporary folder.

        Raises:
            ClientError (and subclasses): the typed error the request raised, or the helper's failure.
            RuntimeError: not finished yet, or cancelled.
        """
        with self._lock:
            if self._outcome is None:
                if self._cancelled:
                    raise RuntimeError(f"transfer {self.name} was cancelled")
                if not self._finished:
                    raise RuntimeError(f"transfer {self.name} has not finished")
                try:
                    self._outcome = self._read_outcome()
                finally:
                    self._remove_folder()
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def _read_outcome(self) -> tuple[bool, Any]:
        assert self._folder is not None and self._process is not None
        result_path = self._folder / _RESULT
        if not result_path.exists():
            log = (self._folder / _LOG).read_bytes()[-2000:].decode("utf-8", "replace").strip()
            return False, ClientError(f"the transfer helper for {self.name} exited with status "
                                      f"{self._process.returncode} without a result" + (f": {log}" if log else ""))
        answer = json.loads(result_path.read_text(encoding="utf-8"))
        if not answer.get("ok"):
            error = _error_from_json(answer.get("error") or {})
            if self._optional and is_absent(error):
                logger.debug("transfer %s: absent (%s)", self.name, error)
                return True, None
            return False, error
        download = Download(data=(self._folder / _ANSWER).read_bytes(), filename=str(answer.get("filename") or ""))
        if self.started_at is not None:
            logger.debug("transfer %s: %d bytes in %.2f s", self.name, len(download.data),
                         time.monotonic() - self.started_at)
        try:
            return True, (self._convert(download) if self._convert is not None else download)
        except ClientError as exc:
            return False, exc

    def cancel(self) -> None:
        """Kill the helper if it runs, reap it, remove the temporary folder. Idempotent; any thread."""
        with self._lock:
            if self._outcome is None:
                self._cancelled = True
            process = self._process
            if process is not None and process.poll() is None:
                process.kill()
                try:
                    process.wait(timeout=5.0)
                except subprocess.TimeoutExpired:  # pragma: no cover - a killed process is reaped at once
                    logger.warning("transfer helper %s did not exit after SIGKILL", process.pid)
            self._remove_folder()

    def _remove_folder(self) -> None:
        folder, self._folder = self._folder, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def download_file(client: ActiveSegClient, kind: str, case_id: str, **options: Any) -> ProcessTransfer:
    """A case file's download by a helper process (not started yet; :meth:`ProcessTransfer.step` starts it).

    Args:
        client: the backend's client.
        kind: ``image``, ``label``, ``pseudo``, ``prediction`` or ``uncertainty`` (the last two are optional:
            their result is ``None`` when the case has none, as with the client's ``download_*``).
        case_id: the case.
        **options: ``timeout_s``, ``python``, ``temp_dir`` of :class:`ProcessTransfer`.

    Returns:
        the transfer; its result is a :class:`~ActiveSegLib.client.Download` (or ``None``).
    """
    from .client import OPTIONAL_FILES

    return ProcessTransfer(client, "GET", file_path(kind, case_id), optional=kind in OPTIONAL_FILES,
                           name=f"{kind} of {case_id}", **options)


def upload_label(client: ActiveSegClient, case_id: str, data: bytes, annotator: str, *, no_finding: bool = False,
                 file_format: str = ".seg.nrrd", **options: Any) -> ProcessTransfer:
    """:meth:`ActiveSegClient.submit_label` by a helper process; its result is the :class:`Case` answered.

    Raises:
        ValueError: an unsupported ``file_format`` (at once, before anything is spawned).
    """
    path, params = client.label_upload(case_id, annotator, no_finding=no_finding, file_format=file_format)
    return ProcessTransfer(client, "PUT", path, params=params, upload=bytes(data),
                           convert=lambda answer: client.uploaded_case(answer.data), name=f"label of {case_id}",
                           accept="application/json", **options)
