"""Typed exceptions of the Slicer-side library (``ActiveSegLib``).

Every error says what was wrong and with which value, so the Slicer widget can show ``str(exc)`` to the user
as it is (no traceback). The HTTP client adds its own ``ClientError`` here, next to these.
"""

from __future__ import annotations

__all__ = [
    "ActiveSegModuleError",
    "MrmlBridgeError",
    "BackendStartError",
    "ClientError",
    "BackendUnavailableError",
    "BackendRequestError",
    "AuthenticationError",
    "ProtocolError",
]


class ActiveSegModuleError(Exception):
    """Base class of every error raised by ``ActiveSegLib``."""


class MrmlBridgeError(ActiveSegModuleError):
    """An image or segmentation could not be turned into MRML nodes (or back into a file).

    Raised for unreadable or corrupt files, images that are not 3D, labels that match no class, and grids that
    do not fit the reference volume.
    """


class BackendStartError(ActiveSegModuleError):
    """The local backend process could not be started, exited early, or never announced its URL.

    Attributes:
        output: the last lines the process printed (stdout and stderr merged), possibly empty.
        returncode: the process's exit status if it exited, else ``None``.
    """

    def __init__(self, message: str, output: str = "", returncode: int | None = None) -> None:
        full = message if not output.strip() else f"{message}\n--- backend output (last lines) ---\n{output.rstrip()}"
        super().__init__(full)
        self.output = output
        self.returncode = returncode


class ClientError(ActiveSegModuleError):
    """Base class of the HTTP client's errors (:mod:`ActiveSegLib.client`)."""


class BackendUnavailableError(ClientError):
    """The backend could not be reached: connection refused, name not resolved, or no answer in time.

    Attributes:
        url: the URL that was requested.
    """

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class BackendRequestError(ClientError):
    """The backend answered with an HTTP error; ``str(exc)`` is the backend's own message.

    The backend's error body is ``{"error": {"code": ..., "message": ...}}``; a body that is not (a proxy's HTML
    page, say) gives ``code="http_error"`` and a short excerpt as the message.

    Attributes:
        status: the HTTP status code (404, 409, 422, ...).
        code: the backend's machine-readable error code (``unknown_case``, ``leased``, ``job_running``, ...).
        message: the backend's human-readable message, fit to show to the user.
        url: the URL that was requested.
    """

    def __init__(self, status: int, code: str, message: str, url: str = "") -> None:
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, message={self.message!r})"


class AuthenticationError(BackendRequestError):
    """HTTP 401: the backend needs a bearer token and none, or the wrong one, was sent."""


class ProtocolError(ClientError):
    """The backend answered, but not in the shape the ``/v1`` protocol promises (a missing field, a wrong type):
    an older or newer backend, or something else listening on that port."""
