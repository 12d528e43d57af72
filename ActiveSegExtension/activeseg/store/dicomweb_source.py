"""A DICOMweb server (a PACS such as Orthanc) as the source of a datastore's images and the sink of its labels.

QIDO-RS lists the series, WADO-RS fetches each series' instances (in their stored transfer syntax, so
nothing is transcoded on the server; SimpleITK/GDCM decodes JPEG 2000 and the like), STOW-RS stores
DICOM SEG labels, all through ``dicomweb-client``. Fetched instances land in a resumable download cache
inside the datastore folder (one file per instance, written atomically, named by its SOP Instance UID)
and are verified against QIDO's instance list and the requested UIDs before
:func:`activeseg.store.dicom_import.init_from_dicom_folder` turns them into cases exactly as for a DICOM
folder; the cache is removed once the datastore exists.

The bearer token (``--token`` or ``$ACTIVESEG_DICOMWEB_TOKEN``) is sent in the Authorization header and
never written to disk or logs. Logs name series by count and case id only: QIDO answers carry patient
names, which never leave this module.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import requests

from activeseg.config import Config
from activeseg.errors import DatastoreError
from activeseg.io.atomic import atomic_write

if TYPE_CHECKING:
    from activeseg.store.datastore import Datastore

__all__ = ["DicomwebError", "RemoteSeries", "DicomwebSource", "init_from_dicomweb"]

logger = logging.getLogger(__name__)

CACHE = "dicomweb-cache"
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)


class DicomwebError(DatastoreError):
    """The DICOMweb server could not be reached, refused a request, or sent something inconsistent."""

    code = "dicomweb"
    http_status = 502


@dataclass(frozen=True)
class RemoteSeries:
    """One series as QIDO-RS lists it (no patient data kept).

    Attributes:
        study_uid, series_uid: its UIDs.
        modality: e.g. "CT", "SEG".
        instances: NumberOfSeriesRelatedInstances, or -1 when the server does not say.
    """

    study_uid: str
    series_uid: str
    modality: str
    instances: int


def _value(item: dict[str, Any], tag: str, default: Any = "") -> Any:
    values = item.get(tag, {}).get("Value") or [default]
    return values[0]


def _uid(value: str, what: str) -> str:
    if not _UID.match(value or "") or len(value) > 64:
        raise DicomwebError(f"the server sent an invalid {what} {value[:70]!r}")
    return value


class DicomwebSource:
    """A DICOMweb server.

    Args:
        url: the DICOMweb root, e.g. ``http://pacs:8042/dicom-web``.
        token: bearer token, or ``None``.
        timeout: seconds per HTTP request.
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        from dicomweb_client.api import DICOMwebClient

        if not url.startswith(("http://", "https://")):
            raise DicomwebError(f"DICOMweb URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.client = DICOMwebClient(self.url, headers=headers, timeout=timeout)
        self.client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=500)

    def _call(self, what: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise DicomwebError(f"{what}: the DICOMweb server answered HTTP {status}") from exc
        except (requests.RequestException, OSError) as exc:
            raise DicomwebError(f"{what}: the DICOMweb server at {self.url} could not be reached ({type(exc).__name__})") from exc

    def list_series(
        self, study_uids: tuple[str, ...] = (), series_uids: tuple[str, ...] = (), modalities: tuple[str, ...] = ("CT",)
    ) -> tuple[list[RemoteSeries], list[RemoteSeries]]:
        """QIDO-RS: the series to import and those left out (other modalities).

        Args:
            study_uids: only these studies (default: all).
            series_uids: only these series (default: all in the chosen studies).
            modalities: modalities to import.

        Raises:
            DicomwebError: unreachable server or an error answer.
        """
        answers: list[dict[str, Any]] = []
        for study in study_uids or (None,):
            answers += self._call("QIDO-RS series search", self.client.search_for_series, study_instance_uid=study,
                                  get_remaining=True)
        wanted = set(series_uids)
        chosen, others = [], []
        for item in answers:
            series = RemoteSeries(
                study_uid=_uid(str(_value(item, "0020000D")), "StudyInstanceUID"),
                series_uid=_uid(str(_value(item, "0020000E")), "SeriesInstanceUID"),
                modality=str(_value(item, "00080060")),
                instances=int(_value(item, "00201209", -1)),
            )
            if wanted and series.series_uid not in wanted:
                continue
            (chosen if series.modality.upper() in {m.upper() for m in modalities} else others).append(series)
        missing = wanted - {s.series_uid for s in chosen + others}
        if missing:
            raise DicomwebError(f"series not found on the server: {sorted(missing)}")
        return chosen, others

    def instance_uids(self, series: RemoteSeries) -> set[str]:
        """QIDO-RS: the SOP Instance UIDs of a series."""
        answers = self._call("QIDO-RS instance search", self.client.search_for_instances,
                             study_instance_uid=series.study_uid, series_instance_uid=series.series_uid, get_remaining=True)
        return {_uid(str(_value(item, "00080018")), "SOPInstanceUID") for item in answers}

    def fetch_series(self, series: RemoteSeries, folder: Path) -> list[Path]:
        """WADO-RS: download a series into ``folder`` (one ``<SOPInstanceUID>.dcm`` per instance) and verify it.

        Instances already in ``folder`` (an interrupted earlier fetch) are kept; the series is fetched again
        only when some are missing.

        Raises:
            DicomwebError: unreachable server, an instance of another series, or instances missing after the fetch.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        expected = self.instance_uids(series)
        if not expected:
            raise DicomwebError(f"series {series.series_uid}: the server lists no instance")
        if {p.stem for p in folder.glob("*.dcm")} >= expected:
            logger.info("series of %d instance(s) already cached", len(expected))
        else:
            iterator = self._call("WADO-RS series retrieve", self.client.iter_series, series.study_uid, series.series_uid,
                                  media_types=_ANY_TRANSFER_SYNTAX)
            while True:
                dataset = self._call("WADO-RS series retrieve", next, iterator, None)
                if dataset is None:
                    break
                if str(dataset.get("SeriesInstanceUID", "")) != series.series_uid or str(dataset.get("StudyInstanceUID", "")) != series.study_uid:
                    raise DicomwebError(f"series {series.series_uid}: the server sent an instance of another series")
                sop = _uid(str(dataset.get("SOPInstanceUID", "")), "SOPInstanceUID")
                atomic_write(folder / f"{sop}.dcm", lambda path, ds=dataset: ds.save_as(path, enforce_file_format=True))
        present = {p.stem for p in folder.glob("*.dcm")}
        missing = expected - present
        if missing:
            raise DicomwebError(f"series {series.series_uid}: {len(missing)} of {len(expected)} instance(s) missing after WADO-RS")
        if series.instances >= 0 and series.instances != len(expected):
            raise DicomwebError(f"series {series.series_uid}: QIDO lists {len(expected)} instances, the series says {series.instances}")
        return sorted(folder / f"{sop}.dcm" for sop in expected)

    def store_file(self, path: Path) -> None:
        """STOW-RS one DICOM file (storing an instance the server already has is a success, not a copy).

        Raises:
            DicomwebError: unreachable server, or the server reports the instance as failed.
        """
        dataset = pydicom.dcmread(path)
        answer = self._call("STOW-RS", self.client.store_instances, [dataset], study_instance_uid=str(dataset.StudyInstanceUID))
        failed = answer.get("FailedSOPSequence", []) if answer is not None else []
        if failed:
            reason = failed[0].get("FailureReason", "unknown")
            raise DicomwebError(f"STOW-RS: the server refused the instance (failure reason {reason})")

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        """QIDO-RS: does the server hold this instance?"""
        answers = self._call("QIDO-RS instance search", self.client.search_for_instances, study_instance_uid=study_uid,
                             series_instance_uid=series_uid, search_filters={"SOPInstanceUID": sop_uid})
        return bool(answers)


def init_from_dicomweb(
    store: Path,
    url: str,
    *,
    study_uids: tuple[str, ...] = (),
    series_uids: tuple[str, ...] = (),
    token: str | None = None,
    with_labels: bool = False,
    overrides: list[str] | None = None,
    seed: int = 0,
    config: Config | None = None,
) -> tuple[Datastore, list[str]]:
    """Create datastore ``store`` from the CT series on a DICOMweb server.

    Args:
        store: datastore folder to create.
        url: DICOMweb root.
        study_uids, series_uids: only these studies / series (default: every CT series on the server).
        token: bearer token (not stored; write-back reads ``$ACTIVESEG_DICOMWEB_TOKEN``).
        with_labels: also fetch DICOM SEG series and import those referencing a fetched series as labels.
        overrides, seed, config: as :func:`activeseg.store.initialise.init_datastore`.

    Returns:
        The datastore and one sentence per series, instance or label not imported.

    Raises:
        DicomwebError: the server is unreachable or inconsistent. DatastoreError: nothing to import.
    """
    from activeseg.store.dicom_import import init_from_dicom_folder

    store = Path(store).resolve()
    if (store / ".activeseg" / "activeseg.db").exists():
        raise DatastoreError(f"{store} is already an ActiveSeg datastore")
    source = DicomwebSource(url, token=token)
    chosen, others = source.list_series(study_uids, series_uids)
    labels: list[RemoteSeries] = []
    if with_labels and chosen:  # DICOM SEG series of the chosen studies; those referencing a chosen series become labels
        labels = source.list_series(tuple(sorted({s.study_uid for s in chosen})), modalities=("SEG",))[0]
    problems = [f"series {s.series_uid}: modality {s.modality or 'unknown'} not imported" for s in others if s not in labels]
    if not chosen:
        raise DatastoreError(f"no CT series on {source.url} matches the filters ({len(others)} other series)")
    cache = store / ".activeseg" / CACHE
    for number, series in enumerate(chosen + labels, start=1):
        folder = cache / series.series_uid
        try:
            source.fetch_series(series, folder)
        except DicomwebError as exc:
            if series in labels:
                problems.append(f"label series {series.series_uid} not fetched: {exc}")
                continue
            raise
        logger.info("fetched series %d of %d", number, len(chosen) + len(labels))
    datastore, more = init_from_dicom_folder(
        store, cache, with_labels=with_labels, overrides=overrides, seed=seed, config=config,
        source={"kind": "dicomweb", "url": source.url},
    )
    shutil.rmtree(cache, ignore_errors=True)
    return datastore, problems + more
