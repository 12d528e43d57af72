"""HTTP client of the ActiveSeg backend's ``/v1`` API. Stdlib only (``urllib``), so it runs in Slicer's Python.

Every call blocks: inside Slicer run it off the main thread (:class:`ActiveSegLib.worker.BackgroundTasks`), and
large files in a helper process (:mod:`ActiveSegLib.transfer`, which runs :meth:`ActiveSegClient.stream`). The
protocol is the backend's OpenAPI (``GET /v1/openapi.json``) plus the example bodies under
``Testing/fixtures/api/``; this file is written against those, never copied from the server.

Answers are typed (:mod:`ActiveSegLib.responses`: :class:`Info`, :class:`Case`, :class:`Job`...), parsed from
the JSON as it arrives. Errors are typed (:mod:`ActiveSegLib.errors`):
    * :class:`BackendUnavailableError`: connection refused, unknown host, timeout; nothing was answered.
    * :class:`AuthenticationError`: 401, a missing or wrong bearer token.
    * :class:`BackendRequestError`: any other HTTP error, carrying the backend's ``{"error": {"code", "message"}}``.
    * :class:`ProtocolError`: an answer that lacks a field the protocol promises.

Images and labels travel as file bytes (NIfTI / NRRD / ``.seg.nrrd``), whose headers carry the geometry in LPS;
turning them into RAS MRML nodes is :mod:`ActiveSegLib.mrml`'s job.

Example:
    >>> client = ActiveSegClient("http://127.0.0.1:8000", token=None)   # doctest: +SKIP
    >>> client.info().labels                                             # doctest: +SKIP
    {1: 'lung', 2: 'lesion'}
"""

from __future__ import annotations

import email.message
import ipaddress
import json
import logging
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, BinaryIO

from .errors import AuthenticationError, BackendRequestError, BackendUnavailableError, ClientError, ProtocolError
from .protocol import API_PREFIX, UPLOAD_FORMATS, file_suffix
from .responses import Activation, Case, CaseList, CurvePoint, Info, Job, ModelList, ModelVersion, Queue

__all__ = ["ActiveSegClient", "Download", "CHUNK_BYTES", "OPTIONAL_FILES", "file_path", "is_absent"]

logger = logging.getLogger(__name__)

_JSON = "application/json"
_BINARY = "application/octet-stream"

#: Bytes per read/write when a body is streamed to or from a file (1 MiB).
CHUNK_BYTES = 1 << 20

#: The case files a case may lack without that being an error (the download gives ``None``).
OPTIONAL_FILES: tuple[str, ...] = ("prediction", "uncertainty")


def file_path(kind: str, case_id: str) -> str:
    """The API path (below ``/v1``) of one of a case's files.

    Args:
        kind: ``image``, ``label``, ``pseudo``, ``prediction`` or ``uncertainty``.
        case_id: the case (escaped here).

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind not in ("image", "label", "pseudo") + OPTIONAL_FILES:
        raise ValueError(f"unknown case file {kind!r}")
    return f"/cases/{_quote(case_id)}/{kind}"


def is_absent(exc: BaseException) -> bool:
    """Whether an error of an optional file's download means "the case has none": 409 (none written), 405 or
    404 ``not_found`` (an older backend without the route). An unknown case (404 ``unknown_case``) is not."""
    return isinstance(exc, BackendRequestError) and (
        (exc.status == 404 and exc.code == "not_found") or exc.status in (405, 409))


@dataclass(frozen=True)
class Download:
    """A downloaded file.

    Attributes:
        data: the file's bytes.
        filename: the name the backend gave (``Content-Disposition``), e.g. ``phantom_003.nii.gz``; its suffix
            tells the format. Empty when the backend sent none.
    """

    data: bytes
    filename: str

    @property
    def suffix(self) -> str:
        """The format suffix of :attr:`filename`: ``.seg.nrrd``, ``.nii.gz``, ``.nii``, ``.nrrd`` or ``""``."""
        return file_suffix(self.filename)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _quote(segment: str) -> str:
    """One URL path segment, escaped (a case id containing ``/`` must not walk the path)."""
    return urllib.parse.quote(str(segment), safe="")


def _filename(headers: email.message.Message) -> str:
    disposition = headers.get("Content-Disposition", "")
    if not disposition:
        return ""
    parsed = email.message.Message()
    parsed["Content-Disposition"] = disposition
    name = parsed.get_filename() or ""
    return name.replace("/", "_").replace("\\", "_")  # a name, never a path


class ActiveSegClient:
    """Blocking client of one backend.

    Thread-safe: every call opens its own connection, so worker threads may share one client.

    Args:
        base_url: the backend's root, e.g. ``http://127.0.0.1:41234`` (a trailing ``/v1`` is tolerated).
        token: bearer token sent as ``Authorization: Bearer <token>``; ``None`` or empty: none sent.
        timeout_s: seconds to wait to connect and for each read (downloads of large volumes may need more).

    Raises:
        ValueError: ``base_url`` is not an ``http(s)://host[:port]`` URL, or ``timeout_s`` is not positive.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        url = (base_url or "").strip().rstrip("/")
        if url.endswith(API_PREFIX):
            url = url[: -len(API_PREFIX)]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend URL must look like http://host:port, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.base_url = url
        self.token = token or None
        self.timeout_s = float(timeout_s)
        # A loopback backend never goes through an HTTP proxy from the environment (it could not reach it).
        handlers: list[urllib.request.BaseHandler] = []
        if _is_loopback(parts.hostname):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"ActiveSegClient({self.base_url!r}, token={'***' if self.token else None})"

    # ------------------------------------------------------------------ transport

    def _url(self, path: str, params: dict[str, Any] | None = None) -> str:
        url = f"{self.base_url}{API_PREFIX}{path}"
        if params:
            query = {k: ("true" if v is True else "false" if v is False else v) for k, v in params.items()
                     if v is not None}
            if query:
                url += "?" + urllib.parse.urlencode(query)
        return url

    def _send(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              body: bytes | BinaryIO | None = None, content_type: str | None = None, accept: str = _JSON,
              timeout_s: float | None = None, sink: BinaryIO | None = None) -> tuple[bytes, email.message.Message]:
        """One request; returns (body, headers) of a 2xx answer or raises a typed :class:`ClientError`.

        Args:
            body: the request body: bytes, or a seekable binary file sent from its current position to its end
                (in chunks, never whole in memory).
            sink: a binary file the answer's body is copied into in :data:`CHUNK_BYTES` chunks (then the returned
                body is ``b""``); ``None``: the body is read into memory.
        """
        url = self._url(path, params)
        request = urllib.request.Request(url, data=body, method=method)
        request.add_header("Accept", accept)
        if content_type:
            request.add_header("Content-Type", content_type)
        if body is not None and not isinstance(body, (bytes, bytearray)):
            request.add_header("Content-Length", str(os.fstat(body.fileno()).st_size - body.tell()))
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        logger.debug("%s %s", method, url)
        try:
            with self._opener.open(request, timeout=timeout) as response:
                if sink is None:
                    return response.read(), response.headers
                shutil.copyfileobj(response, sink, CHUNK_BYTES)
                return b"", response.headers
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, url) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise BackendUnavailableError(f"backend at {self.base_url} did not answer within {timeout:g} s",
                                              url) from exc
            raise BackendUnavailableError(f"cannot reach the backend at {self.base_url}: {reason}", url) from exc
        except (TimeoutError, socket.timeout) as exc:  # read timeout after connecting
            raise BackendUnavailableError(f"backend at {self.base_url} did not answer within {timeout:g} s",
                                          url) from exc
        except (ConnectionError, OSError) as exc:  # reset mid-answer, backend stopped
            raise BackendUnavailableError(f"connection to the backend at {self.base_url} failed: {exc}", url) from exc

    @staticmethod
    def _http_error(exc: urllib.error.HTTPError, url: str) -> BackendRequestError:
        status = exc.code
        try:
            raw = exc.read()
        except OSError:
            raw = b""
        finally:
            exc.close()
        code, message = "http_error", ""
        try:
            payload = json.loads(raw.decode("utf-8"))
            error = payload.get("error") if isinstance(payload, dict) else None
            if isinstance(error, dict):
                code = str(error.get("code") or code)
                message = str(error.get("message") or "")
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        if not message:
            excerpt = raw[:200].decode("utf-8", "replace").strip()
            message = f"HTTP {status} {exc.reason}" + (f": {excerpt}" if excerpt else "")
        error_class = AuthenticationError if status == 401 else BackendRequestError
        return error_class(status, code, message, url)

    def _json(self, method: str, path: str, *, params: dict[str, Any] | None = None,
              payload: Any = None, timeout_s: float | None = None) -> Any:
        body = json.dumps(payload).encode("utf-8") if payload is not None else None
        data, _ = self._send(method, path, params=params, body=body,
                             content_type=_JSON if body is not None else None, timeout_s=timeout_s)
        if not data:
            return None
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ClientError(f"backend answered {method} {path} with a body that is not JSON: {exc}") from exc

    def _download(self, path: str, params: dict[str, Any] | None = None,
                  timeout_s: float | None = None) -> Download:
        data, headers = self._send("GET", path, params=params, accept=_BINARY, timeout_s=timeout_s)
        return Download(data=data, filename=_filename(headers))

    def stream(self, method: str, path: str, sink: BinaryIO, *, params: dict[str, Any] | None = None,
               source: BinaryIO | None = None, accept: str = _BINARY, timeout_s: float | None = None) -> str:
        """One request whose bodies stream between files (what the transfer helper process runs).

        Args:
            method: ``GET`` (a download) or ``PUT`` (an upload).
            path: below ``/v1``, e.g. :func:`file_path` ``("image", case_id)``.
            sink: binary file that receives the answer's body.
            params: query parameters.
            source: binary file sent as the request body (``application/octet-stream``), or ``None``.
            accept: the ``Accept`` header.
            timeout_s: override the client's timeout (seconds to connect and for each read).

        Returns:
            the file name the backend gave (``Content-Disposition``), or ``""``.

        Raises:
            ClientError: the typed errors of every other call.
        """
        _, headers = self._send(method, path, params=params, body=source,
                                content_type=_BINARY if source is not None else None, accept=accept,
                                timeout_s=timeout_s, sink=sink)
        return _filename(headers)

    # ------------------------------------------------------------------ info

    def health(self, timeout_s: float | None = None) -> str:
        """``GET /v1/health``: ``"ok"`` while the backend runs (cheap; use a short timeout)."""
        answer = self._json("GET", "/health", timeout_s=timeout_s)
        if not isinstance(answer, dict) or not isinstance(answer.get("status"), str):
            raise ProtocolError(f"backend's health answer lacks 'status': {answer!r}"[:300])
        return str(answer["status"])

    def info(self) -> Info:
        """``GET /v1/info``: version, device, ``labels`` (value -> name), active model, counts per state,
        running job id, ``auth_required``, ``max_upload_bytes``."""
        return Info.from_json(self._json("GET", "/info"))

    # ------------------------------------------------------------------ cases and queue

    def cases(self, state: str | None = None, split: str | None = None) -> CaseList:
        """``GET /v1/cases``: the cases by id (and the active model), optionally filtered by state / split."""
        return CaseList.from_json(self._json("GET", "/cases", params={"state": state, "split": split}))

    def case(self, case_id: str) -> Case:
        """``GET /v1/cases/{id}``: one case (state, scores, lease holder, ``has_pseudo``...)."""
        return Case.from_json(self._json("GET", f"/cases/{_quote(case_id)}"))

    def queue(self) -> Queue:
        """``GET /v1/queue``: the strong queue, most uncertain first."""
        return Queue.from_json(self._json("GET", "/queue"))

    def lease_next(self, annotator: str) -> Case | None:
        """``POST /v1/queue/next``: lease the most uncertain free case to ``annotator``.

        Returns:
            the leased case, or ``None`` when the queue is empty or every queued case is leased by others.
        """
        answer = self._json("POST", "/queue/next", params={"annotator": annotator})
        case = answer.get("case") if isinstance(answer, dict) else None
        return Case.from_json(case) if case is not None else None

    def lease(self, case_id: str, annotator: str, reopen: bool = False) -> Case:
        """``POST /v1/cases/{id}/lease``: lease (or renew) one case. 409 ``leased`` if someone else holds it.
        ``reopen``: also a labelled or accepted case, to edit its label."""
        params: dict[str, str] = {"annotator": annotator}
        if reopen:
            params["reopen"] = "true"
        return Case.from_json(self._json("POST", f"/cases/{_quote(case_id)}/lease", params=params))

    def release(self, case_id: str, annotator: str) -> Case:
        """``DELETE /v1/cases/{id}/lease``: give a lease back."""
        return Case.from_json(self._json("DELETE", f"/cases/{_quote(case_id)}/lease",
                                         params={"annotator": annotator}))

    def skip(self, case_id: str, annotator: str) -> Case:
        """``POST /v1/cases/{id}/skip``: give the lease back; ``lease_next`` serves ``annotator`` every other case
        before this one again. 409 ``leased`` if someone else holds it."""
        return Case.from_json(self._json("POST", f"/cases/{_quote(case_id)}/skip", params={"annotator": annotator}))

    # ------------------------------------------------------------------ files

    def download_image(self, case_id: str, timeout_s: float | None = None) -> Download:
        """``GET /v1/cases/{id}/image``: the image file as stored (NIfTI or NRRD; see :attr:`Download.suffix`)."""
        return self._download(file_path("image", case_id), timeout_s=timeout_s)

    def download_label(self, case_id: str, timeout_s: float | None = None) -> Download:
        """``GET /v1/cases/{id}/label``: the expert/accepted label as ``.seg.nrrd``. 409 when there is none."""
        return self._download(file_path("label", case_id), timeout_s=timeout_s)

    def download_pseudo(self, case_id: str, timeout_s: float | None = None) -> Download:
        """``GET /v1/cases/{id}/pseudo``: the pending pseudo-label as ``.seg.nrrd``. 409 when there is none."""
        return self._download(file_path("pseudo", case_id), timeout_s=timeout_s)

    def download_prediction(self, case_id: str, timeout_s: float | None = None) -> Download | None:
        """The active model's prediction for a case as ``.seg.nrrd``, to start editing from.

        ``GET /v1/cases/{id}/prediction``: kept by ranking for queued cases. Returns ``None`` when the case has
        no prediction of the active model (409), or an older backend lacks the route (404 ``not_found``). An
        unknown case still raises (404 ``unknown_case``).

        Returns:
            the prediction, or ``None`` when the backend offers none.
        """
        return self._download_optional("prediction", case_id, timeout_s)

    def download_uncertainty(self, case_id: str, timeout_s: float | None = None) -> Download | None:
        """The case's voxel-wise uncertainty map (uint8 percent NRRD in the image's geometry), if ranking wrote one.

        ``GET /v1/cases/{id}/uncertainty``. Returns ``None`` when the case has no map (409) or an older backend
        lacks the route (404 ``not_found``). An unknown case still raises (404 ``unknown_case``).
        """
        return self._download_optional("uncertainty", case_id, timeout_s)

    def _download_optional(self, kind: str, case_id: str, timeout_s: float | None) -> Download | None:
        try:
            return self._download(file_path(kind, case_id), timeout_s=timeout_s)
        except BackendRequestError as exc:
            if is_absent(exc):
                logger.debug("no %s for %s: %s", kind, case_id, exc)
                return None
            raise

    def submit_label(self, case_id: str, data: bytes, annotator: str, *, no_finding: bool = False,
                     file_format: str = ".seg.nrrd", timeout_s: float | None = None) -> Case:
        """``PUT /v1/cases/{id}/label``: submit an expert label (also: edit-and-submit a pseudo-label).

        Args:
            case_id: the case.
            data: the label file's bytes, on exactly the case image's grid.
            annotator: who labelled it (must hold the lease if anyone does).
            no_finding: the case has nothing to segment; an all-background label is intended.
            file_format: ``.seg.nrrd`` (default), ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.dcm`` (a DICOM SEG over the
                case's series, for cases imported from DICOM; the backend also recognises one by its content).
            timeout_s: override the client's timeout (the backend validates the file before answering).

        Returns:
            the case after submission (``state`` ``labeled``).

        Raises:
            ValueError: an unsupported ``file_format``.
            BackendRequestError: 409 leased by someone else, 422 invalid label (geometry, values, empty), ...
        """
        path, params = self.label_upload(case_id, annotator, no_finding=no_finding, file_format=file_format)
        body, _ = self._send("PUT", path, body=bytes(data), content_type=_BINARY, params=params, timeout_s=timeout_s)
        return self.uploaded_case(body)

    @staticmethod
    def label_upload(case_id: str, annotator: str, *, no_finding: bool = False,
                     file_format: str = ".seg.nrrd") -> tuple[str, dict[str, Any]]:
        """The path and query of :meth:`submit_label`'s ``PUT`` (shared with the helper-process upload).

        Raises:
            ValueError: an unsupported ``file_format``.
        """
        if file_format not in UPLOAD_FORMATS:
            raise ValueError(f"file_format must be one of {UPLOAD_FORMATS}, got {file_format!r}")
        return (f"/cases/{_quote(case_id)}/label",
                {"annotator": annotator, "no_finding": bool(no_finding), "format": file_format})

    @staticmethod
    def uploaded_case(body: bytes) -> Case:
        """The case the backend answered a label upload with.

        Raises:
            ClientError: the body is not JSON. ProtocolError: it lacks a field of a case.
        """
        try:
            return Case.from_json(json.loads(body.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ClientError(f"backend answered the label upload with a body that is not JSON: {exc}") from exc

    def accept_pseudo(self, case_id: str) -> Case:
        """``POST /v1/cases/{id}/pseudo/accept``: the pseudo-label becomes the case's label (state ``accepted``)."""
        return Case.from_json(self._json("POST", f"/cases/{_quote(case_id)}/pseudo/accept"))

    def reject_pseudo(self, case_id: str) -> Case:
        """``POST /v1/cases/{id}/pseudo/reject``: drop the pseudo-label (state ``rejected``)."""
        return Case.from_json(self._json("POST", f"/cases/{_quote(case_id)}/pseudo/reject"))

    # ------------------------------------------------------------------ jobs

    def start_train(self, *, then_rank: bool = True, write_pseudo: bool = True) -> Job:
        """``POST /v1/jobs/train`` (202): start a training round. 409 ``job_running`` if a job runs.

        Args:
            then_rank: rank the cases with the new model when training ends (refreshes queue and pseudo-labels).
            write_pseudo: with ``then_rank``, also rebuild the pseudo-label set.

        Returns:
            the job (``job_id``, ``status`` ``running``, ``progress``...).
        """
        return Job.from_json(self._json("POST", "/jobs/train", payload={"then_rank": bool(then_rank),
                                                                        "write_pseudo": bool(write_pseudo)}))

    def start_rank(self, *, write_pseudo: bool = True) -> Job:
        """``POST /v1/jobs/rank`` (202): score the pool with the active model, set the queue (and pseudo-labels)."""
        return Job.from_json(self._json("POST", "/jobs/rank", payload={"write_pseudo": bool(write_pseudo)}))

    def start_pseudo_label(self) -> Job:
        """``POST /v1/jobs/pseudo-label`` (202): rewrite the weak set's pseudo-labels with the active model."""
        return Job.from_json(self._json("POST", "/jobs/pseudo-label"))

    def job(self, job_id: str, log_lines: int = 20) -> Job:
        """``GET /v1/jobs/{id}``: status (running, succeeded, failed, cancelled, interrupted), ``progress``
        (phase, epoch/epochs, step/steps, loss, val_dice, eta_s, elapsed_s in seconds), log tail, error text."""
        return Job.from_json(self._json("GET", f"/jobs/{_quote(job_id)}", params={"log_lines": int(log_lines)}))

    def jobs(self, limit: int = 20) -> list[Job]:
        """``GET /v1/jobs``: recent jobs, newest first (without logs)."""
        answer = self._json("GET", "/jobs", params={"limit": int(limit)})
        return [Job.from_json(j) for j in (answer.get("jobs", []) if isinstance(answer, dict) else [])]

    def job_log(self, job_id: str, lines: int = 200) -> str:
        """``GET /v1/jobs/{id}/log``: the last ``lines`` lines of a job's log as text."""
        data, _ = self._send("GET", f"/jobs/{_quote(job_id)}/log", params={"lines": int(lines)}, accept="text/plain")
        return data.decode("utf-8", "replace")

    def cancel_job(self, job_id: str) -> Job:
        """``POST /v1/jobs/{id}/cancel`` (202): stop a job's process tree; poll :meth:`job` until ``cancelled``."""
        return Job.from_json(self._json("POST", f"/jobs/{_quote(job_id)}/cancel"))

    # ------------------------------------------------------------------ models

    def models(self) -> ModelList:
        """``GET /v1/models``: every model version (parent, creation time, metrics) and the active one."""
        return ModelList.from_json(self._json("GET", "/models"))

    def model(self, version: int) -> ModelVersion:
        """``GET /v1/models/{version}``: one model version. 404 ``model_version`` if unknown."""
        return ModelVersion.from_json(self._json("GET", f"/models/{int(version)}"))

    def activate_model(self, version: int, rank: bool = True) -> Activation:
        """``POST /v1/models/{version}/activate``: make an existing version active (rollback or roll forward).

        Args:
            version: the version.
            rank: when the queue is not that version's, start a ranking job with it (``Activation.rank_job``).

        Raises:
            BackendRequestError: 404 ``model_version`` (unknown), 409 ``job_running`` (nothing changed).
        """
        return Activation.from_json(self._json("POST", f"/models/{int(version)}/activate",
                                               params={"rank": bool(rank)}))

    def learning_curve(self) -> list[CurvePoint]:
        """``GET /v1/learning-curve``: one point per model version, oldest first (see :class:`CurvePoint`)."""
        answer = self._json("GET", "/learning-curve")
        points = answer.get("points") if isinstance(answer, dict) else None
        if not isinstance(points, list):
            raise ProtocolError("backend's learning curve lacks the list 'points'")
        return [CurvePoint.from_json(p) for p in points]
