"""Issue 14 item 2: one progress model over a whole job (preprocess, train + validate, compare with the parent,
rank, write): the bar does not reach 100 % when training ends, the ETA covers what follows, and estimates come
from measured units (this job's, then earlier jobs'), never a number before anything was measured."""

from __future__ import annotations

from typing import Any

import pytest

from activeseg.jobs.progress import JobPlan, ProgressModel

# A train-then-rank job: seconds per unit that the fake clock makes true.
PREPROCESS_S, STEP_S, VALIDATE_CASE_S, COMPARE_CASE_S, RANK_CASE_S, WRITE_CASE_S = 10.0, 1.0, 2.0, 4.0, 3.0, 0.5
EPOCHS, STEPS, VALIDATION, CANDIDATES, WRITTEN = 2, 5, 3, 10, 4
TOTAL_S = (PREPROCESS_S + EPOCHS * STEPS * STEP_S + EPOCHS * VALIDATION * VALIDATE_CASE_S
           + 2 * VALIDATION * COMPARE_CASE_S + CANDIDATES * RANK_CASE_S + WRITTEN * WRITE_CASE_S)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _job(history: dict[str, float] | None = None) -> tuple[ProgressModel, list[tuple[float, str, float, float | None]]]:
    """Run the job's event sequence; return the model and (time, phase, fraction, eta) after every event."""
    clock = Clock()
    plan = JobPlan(phases=["preprocess", "train", "compare_parent", "rank", "write"], validation_cases=VALIDATION,
                   compare_parent=True, rank_cases=CANDIDATES, write_cases=WRITTEN)
    model = ProgressModel(plan, history or {}, clock=clock)
    seen: list[tuple[float, str, float, float | None]] = []

    def event(seconds: float, data: dict[str, Any]) -> None:
        clock.now += seconds
        model.observe(data)
        fraction, eta = model.estimate()
        seen.append((clock.now, data["phase"], fraction, eta))

    event(0.0, {"phase": "preprocess"})
    event(PREPROCESS_S, {"phase": "preprocess", "ready": True, "validation_cases": VALIDATION, "compare_parent": True,
                         "epochs": EPOCHS, "steps_per_epoch": STEPS})
    for epoch in range(1, EPOCHS + 1):
        for step in range(1, STEPS + 1):
            event(STEP_S, {"phase": "train", "epoch": epoch, "epochs": EPOCHS, "step": step, "steps": STEPS})
        event(0.0, {"phase": "validate", "epoch": epoch, "epochs": EPOCHS, "running": True})
        event(VALIDATION * VALIDATE_CASE_S, {"phase": "validate", "epoch": epoch, "epochs": EPOCHS, "val_dice": 0.5})
    event(0.0, {"phase": "compare_parent", "step": 0, "steps": 2})
    for done in (1, 2):
        event(VALIDATION * COMPARE_CASE_S, {"phase": "compare_parent", "step": done, "steps": 2})
    for index in range(1, CANDIDATES + 1):
        event(RANK_CASE_S, {"phase": "rank", "step": index, "steps": CANDIDATES})
    event(0.0, {"phase": "write", "step": 0, "steps": WRITTEN})
    event(WRITTEN * WRITE_CASE_S, {"phase": "write", "step": WRITTEN, "steps": WRITTEN})
    return model, seen


def test_training_is_a_share_of_the_job_and_the_eta_covers_ranking() -> None:
    model, seen = _job()
    fractions = [fraction for _, _, fraction, _ in seen]
    assert fractions == sorted(fractions), "the bar never moves backwards"
    assert all(f < 1.0 for f in fractions), "only a finished job shows 100 %"
    # when training ends (after the last validation), the job is about a third done, not 100 %
    trained_at = PREPROCESS_S + EPOCHS * (STEPS * STEP_S + VALIDATION * VALIDATE_CASE_S)
    at_end_of_training = [s for s in seen if s[0] == trained_at and s[1] == "validate"][-1]
    true_fraction = trained_at / TOTAL_S
    assert at_end_of_training[2] == pytest.approx(true_fraction, abs=0.1)
    assert at_end_of_training[3] == pytest.approx(TOTAL_S - trained_at, rel=0.25)  # priors, not yet measured
    # during ranking the ETA is measured: within 10 % of the truth
    for now, phase, _, eta in seen:
        if phase == "rank" and now > trained_at + 2 * VALIDATION * COMPARE_CASE_S + RANK_CASE_S:
            assert eta == pytest.approx(TOTAL_S - now, rel=0.1, abs=1.0)
    assert model.timing["step_s"] == pytest.approx(STEP_S)
    assert model.timing["validate_case_s"] == pytest.approx(VALIDATE_CASE_S)
    assert model.timing["compare_case_s"] == pytest.approx(COMPARE_CASE_S)
    assert model.timing["rank_case_s"] == pytest.approx(RANK_CASE_S)


def test_no_eta_before_anything_is_measured_and_history_gives_one_early() -> None:
    _, fresh = _job()
    assert fresh[0][3] is None and fresh[1][3] is None  # preprocess of a first job: nothing measured yet
    first, _ = _job()
    _, informed = _job(history=first.timing)
    # an earlier job's units give an ETA as soon as the round's budget is known (its cases are ready)
    assert informed[1][3] == pytest.approx(TOTAL_S - PREPROCESS_S, rel=0.05)
    assert fresh[2][3] is not None  # a first job: from its first measured training step


def test_eta_counts_only_the_validated_epochs() -> None:
    """Issue 9: a round validates only its second half (training.validate_from); the ETA must not count a validation
    pass per epoch, and the measured seconds per validation case divide by the passes actually run."""
    clock = Clock()
    epochs, validated = 4, (3, 4)
    plan = JobPlan(phases=["preprocess", "train"], validation_cases=VALIDATION)
    history = {"step_s": STEP_S, "validate_case_s": VALIDATE_CASE_S, "preprocess_s": PREPROCESS_S}
    model = ProgressModel(plan, history, clock=clock)
    model.observe({"phase": "preprocess"})
    clock.now += PREPROCESS_S
    model.observe({"phase": "preprocess", "ready": True, "validation_cases": VALIDATION, "epochs": epochs,
                   "steps_per_epoch": STEPS, "validation_passes": len(validated)})
    expected = epochs * STEPS * STEP_S + len(validated) * VALIDATION * VALIDATE_CASE_S
    assert model.estimate()[1] == pytest.approx(expected, rel=0.01)
    for epoch in range(1, epochs + 1):
        for step in range(1, STEPS + 1):
            clock.now += STEP_S
            model.observe({"phase": "train", "epoch": epoch, "epochs": epochs, "step": step, "steps": STEPS})
        if epoch in validated:
            model.observe({"phase": "validate", "epoch": epoch, "epochs": epochs, "running": True})
            clock.now += VALIDATION * VALIDATE_CASE_S
            model.observe({"phase": "validate", "epoch": epoch, "epochs": epochs, "val_dice": 0.5})
            assert model.timing["validate_case_s"] == pytest.approx(VALIDATE_CASE_S)
    assert model.estimate()[1] == pytest.approx(0.0, abs=1e-6)


def test_a_retried_training_counts_its_second_attempt() -> None:
    """Issue 9: a round whose model missed a class trains again (``retry`` event): the ETA covers the whole second
    attempt, the measured seconds per step stay true, and ``retry`` is not a phase of its own."""
    clock = Clock()
    plan = JobPlan(phases=["preprocess", "train"], validation_cases=VALIDATION)
    model = ProgressModel(plan, {}, clock=clock)
    model.observe({"phase": "preprocess"})
    clock.now += PREPROCESS_S
    model.observe({"phase": "preprocess", "ready": True, "validation_cases": VALIDATION, "epochs": EPOCHS,
                   "steps_per_epoch": STEPS, "validation_passes": EPOCHS})

    def one_attempt() -> None:
        for epoch in range(1, EPOCHS + 1):
            for step in range(1, STEPS + 1):
                clock.now += STEP_S
                model.observe({"phase": "train", "epoch": epoch, "epochs": EPOCHS, "step": step, "steps": STEPS})
            model.observe({"phase": "validate", "epoch": epoch, "epochs": EPOCHS, "running": True})
            clock.now += VALIDATION * VALIDATE_CASE_S
            model.observe({"phase": "validate", "epoch": epoch, "epochs": EPOCHS, "val_dice": 0.5})

    one_attempt()
    assert model.estimate()[1] == pytest.approx(0.0, abs=1e-6)
    fraction_before = model.estimate()[0]
    model.observe({"phase": "retry", "attempt": 2, "attempts": 2, "unlearned": ["lesion"]})
    attempt = EPOCHS * STEPS * STEP_S + EPOCHS * VALIDATION * VALIDATE_CASE_S
    assert model.estimate()[1] == pytest.approx(attempt, rel=0.01)
    assert model.estimate()[0] == fraction_before  # never backwards
    one_attempt()
    assert model.estimate()[1] == pytest.approx(0.0, abs=1e-6)
    assert model.timing["step_s"] == pytest.approx(STEP_S) and "retry" not in plan.phases
