"""Issue 14 item 7 on the command line: ``activeseg activate`` says when the queue is another model's picks and
``--rank`` re-ranks with the version it activates; ``activeseg status`` names a stale queue."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from activeseg.cli.main import main
from activeseg.io.volumes import read_volume
from activeseg.store.datastore import Datastore

from ..tiny import create_store, tiny_config


@pytest.mark.slow
def test_activate_reports_a_stale_queue_and_rank_refreshes_it(
        phantom_source: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config()
    config.training.keep_better_parent = False  # both rounds register a version (the rule has its own tests)
    store = create_store(tmp_path / "store", phantom_source, config)
    for record in store.cases(split="train")[:3]:
        label = read_volume(phantom_source / "labelsTr" / f"{record.case_id}.nii.gz", dtype=np.uint8)
        store.submit_label(record.case_id, label, no_finding=not label.array.any())
    data = ["--data", str(store.root)]
    for _ in range(2):
        assert main(["train", *data, "--quiet"]) == 0
    assert main(["rank", *data, "--quiet"]) == 0
    assert store.queue_model() == 2 and not store.queue_stale()

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["activate", *data, "1"]) == 0
    assert any("the queue was chosen by v2, not v1" in line and "activeseg rank" in line for line in caplog.messages)
    capsys.readouterr()
    assert main(["status", *data]) == 0
    assert "queue chosen by v2, not the active v1" in capsys.readouterr().out

    assert main(["activate", *data, "1", "--rank", "--quiet"]) == 0
    reopened = Datastore(store.root)
    assert reopened.active_version() == 1 and reopened.queue_model() == 1 and not reopened.queue_stale()
    capsys.readouterr()
    assert main(["status", *data]) == 0
    assert "queue chosen by" not in capsys.readouterr().out
