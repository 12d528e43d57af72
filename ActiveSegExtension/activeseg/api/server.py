"""The backend process: a FastAPI app over one datastore, served by uvicorn (``activeseg serve``).

Start-up protocol: once the socket accepts connections the server writes exactly one line to stdout,
``ACTIVESEG_SERVER_URL=http://HOST:PORT``, and flushes it; launchers (the Slicer module) read that line to
learn the port when they asked for port 0. Everything else goes to the log (stderr).

Security: without a token the server binds to loopback only and refuses requests addressed to another host or
coming from another site (:mod:`activeseg.api.guards`); any other address needs ``--token`` and then every
request must carry ``Authorization: Bearer <token>``. Every request's headers must arrive within
``$ACTIVESEG_HEADER_TIMEOUT_S`` (10 s); its body is bounded, times out when idle (``$ACTIVESEG_BODY_IDLE_TIMEOUT_S``,
30 s) and, past that, when it arrives slower than ``$ACTIVESEG_MIN_BODY_RATE`` bytes/s on average (10 KiB/s).
Start-up refuses a read-only or locked datastore with one line on stderr (exit code 2).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from activeseg import __version__
from activeseg.api import build_router
from activeseg.api.auth import BearerTokenMiddleware
from activeseg.api.connection import DEFAULT_HEADER_TIMEOUT_S, protocol_with_header_timeout
from activeseg.api.context import DEFAULT_MAX_DECODED_BYTES, DEFAULT_MAX_UPLOAD_BYTES, ServerContext
from activeseg.api.errors import install_error_handlers, sqlite_error
from activeseg.api.guards import (
    DEFAULT_BODY_IDLE_TIMEOUT_S, DEFAULT_MAX_JSON_BYTES, DEFAULT_MIN_BODY_RATE, RequestGuardMiddleware,
)
from activeseg.io.atomic import TEMP_MARKER, storage_error
from activeseg.store.case_ids import CASE_ID_PATTERN
from activeseg.store.datastore import Datastore
from activeseg.store.sqlite_tx import set_lock_wait
from activeseg.errors import ActiveSegError, ConfigError, StorageError
from activeseg.jobs.runner import JobRunner, JobTable

__all__ = [
    "URL_LINE_PREFIX", "RECOVER_MIN_AGE_S", "STARTUP_LOCK_WAIT_S", "create_app", "check_bind_address",
    "check_store_writable", "serve",
]

logger = logging.getLogger(__name__)

URL_LINE_PREFIX = "ACTIVESEG_SERVER_URL="
# Left-over temp files younger than this are kept at start-up: a worker orphaned by a crash may still be
# about to rename one into place (it is killed, but the margin costs nothing).
RECOVER_MIN_AGE_S = 60.0
# How long start-up waits for another process's write lock on the database before giving up with one line.
STARTUP_LOCK_WAIT_S = 5.0
# How long a request waits for another process's database lock before answering 503 store_locked.
REQUEST_LOCK_WAIT_S = 5.0


def create_app(
    store_path: Path,
    token: str | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    recover: bool = True,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
    body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S,
    min_body_rate: float = DEFAULT_MIN_BODY_RATE,
) -> FastAPI:
    """Build the API application for the datastore at ``store_path``.

    Args:
        store_path: an initialised datastore folder.
        token: when set (non-empty), every request needs ``Authorization: Bearer <token>``; without one the
            server is in loopback mode and refuses cross-site requests (``Host``/``Origin`` checks).
        max_upload_bytes: largest accepted upload body (413 above it).
        recover: at start-up, mark jobs left running as interrupted and remove left-overs of interrupted writes.
        max_decoded_bytes: largest decoded voxel data of an upload (its header's dimensions x type), bytes.
        max_json_bytes: body limit of every route but the upload, bytes.
        body_idle_timeout_s: a request body that stalls this long is answered 408.
        min_body_rate: after ``body_idle_timeout_s``, a body arriving slower than this on average (bytes/s) is
            answered 408 (0: no minimum).

    Raises:
        DatastoreError: ``store_path`` is not a datastore.
    """
    token = token or None  # an empty token is no token (it used to make every request 401)
    set_lock_wait(REQUEST_LOCK_WAIT_S)  # this process serves requests: "locked, retry" after 5 s, not a 30 s hang
    store = Datastore(store_path)
    table = JobTable(store.meta_dir)
    runner = JobRunner(store.root, table)
    context = ServerContext(
        store=store, jobs=runner, table=table, token=token, max_upload_bytes=max_upload_bytes,
        max_decoded_bytes=max_decoded_bytes,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if recover:
            runner.recover()
            store.recover(min_age_seconds=RECOVER_MIN_AGE_S)
            from activeseg.store.dicom_writeback import resume_writeback

            resume_writeback(store.root)  # DICOM datastores: labels not yet in the PACS go out (background)
        # An idle connection held open for the server's life: each request's own short connection is then
        # never the last one to close, so SQLite does not checkpoint and re-map the WAL every time
        # (measured: a read transaction drops from ~0.7 ms to ~0.25 ms).
        keeper = sqlite3.connect(store.db_path, check_same_thread=False)
        keeper.execute("PRAGMA schema_version").fetchone()
        try:
            yield
        finally:
            runner.shutdown()  # a stopped backend must not leave a worker holding the GPU
            context.hot.close()
            keeper.close()

    app = FastAPI(
        title="ActiveSeg backend",
        version=__version__,
        description="Active-learning CT segmentation engine: cases, ranked queue with leases, labels, jobs, models.",
        lifespan=lifespan,
        openapi_url="/v1/openapi.json",
        docs_url=None,  # served by _install_docs from the packaged Swagger UI, not from a CDN
        redoc_url=None,
    )
    app.state.context = context
    _install_docs(app)
    install_error_handlers(app)
    app.include_router(build_router())
    app.openapi = lambda: _openapi(app, token_required=token is not None)  # type: ignore[method-assign]
    app.add_middleware(
        RequestGuardMiddleware,
        loopback_only=token is None,
        max_upload_bytes=max_upload_bytes,
        max_json_bytes=max_json_bytes,
        body_idle_timeout_s=body_idle_timeout_s,
        min_body_rate=min_body_rate,
    )
    if token is not None:
        app.add_middleware(BearerTokenMiddleware, token=token)  # added last: outermost, checked first
    return app


DOCS_URL = "/v1/docs"
DOCS_ASSETS_URL = "/v1/docs-assets"


def _install_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/v1/docs`` with its JavaScript and CSS from the installed ``swagger-ui-bundle``.

    FastAPI's default page loads them from a CDN and is blank on an offline hospital network; here every file the
    page needs comes from this server (``/v1/docs-assets/...``).
    """
    from swagger_ui_bundle import swagger_ui_path

    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/v1/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon-32x32.png",
        )


def _openapi(app: FastAPI, token_required: bool) -> dict[str, Any]:
    """The OpenAPI document with the bearer scheme declared and the case-id pattern on every ``case_id``."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http",
        "scheme": "bearer",
        "description": "the server's --token; required when the server was started with one",
    }
    # Loopback mode: the scheme is declared but optional ({} = no credentials needed).
    schema["security"] = [{"bearerAuth": []}] if token_required else [{}, {"bearerAuth": []}]
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []) if isinstance(operation, dict) else []:
                if parameter.get("name") == "case_id" and parameter.get("in") == "path":
                    parameter["schema"] = {
                        "type": "string",
                        "pattern": CASE_ID_PATTERN.pattern,
                        "title": "Case Id",
                        "description": "letters, digits, '_', '-', '.'; no '..'",
                    }
    app.openapi_schema = schema
    return schema


def check_store_writable(store_path: Path, lock_wait_s: float = STARTUP_LOCK_WAIT_S) -> None:
    """Start-up check that the datastore can be written: its folder, and its database's write lock.

    Raises:
        StorageReadOnlyError: the folder or the database is read-only. StorageFullError: no space to create a
            file. StoreLockedError: another process held the database's write lock for ``lock_wait_s`` seconds.
        DatastoreError: not a datastore.
    """
    store = Datastore(store_path)
    probe = store.meta_dir / f"{TEMP_MARKER}startup-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise storage_error(exc, f"a probe file in {store.meta_dir}") from exc
    connection = sqlite3.connect(store.db_path, timeout=lock_wait_s, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        typed = sqlite_error(exc)
        if typed is None:
            raise StorageError(f"the datastore's database cannot be written: {exc}") from exc
        raise typed from exc
    finally:
        connection.close()


def check_bind_address(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token.

    Raises:
        ConfigError: ``host`` is not a loopback address (after name resolution) and ``token`` is empty.
    """
    if token:
        return
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve host {host!r}: {exc}") from exc
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise ConfigError(
            f"refusing to serve on {host!r} without a token: anyone on the network could read and change the "
            "datastore. Pass --token (clients then send 'Authorization: Bearer <token>') or bind to 127.0.0.1."
        )


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = the OS picks a free one; the socket is handed to uvicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    info = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0]
    # proto must be IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only then; without it,
    # Nagle plus delayed ACKs add ~40 ms to every keep-alive request (headers and body go in two writes).
    sock = socket.socket(info[0], socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    data: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    max_upload_bytes: int | None = None,
    log_level: str = "info",
    max_decoded_bytes: int | None = None,
) -> None:
    """Serve the datastore at ``data`` until interrupted (SIGINT/SIGTERM stop it cleanly).

    Args:
        data: datastore folder.
        host: address to bind; non-loopback needs ``token``.
        port: TCP port; 0 picks a free one (read it from the ``ACTIVESEG_SERVER_URL=`` line on stdout).
        token: bearer token required on every request.
        max_upload_bytes: upload limit (default: ``$ACTIVESEG_MAX_UPLOAD_BYTES`` or 1 GiB).
        log_level: uvicorn's log level.
        max_decoded_bytes: decoded-size limit of an upload (default: ``$ACTIVESEG_MAX_DECODED_BYTES`` or 1 GiB).

    Raises:
        SystemExit: code 2 when the address is refused or the datastore cannot be opened (message on stderr).
    """
    import uvicorn

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limit = max_upload_bytes or int(os.environ.get("ACTIVESEG_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES))
    decoded = max_decoded_bytes or int(os.environ.get("ACTIVESEG_MAX_DECODED_BYTES", DEFAULT_MAX_DECODED_BYTES))
    idle = float(os.environ.get("ACTIVESEG_BODY_IDLE_TIMEOUT_S", DEFAULT_BODY_IDLE_TIMEOUT_S))
    rate = float(os.environ.get("ACTIVESEG_MIN_BODY_RATE", DEFAULT_MIN_BODY_RATE))
    header_timeout = float(os.environ.get("ACTIVESEG_HEADER_TIMEOUT_S", DEFAULT_HEADER_TIMEOUT_S))
    token = token or None
    try:
        check_bind_address(host, token)
        check_store_writable(Path(data))
        app = create_app(
            Path(data), token=token, max_upload_bytes=limit, max_decoded_bytes=decoded, body_idle_timeout_s=idle,
            min_body_rate=rate,
        )
        sock = _bind(host, port)
    except (ActiveSegError, OSError) as exc:
        logger.error("activeseg serve: %s", exc)
        raise SystemExit(2) from exc
    bound_port = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                # The protocol line, written only once the app is started and the socket is served.
                sys.stdout.write(f"{URL_LINE_PREFIX}http://{url_host}:{bound_port}\n")
                sys.stdout.flush()

    # The h11 protocol with a deadline for request headers (uvicorn has none: a silent or byte-dripping
    # connection was held for ever); bodies are guarded by RequestGuardMiddleware.
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=10,
                            http=protocol_with_header_timeout(header_timeout))
    server = _Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()

