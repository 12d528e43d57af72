"""The protocol constants the module shares with the backend, defined once on this side. Stdlib only.

The backend defines its own copies (it is a separate program with its own environment, so neither side imports
the other); ``Testing/module/test_protocol_agreement.py`` checks that the two sets agree:

=========================  ==========================================================
here                       backend
=========================  ==========================================================
``API_PREFIX``             ``activeseg.api.API_PREFIX``
``URL_LINE_PREFIX``        ``activeseg.api.server.URL_LINE_PREFIX``
``TOKEN_ENV``              the ``--token`` default of ``activeseg serve`` (``activeseg.cli.main``)
``FINISHED_JOB_STATES``    ``activeseg.jobs.runner.FINAL_STATES``
``CASE_STATES``            ``activeseg.store.datastore.STATES``
``UPLOAD_FORMATS``         ``activeseg.api.labels.UploadFormat``
``UNCERTAINTY_PERCENT``    ``activeseg.method.uncertainty_map.UNCERTAINTY_SCALE``
=========================  ==========================================================
"""

from __future__ import annotations

__all__ = [
    "API_PREFIX",
    "URL_LINE_PREFIX",
    "TOKEN_ENV",
    "FINISHED_JOB_STATES",
    "CASE_STATES",
    "UPLOAD_FORMATS",
    "FILE_SUFFIXES",
    "UNCERTAINTY_PERCENT",
    "file_suffix",
]

#: Path prefix of the versioned HTTP API.
API_PREFIX = "/v1"

#: The line prefix ``activeseg serve`` prints once it listens: ``ACTIVESEG_SERVER_URL=http://127.0.0.1:PORT``.
URL_LINE_PREFIX = "ACTIVESEG_SERVER_URL="

#: Environment variable ``activeseg serve`` reads its bearer token from (keeps it off the command line).
TOKEN_ENV = "ACTIVESEG_TOKEN"

#: Job statuses after which nothing changes any more.
FINISHED_JOB_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "interrupted")

#: Every state a case can be in (see DESIGN.md, "Case states").
CASE_STATES: tuple[str, ...] = ("unlabeled", "queued", "labeled", "pseudo", "accepted", "rejected")

#: Label upload formats ``PUT /v1/cases/{id}/label?format=`` accepts.
UPLOAD_FORMATS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".dcm")

#: Suffixes of the files the backend sends, longest first (so ``.seg.nrrd`` wins over ``.nrrd``).
FILE_SUFFIXES: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd")

#: Voxel value of the served uncertainty map that means "as uncertain as it gets": the map is stored as uint8
#: percent, 0 (heads agree, main head sure) to 100.
UNCERTAINTY_PERCENT = 100


def file_suffix(filename: str) -> str:
    """The format suffix of a file name: one of :data:`FILE_SUFFIXES`, or ``""``.

    Example:
        >>> file_suffix("phantom_003.pseudo.seg.nrrd")
        '.seg.nrrd'
    """
    lowered = filename.lower()
    for suffix in FILE_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix
    return ""
