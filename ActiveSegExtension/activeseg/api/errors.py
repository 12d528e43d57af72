"""JSON error bodies ``{"error": {"code", "message"}}`` for every failure, and the OpenAPI entries describing them."""

from __future__ import annotations

import errno
import logging
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from activeseg.errors import ActiveSegError, StorageError, StorageFullError, StorageReadOnlyError, StoreLockedError
from activeseg.io.atomic import storage_error
from .schemas import ErrorOut

__all__ = ["ERROR_RESPONSES", "error_response", "install_error_handlers", "sqlite_error"]

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}

# Documented on every route, so clients (and schemathesis) know error bodies share one schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "malformed input (e.g. a case id that could be read as a path)"},
    401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
    404: {"model": ErrorOut, "description": "unknown case, job or model version"},
    409: {"model": ErrorOut, "description": "the current state does not allow this (lease, job running, ...)"},
    403: {"model": ErrorOut, "description": "no-token mode: a request from another site or addressed to another host"},
    408: {"model": ErrorOut, "description": "the request body stalled (nothing received for the idle timeout)"},
    413: {"model": ErrorOut, "description": "request body above the route's limit"},
    415: {"model": ErrorOut, "description": "a POST body that is not application/json"},
    422: {"model": ErrorOut, "description": "invalid parameters or an invalid uploaded file"},
    503: {"model": ErrorOut, "description": "the datastore is read-only or locked by another process; retry later"},
    507: {"model": ErrorOut, "description": "no space left on the datastore's disk; nothing was changed"},
}

_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# Seconds a client should wait before retrying a 503 (a lock held by another process is usually short).
RETRY_AFTER_S = 5


def sqlite_error(exc: sqlite3.OperationalError) -> StorageError | None:
    """The typed error of an SQLite failure caused by the environment (lock, read-only, full), else None."""
    text = str(exc).lower()
    if "locked" in text or "busy" in text:
        return StoreLockedError("the datastore's database is locked by another process (a job, the CLI or another "
                                "server); nothing was changed, retry in a few seconds")
    if "readonly" in text or "read-only" in text:
        return StorageReadOnlyError("the datastore's database is read-only; nothing was changed")
    if "full" in text:
        return StorageFullError("no space left on the datastore's disk (database); nothing was changed. "
                                "Free some space and retry.")
    if "unable to open database" in text:
        return StorageReadOnlyError("the datastore's database cannot be opened for writing; nothing was changed")
    return None


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error response."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for item in exc.errors()[:5]:
        where = ".".join(str(p) for p in item.get("loc", ()))
        parts.append(f"{where}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map engine exceptions, validation errors and HTTP errors to the JSON error body."""

    @app.exception_handler(ActiveSegError)
    async def _engine_error(_: Request, exc: ActiveSegError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.http_status == 503 else None
        if isinstance(exc, StorageError):
            logger.error("storage fault: %s", exc)
        return error_response(exc.http_status, exc.code, str(exc), headers)

    @app.exception_handler(sqlite3.OperationalError)
    async def _database_error(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        typed = sqlite_error(exc)
        if typed is None:
            return await _unexpected(request, exc)
        return await _engine_error(request, typed)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno not in _STORAGE_ERRNOS:
            return await _unexpected(request, exc)
        logger.warning("file-system error on %s %s: %s", request.method, request.url.path, exc)
        return await _engine_error(request, storage_error(exc, "the datastore"))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", _describe_validation(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")
