"""Issue 15 through the module's Logic on a real backend: the queue shows each case by a name the radiologist
recognises (series description, study date) where the datastore has one, else by its case id; the id still leases
the case, and neither the names nor patient identifiers reach the module's log."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..dicom_support import PHI_VALUES, TOTALSEG_DICOM, named_series_folder

ANNOTATOR = "alice"


@pytest.fixture()
def dicom_logic(ctx: Any, tmp_path: Path) -> Iterator[tuple[Any, dict[str, str | None]]]:
    """A core logic with a local backend on a datastore imported from a DICOM folder, every case queued:
    (logic, case id -> the display name the backend records, ``None`` where there is none)."""
    pytest.importorskip("activeseg")
    if not TOTALSEG_DICOM.is_dir():
        pytest.skip(f"shared test data not found at {TOTALSEG_DICOM} (it lives beside the project, never in it)")
    from activeseg.store.dicom_import import init_from_dicom_folder
    from activeseg.store.dicom_index import DicomIndex

    from ActiveSegLib.logic import ActiveSegCoreLogic

    named_series_folder(tmp_path / "dicom")
    store, _ = init_from_dicom_folder(tmp_path / "store", tmp_path / "dicom")
    recorded = DicomIndex(store.meta_dir).display_names()
    names: dict[str, str | None] = {record.case_id: recorded.get(record.case_id) for record in store.cases()}
    store.set_queue(sorted(names))
    core = ActiveSegCoreLogic(ctx)
    core.session.start_local_backend(sys.executable, str(store.root), timeout_s=120)
    try:
        yield core, names
    finally:
        core.shutdown()


@pytest.mark.shared_data
def test_the_queue_shows_display_names_and_leases_by_id(
    dicom_logic: tuple[Any, dict[str, str | None]], caplog: pytest.LogCaptureFixture
) -> None:
    core, names = dicom_logic
    assert sorted(n for n in names.values() if n) == ["CT Body 3.0 2022-12-08", "Synthetic CT 2024-01-02"]
    with caplog.at_level(logging.DEBUG):
        rows = core.cases.refresh_queue()
        assert {row.case_id for row in rows} == set(names)
        for row in rows:
            assert row.cells()[0] == (names[row.case_id] or row.case_id)  # the id where there is no name
            assert row.name == row.cells()[0]
        nameless = next(row for row in rows if names[row.case_id] is None)
        named = next(row for row in rows if names[row.case_id] == "Synthetic CT 2024-01-02")
        assert nameless.cells()[0] == nameless.case_id
        loaded = core.cases.load_case(named.case_id, ANNOTATOR)  # what a double-click on the row does
        assert loaded.case_id == named.case_id and loaded.volume_node.GetName() == named.case_id
        assert core.session.client.case(named.case_id).lease_holder == ANNOTATOR
    for secret in (*PHI_VALUES, *(n for n in names.values() if n)):  # names are shown, never logged
        assert secret not in caplog.text
    assert not any(phi in row.cells()[0] for phi in PHI_VALUES for row in rows)


def test_rows_fall_back_to_the_case_id() -> None:
    from ActiveSegLib.cases import QueueRow, ReviewRow
    from ActiveSegLib.responses import Case

    named = Case.from_json({"case_id": "ct-1a2b", "state": "queued", "display_name": "CT Thorax 2024-01-02"})
    plain = Case.from_json({"case_id": "phantom_001", "state": "pseudo"})  # an older backend: no display_name
    assert QueueRow(named, 1).cells()[0] == "CT Thorax 2024-01-02" and QueueRow(named, 1).case_id == "ct-1a2b"
    assert QueueRow(plain).cells()[0] == "phantom_001"
    assert ReviewRow(named).cells()[0] == "CT Thorax 2024-01-02" and ReviewRow(plain).cells()[0] == "phantom_001"
    assert Case.from_json({"case_id": "x", "state": "queued", "display_name": ""}).name == "x"
