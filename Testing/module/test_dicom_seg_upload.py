"""Issue 15 from the module's side: the typed client uploads a DICOM SEG as a case's label (``file_format=".dcm"``)
to a real local backend, and a SEG of another series comes back as the backend's 4xx message naming the mismatch."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from ..dicom_support import DCMQI


@pytest.mark.shared_data
def test_the_client_uploads_a_dicom_seg(ctx: Any, tmp_path: Path) -> None:
    pytest.importorskip("activeseg")
    if not DCMQI.is_dir():
        pytest.skip(f"shared test data not found at {DCMQI} (it lives beside the project, never in it)")
    from activeseg.store.dicom_import import init_from_dicom_folder

    from ActiveSegLib import BackendRequestError
    from ActiveSegLib.logic import ActiveSegCoreLogic

    shutil.copytree(DCMQI / "ct-3slice", tmp_path / "dicom" / "ct")
    store, _ = init_from_dicom_folder(tmp_path / "store", tmp_path / "dicom", overrides=["labels=liver"])
    (record,) = store.cases()
    core = ActiveSegCoreLogic(ctx)
    core.session.start_local_backend(sys.executable, str(store.root), timeout_s=120)
    try:
        client = core.session.client
        case = client.submit_label(record.case_id, (DCMQI / "liver.dcm").read_bytes(), "alice", file_format=".dcm")
        assert case.state == "labeled" and case.label_source == "expert"
        with pytest.raises(BackendRequestError, match="DICOM upload must be a Segmentation") as refused:
            client.submit_label(record.case_id, (DCMQI / "ct-3slice" / "02.dcm").read_bytes(), "alice",
                                file_format=".dcm")
        assert refused.value.status == 422
        assert client.case(record.case_id).state == "labeled"
    finally:
        core.shutdown()
