"""Case identifiers: the file-name stem of a case's image, restricted so it can never act as a path."""

from __future__ import annotations

import re

from activeseg.errors import InvalidCaseIdError

__all__ = ["CASE_ID_PATTERN", "validate_case_id"]

# Letters, digits, '_', '-', '.', starting with a letter or digit; no '/', '\\', '..', or control characters.
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_case_id(case_id: str) -> str:
    """Return ``case_id`` unchanged if it is safe, else raise :class:`InvalidCaseIdError` naming it."""
    if not isinstance(case_id, str) or not CASE_ID_PATTERN.match(case_id) or ".." in case_id:
        raise InvalidCaseIdError(
            f"invalid case id {case_id!r}: use 1-128 letters, digits, '_', '-', '.', no path separators or '..'"
        )
    return case_id
