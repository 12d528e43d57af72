"""Where the bearer token lives: the OS keyring when ``keyring`` is importable, else Slicer's settings. Stdlib only.

Never in the scene: the parameter node is saved with every scene and ``.mrb`` bundle, in clear text, and shared
with colleagues along with the data. Tokens are kept per server (scheme, host and port), so switching between a
local and a remote backend does not send one server's token to another.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any, Protocol

__all__ = ["SettingsLike", "TokenStore", "server_key"]

logger = logging.getLogger(__name__)

_SERVICE = "ActiveSeg"
_SETTINGS_GROUP = "ActiveSeg/Tokens"


class SettingsLike(Protocol):
    """The part of ``qt.QSettings`` used here (``slicer.app.userSettings()`` inside Slicer)."""

    def value(self, key: str, default: Any = None) -> Any: ...

    def setValue(self, key: str, value: Any) -> None: ...  # noqa: N802 - Qt's spelling

    def remove(self, key: str) -> None: ...


def server_key(url: str) -> str:
    """``scheme://host:port`` of a backend URL, the key a token is stored under.

    Example:
        >>> server_key("http://gpu-server:8000/v1/")
        'http://gpu-server:8000'
    """
    parts = urllib.parse.urlsplit(url.strip())
    return f"{parts.scheme}://{parts.netloc}".lower()


class TokenStore:
    """Bearer tokens per backend.

    Args:
        settings: Slicer's settings (fallback store; a user-readable file in the user's profile, never the scene).
        keyring: the ``keyring`` module, or ``None`` to use the settings only.
    """

    def __init__(self, settings: SettingsLike, keyring: Any | None = None) -> None:
        self.settings = settings
        self.keyring = keyring

    @classmethod
    def default(cls, settings: SettingsLike) -> TokenStore:
        """A store using the OS keyring when the ``keyring`` package is importable."""
        try:
            import keyring  # optional: not shipped with Slicer
        except ImportError:
            keyring = None
        return cls(settings, keyring)

    def _settings_key(self, url: str) -> str:
        return f"{_SETTINGS_GROUP}/{urllib.parse.quote(server_key(url), safe='')}"

    def load(self, url: str) -> str:
        """The token saved for ``url``'s server, or ``""``."""
        if self.keyring is not None:
            try:
                return self.keyring.get_password(_SERVICE, server_key(url)) or ""
            except Exception as exc:  # noqa: BLE001 - a broken keyring backend must not block connecting
                logger.warning("keyring unavailable (%s); using Slicer's settings", exc)
        return str(self.settings.value(self._settings_key(url), "") or "")

    def save(self, url: str, token: str) -> None:
        """Remember ``token`` for ``url``'s server (an empty token forgets it)."""
        if not token:
            self.forget(url)
            return
        if self.keyring is not None:
            try:
                self.keyring.set_password(_SERVICE, server_key(url), token)
                self.settings.remove(self._settings_key(url))
                return
            except Exception as exc:  # noqa: BLE001
                logger.warning("keyring unavailable (%s); using Slicer's settings", exc)
        self.settings.setValue(self._settings_key(url), token)

    def forget(self, url: str) -> None:
        """Drop the token saved for ``url``'s server, wherever it is."""
        if self.keyring is not None:
            try:
                self.keyring.delete_password(_SERVICE, server_key(url))
            except Exception:  # noqa: BLE001 - not there (keyring raises PasswordDeleteError)
                pass
        self.settings.remove(self._settings_key(url))
