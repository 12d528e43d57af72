"""Request guards in front of every route (pure ASGI middleware: nothing buffered, cheap on the hot path).

* **Cross-site requests** (no-token loopback mode only): a page in the user's browser can reach
  ``http://127.0.0.1:PORT``. Requests whose ``Host`` is not a loopback name (DNS rebinding) or whose
  ``Origin`` is not a loopback origin (a cross-site ``fetch``/form) are refused with 403 ``forbidden_origin``.
  In token mode a browser cannot add the bearer token, so these checks are not needed there.
* **Content type of writes**: a ``POST`` carrying a body must say ``application/json``; the content types a
  browser may send cross-site without a CORS preflight (forms, ``text/plain``) are refused with 415. ``PUT``
  and ``DELETE`` always need a preflight, which this server never grants.
* **Body size**: ``Content-Length`` above the route's limit is refused (413) before a byte is read; a body
  without one (chunked) is counted as it arrives. Uploads (``PUT /v1/cases/{id}/label``) may be up to
  ``max_upload_bytes``, every other body up to ``max_json_bytes``.
* **Idle bodies**: a client that stops sending in the middle of a body gets 408 after ``body_idle_timeout_s``
  seconds instead of holding a worker and a temp file forever.
* **Slow bodies**: a client that drips a body (a few bytes just inside every idle timeout) gets 408 once, past
  ``body_idle_timeout_s`` from the request's start, its body arrives slower than ``min_body_rate`` bytes/s on
  average. (Request headers have their own deadline: :mod:`activeseg.api.connection`.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["RequestGuardMiddleware", "DEFAULT_MAX_JSON_BYTES", "DEFAULT_BODY_IDLE_TIMEOUT_S", "DEFAULT_MIN_BODY_RATE",
           "is_loopback_host"]

DEFAULT_MAX_JSON_BYTES = 64 << 10  # the largest JSON body of the API is a few hundred bytes
DEFAULT_BODY_IDLE_TIMEOUT_S = 30.0
# Bytes/s a body must average once it has taken longer than the idle timeout: far below any real network's
# upload rate of a label, far above a drip that only keeps a connection and a temp file held.
DEFAULT_MIN_BODY_RATE = 10 * 1024.0

_UPLOAD_PATH = re.compile(r"^/v1/cases/[^/]+/label$")
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_JSON_TYPES = {"application/json"}


def is_loopback_host(host: str) -> bool:
    """Whether a host name (no port) names this machine's loopback interface: ``localhost``, 127/8 or ``::1``."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_without_port(value: str) -> str:
    value = value.strip()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class _BodyRefused(Exception):
    """Raised into the app from ``receive`` when a body is too large or stalls (not an ActiveSegError, so no
    engine handler turns it into another answer)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


async def _send_error(send: Send, status: int, code: str, message: str, close: bool = False) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuardMiddleware:
    """The guards above, in one pass over the request headers.

    Args:
        app: the wrapped application.
        loopback_only: the server runs without a token (loopback mode): check ``Host`` and ``Origin``.
        max_upload_bytes: body limit of the label upload route, bytes.
        max_json_bytes: body limit of every other route, bytes.
        body_idle_timeout_s: longest wait for the next piece of a body, seconds.
        min_body_rate: least average body rate past ``body_idle_timeout_s``, bytes/s (0: none).
    """

    def __init__(
        self,
        app: ASGIApp,
        loopback_only: bool,
        max_upload_bytes: int,
        max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
        body_idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S,
        min_body_rate: float = DEFAULT_MIN_BODY_RATE,
    ) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.max_upload_bytes = max_upload_bytes
        self.max_json_bytes = max_json_bytes
        self.body_idle_timeout_s = body_idle_timeout_s
        self.min_body_rate = min_body_rate

    def _refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        method = scope["method"]
        if self.loopback_only:
            host = headers.get(b"host", b"").decode("latin-1")
            if host and not is_loopback_host(_host_without_port(host)):
                return 403, "forbidden_host", (
                    f"Host {host[:100]!r} is not this machine: without a token the backend answers only requests "
                    "addressed to 127.0.0.1 / localhost"
                )
            origin = headers.get(b"origin")
            if origin is not None:
                parts = urlsplit(origin.decode("latin-1"))
                if parts.scheme not in ("http", "https") or not is_loopback_host(parts.hostname or ""):
                    return 403, "forbidden_origin", (
                        f"cross-site request from origin {origin.decode('latin-1')[:100]!r} refused: without a token "
                        "the backend accepts requests only from this machine's own pages and programs"
                    )
        if method == "POST":
            content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
            has_body = headers.get(b"content-length", b"0") not in (b"0", b"") or b"transfer-encoding" in headers
            if (content_type or has_body) and content_type not in _JSON_TYPES:
                return 415, "unsupported_media_type", (
                    f"a POST body must be JSON (Content-Type: application/json), not {content_type or 'untyped'!r}"
                )
        limit = self.max_upload_bytes if method == "PUT" and _UPLOAD_PATH.match(scope["path"]) else self.max_json_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return 400, "bad_request", "Content-Length is not a number"
            if int(declared) > limit:
                return 413, "too_large", f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", ()))
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _send_error(send, *refusal, close=True)
            return
        upload = scope["method"] == "PUT" and _UPLOAD_PATH.match(scope["path"])
        limit = self.max_upload_bytes if upload else self.max_json_bytes
        state = {"received": 0, "done": False, "refused": None, "started": False}
        loop = asyncio.get_running_loop()
        started = loop.time()

        def too_slow() -> _BodyRefused:
            return _BodyRefused(408, "request_timeout", (
                f"the request body arrives too slowly: {state['received']} bytes in {loop.time() - started:.0f} s "
                f"(at least {self.min_body_rate:g} bytes/s are needed)"))

        async def guarded_receive() -> Message:
            if state["done"]:
                return await receive()
            wait, slow = self.body_idle_timeout_s, False
            if self.min_body_rate > 0:  # the body's rate deadline: idle grace + what it sent at the least rate
                left = started + self.body_idle_timeout_s + state["received"] / self.min_body_rate - loop.time()
                if left <= 0:
                    state["refused"] = too_slow()
                    raise state["refused"]
                wait, slow = min(wait, left), left < wait
            try:
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                state["refused"] = too_slow() if slow else _BodyRefused(
                    408, "request_timeout", f"the request body stalled: nothing received for {self.body_idle_timeout_s:g} s"
                )
                raise state["refused"] from None
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["refused"] = _BodyRefused(413, "too_large", f"request body exceeds the limit of {limit} bytes")
                    raise state["refused"]
                if not message.get("more_body", False):
                    state["done"] = True
            else:
                state["done"] = True
            return message

        async def guarded_send(message: Message) -> None:
            refused = state["refused"]
            if refused is not None:  # the app answered after its body read failed: answer for it, once
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _send_error(send, refused.status, refused.code, refused.message, close=True)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _BodyRefused as exc:
            if not state["started"]:
                state["started"] = True
                await _send_error(send, exc.status, exc.code, exc.message, close=True)
