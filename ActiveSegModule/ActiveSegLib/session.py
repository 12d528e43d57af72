"""The Logic's "Backend" section: one connection to a backend, remote or started locally. No Qt, no MRML work.

:class:`BackendSession` owns what the other sections share: the MRML context, the HTTP client, the backend's
info and label set, and the local backend's process. Every method that talks to the backend blocks: run it on a
worker thread (:class:`ActiveSegLib.worker.BackgroundTasks`); only :attr:`labels` is read on the main thread, and
it never fetches (a section that needs labels before they are known raises instead of blocking the UI).

Bulk transfers (case images, labels, predictions, maps; label uploads) go through :meth:`BackendSession.download`
and :meth:`BackendSession.upload_label`. With ``bulk_transfers="thread"`` (scripts, tests, plain Python) they
run on the calling thread and return the value; with ``"process"`` (inside Slicer, where worker threads crawl: see
:mod:`ActiveSegLib.transfer`) they return a :class:`~ActiveSegLib.transfer.ProcessTransfer` that the poll timer
advances and that :func:`~ActiveSegLib.worker.settle` waits for.

Local backends are tracked from the moment their process is spawned, so Stop (or closing Slicer) during the
start-up wait ends them, and a second Start for the same interpreter and datastore joins the one already
starting or running instead of spawning another.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Literal

from . import mrml
from . import transfer
from .client import ActiveSegClient, Download
from .errors import BackendStartError, ClientError
from .launcher import BackendLauncher
from .responses import Case, Info

__all__ = ["BackendSession"]

logger = logging.getLogger(__name__)


class BackendSession:
    """Connection state shared by the Logic's sections.

    Args:
        context: scene and segmentations logic; ``None``: :meth:`MrmlContext.from_slicer` on first use (Slicer).
        env: environment for a local backend process (inside Slicer pass ``slicer.util.startupEnvironment()``,
            so the backend's Python does not inherit Slicer's ``PYTHONHOME``); ``None``: this process's, cleaned.
        timeout_s: HTTP timeout of the client made by :meth:`connect`, seconds.
        bulk_transfers: ``"thread"``: downloads and uploads run on the calling thread; ``"process"``: by helper
            processes (:mod:`ActiveSegLib.transfer`), returned as deferred values.
        transfer_temp_dir: where ``"process"`` transfers keep their files; default: the system's temporary folder.
    """

    def __init__(self, context: mrml.MrmlContext | None = None, *, env: Mapping[str, str] | None = None,
                 timeout_s: float = 30.0, bulk_transfers: Literal["thread", "process"] = "thread",
                 transfer_temp_dir: str | None = None) -> None:
        if bulk_transfers not in ("thread", "process"):
            raise ValueError(f"bulk_transfers must be 'thread' or 'process', got {bulk_transfers!r}")
        self._context = context
        self.env = dict(env) if env is not None else None
        self.timeout_s = float(timeout_s)
        self.bulk_transfers = bulk_transfers
        self.transfer_temp_dir = transfer_temp_dir
        self._client: ActiveSegClient | None = None
        self._lock = threading.Lock()  # guards launcher and client against Start/Stop from two threads
        self.launcher: BackendLauncher | None = None
        self._spawning: BackendLauncher | None = None
        self.info: Info | None = None
        self.labels: dict[int, str] = {}
        #: class value -> RGB in [0, 1] chosen in the datastore (``activeseg init --set label_colours.N=...``).
        self.label_colours: dict[int, tuple[float, float, float]] = {}

    @property
    def context(self) -> mrml.MrmlContext:
        """The MRML scene and logics (Slicer's own when none was given)."""
        if self._context is None:
            self._context = mrml.MrmlContext.from_slicer()
        return self._context

    @property
    def client(self) -> ActiveSegClient:
        """The connected backend's client.

        Raises:
            ClientError: :meth:`connect` or :meth:`start_local_backend` was not called.
        """
        client = self._client
        if client is None:
            raise ClientError("not connected to a backend: connect to a URL or start a local backend first")
        return client

    @property
    def connected(self) -> bool:
        """Whether a backend was connected (it may have stopped since)."""
        return self._client is not None

    def require_labels(self) -> dict[int, str]:
        """The class labels (value -> name), known since :meth:`connect`. Never touches the network.

        Raises:
            ClientError: not connected yet.
        """
        if not self.labels:
            raise ClientError("the backend's label set is not known yet: connect to a backend first")
        return self.labels

    def connect(self, url: str, token: str | None = None) -> Info:
        """Connect to a running backend and read its ``/v1/info``. Network; worker thread.

        Args:
            url: e.g. ``http://gpu-server:8000`` or the local backend's URL.
            token: bearer token, if the backend requires one.

        Raises:
            ValueError: a malformed URL. BackendUnavailableError: nothing answers. AuthenticationError: 401.
        """
        client = ActiveSegClient(url, token=token or None, timeout_s=self.timeout_s)
        info = client.info()
        self._client = client
        self._set_info(info)
        logger.info("connected to ActiveSeg backend %s at %s (%s)", info.version, client.base_url, info.device)
        return info

    def _set_info(self, info: Info) -> None:
        self.info = info
        self.labels = dict(info.labels)
        self.label_colours = dict(info.label_colours)

    def refresh_info(self) -> Info:
        """Re-read ``/v1/info`` (counts, active model, running job). Network; worker thread."""
        info = self.client.info()
        self._set_info(info)
        return info

    def download(self, kind: str, case_id: str) -> Download | None | transfer.ProcessTransfer:
        """One of a case's files. Network (``"thread"``: blocks; ``"process"``: returns the unstarted transfer).

        Args:
            kind: ``image``, ``label``, ``pseudo``, ``prediction`` or ``uncertainty``; the last two give ``None``
                when the case has none.

        Raises:
            ClientError: the typed errors of :class:`ActiveSegClient` (``"process"``: from the transfer's result).
        """
        client = self.client
        if self.bulk_transfers == "process":
            return transfer.download_file(client, kind, case_id, temp_dir=self.transfer_temp_dir)
        method = getattr(client, f"download_{kind}")
        return method(case_id)

    def upload_label(self, case_id: str, data: bytes, annotator: str, *, no_finding: bool = False,
                     file_format: str = ".nii.gz", timeout_s: float | None = None) -> Case | transfer.ProcessTransfer:
        """``PUT`` a label file (see :meth:`ActiveSegClient.submit_label`). Network (``"thread"``: blocks and returns
        the case; ``"process"``: returns the unstarted transfer whose result is the case)."""
        client = self.client
        if self.bulk_transfers == "process":
            return transfer.upload_label(client, case_id, data, annotator, no_finding=no_finding,
                                         file_format=file_format, timeout_s=timeout_s,
                                         temp_dir=self.transfer_temp_dir)
        return client.submit_label(case_id, data, annotator, no_finding=no_finding, file_format=file_format,
                                   timeout_s=timeout_s)

    def start_local_backend(self, python: str, data_dir: str, token: str | None = None,
                            timeout_s: float = 120.0) -> Info:
        """Start ``python -m activeseg serve --data data_dir`` on loopback (free port) and connect to it.

        Idempotent: while a backend for the same ``python`` and ``data_dir`` is starting or running, this joins it
        (waits for its URL) instead of spawning another; a backend for another folder is stopped first. The
        launcher is kept from the moment of spawning, so :meth:`stop_local_backend` during start-up ends it.
        Blocks until the backend announces its URL (torch import: seconds); worker thread.

        Args:
            python: the backend environment's interpreter.
            data_dir: an initialised datastore folder (``activeseg init``).
            token: optional bearer token (passed to the process in its environment, never on its command line).
            timeout_s: how long to wait for start-up, seconds.

        Raises:
            BackendStartError: the process could not start, exited, or was stopped while starting.
        """
        with self._lock:
            launcher = self.launcher
            reuse = (launcher is not None and launcher.python == python and launcher.data_dir == data_dir
                     and launcher.token == (token or None) and not launcher.stop_requested
                     and (launcher.starting or launcher.running or launcher is self._spawning))
            if not reuse:
                self._stop_locked()
                launcher = BackendLauncher(python, data_dir, token=token or None, env=self.env)
                self.launcher = self._spawning = launcher  # tracked before the process exists
        assert launcher is not None
        try:
            url = launcher.wait_ready(timeout_s=timeout_s) if reuse else launcher.start(timeout_s=timeout_s)
        finally:
            if self._spawning is launcher and not reuse:
                self._spawning = None
        try:
            return self.connect(url, token)
        except ClientError:
            self.stop_local_backend()
            raise

    def stop_local_backend(self) -> None:
        """Stop the local backend's process tree, if this session started one (also while it is starting;
        safe to call repeatedly and from any thread)."""
        with self._lock:
            self._stop_locked()

    def _stop_locked(self) -> None:
        launcher, self.launcher = self.launcher, None
        if launcher is None:
            return
        if self._client is not None and launcher.url and self._client.base_url == launcher.url.rstrip("/"):
            self._client = None
        try:
            launcher.stop()
        except BackendStartError as exc:  # the tree could not be ended: say so, keep going
            logger.error("stopping the local backend failed: %s", exc)
