"""Connections that cannot be held open by sending nothing, or a byte at a time (issue 12, item 11).

uvicorn's HTTP/1.1 protocol (h11) times out only an idle keep-alive connection *after* a response: a connection
that sends nothing after connecting, or drips its request headers a byte at a time (each byte cancels the
keep-alive timer), is held for ever, a file descriptor and a protocol object each; enough of them exhaust the
server's descriptors and it stops accepting. :class:`HeaderDeadlineProtocol` gives every request's headers a
deadline, counted from the connection's start or from the end of the previous response: when they are not
complete by then the connection is closed, with ``408 request_timeout`` if part of a request had arrived.

Bodies are guarded in :mod:`activeseg.api.guards` (idle time and a minimum average rate).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["DEFAULT_HEADER_TIMEOUT_S", "HeaderDeadlineProtocol", "protocol_with_header_timeout"]

logger = logging.getLogger(__name__)

DEFAULT_HEADER_TIMEOUT_S = 10.0


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps({"error": {"code": "request_timeout", "message": (
        f"the request headers were not complete within {seconds:g} s")}}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


class HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers (:attr:`header_timeout_s` seconds)."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._armed_cycle: object = None

    def _arm(self) -> None:
        """Start the deadline of the next request's headers (the current cycle, if any, is finished)."""
        self._disarm()
        self._armed_cycle = self.cycle
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._deadline_passed)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _deadline_passed(self) -> None:
        self._header_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        if self.cycle is not self._armed_cycle:
            return  # a request's headers arrived: its response re-arms the deadline
        if self.cycle is not None and not self.cycle.response_complete:
            return  # still answering the previous request (not a header wait)
        partial = bool(self.conn.trailing_data[0])
        if partial:
            logger.info("closing a connection whose request headers were not complete after %g s",
                        self.header_timeout_s)
            self.transport.write(_timeout_response(self.header_timeout_s))
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm()  # before the base class handles a pipelined request (which then counts as arrived)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class to hand uvicorn (``uvicorn.Config(http=...)``) with a header deadline of ``seconds``."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout_s": float(seconds)})
