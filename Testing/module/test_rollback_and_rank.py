"""Issue 14 item 7 through the module's Logic on a real backend: the model versions with their validation Dice, a
rollback that re-ranks (so Next starts from the earlier model's prediction), and Rank for a stale queue."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .backend_support import make_store
from .test_logic_loop import ANNOTATOR, _label_next


@pytest.fixture()
def logic(ctx: Any, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A core logic with a local backend on 8 phantoms whose every round registers a version (the keep-the-parent
    rule has its own tests): (logic, phantom folder)."""
    pytest.importorskip("activeseg")
    from ActiveSegLib.logic import ActiveSegCoreLogic

    store, source = make_store(tmp_path, count=8)
    subprocess.run([sys.executable, "-m", "activeseg", "config", "--data", str(store), "--set",
                    "training.keep_better_parent=false", "--set", "training.class_balance=true"],
                   check=True, timeout=120, capture_output=True)
    core = ActiveSegCoreLogic(ctx)
    core.session.start_local_backend(sys.executable, str(store), timeout_s=120)
    try:
        yield core, source
    finally:
        core.shutdown()


def _succeeded(core: Any, job_id: str) -> None:
    assert core.training.wait_for_job(job_id, timeout_s=240, interval_s=0.25).status == "succeeded"


@pytest.mark.slow
def test_rollback_re_ranks_and_rank_refreshes_a_stale_queue(logic: tuple[Any, Path], ctx: Any) -> None:
    core, source = logic
    training = core.training
    _label_next(core, ctx, source), _label_next(core, ctx, source)
    _succeeded(core, training.retrain())
    _label_next(core, ctx, source)  # a validation case (served first): version 2 gets a validation Dice
    _succeeded(core, training.retrain())

    models = training.models()
    assert models.active == 2 and not models.queue_stale and training.queue_note(models) == ""
    choices = training.model_choices(models)
    assert [version for version, _ in choices] == [2, 1]
    v2 = models.models[1]
    assert v2.val_dice is not None and choices[0][1] == f"v2  round 2, Dice {v2.val_dice:.3f} (active)"

    # --- roll back to v1 from the list: the backend ranks with it; Next then starts from v1's prediction
    rolled = training.rollback(choices[1][0])
    assert rolled.model.version == 1 and rolled.model.active and rolled.rank_job is not None
    _succeeded(core, rolled.rank_job.job_id)
    models = training.models()
    assert models.active == 1 and models.queue_model == 1 and not models.queue_stale
    assert training.model_choices(models)[1][1].endswith("(active)")
    loaded = core.cases.load_next_case(ANNOTATOR)
    while loaded is not None and core.session.client.case(loaded.case_id).split == "val":
        loaded = core.cases.skip_current()  # validation cases come first and have no prediction: pass them
    assert loaded is not None and loaded.start_kind == "prediction"
    assert core.session.client.case(loaded.case_id).mdsc is not None

    # --- roll forward without ranking: the queue is stale and says so; Rank refreshes it
    forward = training.rollback(2, rank=False)
    assert forward.rank_job is None and forward.queue_stale
    models = training.models()
    assert models.queue_stale and "chosen by v1, not the active v2" in training.queue_note(models)
    _succeeded(core, training.rank())
    models = training.models()
    assert models.queue_model == 2 and not models.queue_stale
