"""What every router needs: the datastore, the job runner and the server's settings, one per app."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from fastapi import Request

from activeseg.store.datastore import CaseRecord, Datastore
from activeseg.jobs.runner import JobRunner, JobTable
from .hot_reads import HotReads
from .schemas import CaseOut, case_out

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "DEFAULT_MAX_DECODED_BYTES", "ServerContext", "get_context"]

DEFAULT_MAX_UPLOAD_BYTES = 1 << 30  # 1 GiB: far above a label file, still bounded
# Largest decoded voxel data of one upload, from its header (dimensions x type), checked before decoding:
# 1 GiB holds a 512 x 512 x 2000 int16 label, or a 512 x 512 x 1000 float32 one.
DEFAULT_MAX_DECODED_BYTES = 1 << 30


@dataclass
class ServerContext:
    """State shared by the requests of one server.

    Attributes:
        store: the datastore (thread-safe: each call opens its own SQLite transaction).
        jobs: starts and cancels job processes.
        table: the job table.
        token: bearer token every request must carry, or None (loopback only).
        max_upload_bytes: largest accepted upload body.
        max_decoded_bytes: largest decoded voxel data of an upload, bytes (from its header, before decoding).
        hot: the queue, case list and case views served from memory (:mod:`activeseg.api.hot_reads`).
    """

    store: Datastore
    jobs: JobRunner
    table: JobTable
    token: str | None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES
    hot: HotReads = field(init=False, repr=False)
    _device: str | None = field(default=None, repr=False)
    _device_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.hot = HotReads(self.store, self.display_names)

    def display_names(self) -> dict[str, str]:
        """Case id -> a name the annotator recognises, for the cases whose datastore records one (DICOM-derived:
        series description and study date); empty for a plain file datastore. One small query per call, so
        routers ask once per request. The names may identify a visit: they go into responses, never into logs."""
        from activeseg.store.dicom_index import DicomIndex  # pydicom: loaded on first use, not at server start

        return DicomIndex(self.store.meta_dir).display_names()

    def case_view(self, record: CaseRecord) -> CaseOut:
        """API view of one case: with its scores under the active model and its display name."""
        return case_out(record, self.store.scores().get(record.case_id), self.display_names().get(record.case_id))

    def device(self) -> str:
        """Where jobs run, detected once. Imports torch lazily: the server itself never needs it otherwise."""
        with self._device_lock:
            if self._device is None:
                self._device = _detect_device(self.store.config.training.device)
            return self._device


def _detect_device(setting: str) -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but keep info answering without it
        return "unknown (torch not importable)"
    if setting != "cpu" and torch.cuda.is_available():
        return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    return "cpu"


def get_context(request: Request) -> ServerContext:
    """FastAPI dependency: the app's :class:`ServerContext`."""
    return request.app.state.context
