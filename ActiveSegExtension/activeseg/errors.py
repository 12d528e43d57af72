"""Typed exceptions. Each names the bad value so a user (or the HTTP layer) can act on it.

Every exception carries a stable machine ``code`` that the server returns beside the human message.
"""

from __future__ import annotations

__all__ = [
    "ActiveSegError",
    "InvalidCaseIdError",
    "UnknownCaseError",
    "ImageReadError",
    "NotThreeDimensionalError",
    "GeometryMismatchError",
    "LabelValueError",
    "EmptyLabelError",
    "CaseStateError",
    "LeaseError",
    "DatastoreError",
    "ModelVersionError",
    "ConfigError",
    "TrainingCancelled",
    "StorageError",
    "StorageFullError",
    "StorageReadOnlyError",
    "StoreLockedError",
]


class ActiveSegError(Exception):
    """Base class. ``code`` is a stable identifier; ``http_status`` the status the API maps it to."""

    code = "activeseg_error"
    http_status = 400


class InvalidCaseIdError(ActiveSegError):
    """A case id that is empty, too long, or could be read as a path."""

    code = "invalid_case_id"
    http_status = 400


class UnknownCaseError(ActiveSegError):
    """A well-formed case id that the datastore does not hold."""

    code = "unknown_case"
    http_status = 404


class ImageReadError(ActiveSegError):
    """A file that is not a readable NIfTI/NRRD image (corrupt, truncated, wrong format)."""

    code = "unreadable_image"
    http_status = 422


class NotThreeDimensionalError(ActiveSegError):
    """An image that is readable but not a single-component 3D volume."""

    code = "not_3d"
    http_status = 422


class GeometryMismatchError(ActiveSegError):
    """A label whose size, spacing, origin or direction differs from its image's."""

    code = "geometry_mismatch"
    http_status = 422


class LabelValueError(ActiveSegError):
    """A label containing values outside the datastore's label set."""

    code = "label_values"
    http_status = 422


class EmptyLabelError(ActiveSegError):
    """An all-background label submitted without saying the case has no finding."""

    code = "empty_label"
    http_status = 422


class CaseStateError(ActiveSegError):
    """An action that the case's current state does not allow (e.g. accepting a case with no pseudo-label)."""

    code = "invalid_state"
    http_status = 409


class LeaseError(ActiveSegError):
    """A case leased to another annotator."""

    code = "leased"
    http_status = 409


class DatastoreError(ActiveSegError):
    """A datastore that is missing, not initialised, or already initialised."""

    code = "datastore"
    http_status = 400


class ModelVersionError(ActiveSegError):
    """An unknown model version, or an action that needs a model when there is none."""

    code = "model_version"
    http_status = 404


class ConfigError(ActiveSegError):
    """A setting with an invalid value."""

    code = "config"
    http_status = 400


class TrainingCancelled(ActiveSegError):
    """A training or ranking run stopped because its progress callback asked to cancel."""

    code = "cancelled"
    http_status = 409


class StorageError(ActiveSegError):
    """A write the file system did not complete (verified afterwards: some writers fail silently)."""

    code = "storage_error"
    http_status = 500


class StorageFullError(StorageError):
    """No space left (ENOSPC or a quota) where the datastore writes; nothing acknowledged was lost."""

    code = "storage_full"
    http_status = 507


class StorageReadOnlyError(StorageError):
    """The datastore's folder or database is read-only (EROFS, EACCES, a read-only SQLite database)."""

    code = "storage_read_only"
    http_status = 503


class StoreLockedError(StorageError):
    """The datastore's database stayed locked by another process past the wait limit."""

    code = "store_locked"
    http_status = 503
