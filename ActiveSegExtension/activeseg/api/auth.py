"""Bearer-token check for every request (pure ASGI middleware: no body buffering, cheap on the hot path)."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["BearerTokenMiddleware"]


class BearerTokenMiddleware:
    """Reject HTTP requests whose ``Authorization`` header is not ``Bearer <token>`` with 401.

    Args:
        app: the wrapped application.
        token: the expected token (compared in constant time).
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        if hmac.compare_digest(given, self._expected):
            await self.app(scope, receive, send)
            return
        message = "missing bearer token" if not given else "wrong bearer token"
        body = json.dumps({"error": {"code": "unauthorized", "message": message}}).encode()
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        })
        await send({"type": "http.response.body", "body": body})
