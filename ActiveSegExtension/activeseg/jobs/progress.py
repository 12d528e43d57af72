"""One progress model over every phase of a job: a completed fraction and an ETA that cover the whole job.

A training job runs ``preprocess`` -> ``train`` (with a ``validate`` pass after each epoch) -> ``compare_parent``
(when there is an active model and labelled validation cases) -> ``rank`` -> ``write`` (with ``then_rank``);
a ranking job runs ``rank`` -> ``write``. The engine reports counters within a phase (step/steps, epoch/epochs,
cases); this model turns them into seconds:

* each phase's remaining work is ``units left x seconds per unit``: training steps, validation cases (one pass
  per epoch), comparison cases (two models each), ranked cases, written cases;
* seconds per unit come, in this order, from this job's own measurement of that phase, from the most recent
  earlier job that measured it (:attr:`ProgressModel.timing`, kept in each job's result), or from a prior
  relative to a measured unit (see :data:`_PRIORS`); before anything is measured the ETA is unknown (``None``),
  never a guess shown as a number;
* ``fraction = elapsed / (elapsed + remaining)``, never decreasing (a re-estimate moves the ETA, not the bar
  backwards), and below 1 until the job has finished.

All times are seconds of wall-clock time (``time.monotonic``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["JobPlan", "ProgressModel", "PHASE_LABELS"]

#: What each phase is called on screen.
PHASE_LABELS = {
    "starting": "starting",
    "preprocess": "preparing cases",
    "train": "training",
    "validate": "validating",
    "compare_parent": "comparing with the previous model",
    "rank": "ranking cases",
    "write": "writing queue and pseudo-labels",
    "pseudo-label": "writing pseudo-labels",
    "done": "done",
}

# Seconds per unit of a phase when neither this job nor an earlier one measured it: (unit it is relative to,
# factor). A validation case is a whole-volume sliding-window pass (about what a few training steps cost on
# phantoms and small CTs); a comparison case runs two models on the source grid; a ranked case runs the three
# heads and writes an uncertainty map. They are replaced by measurements as soon as there are any.
_PRIORS: dict[str, tuple[str, float]] = {
    "validate_case_s": ("step_s", 4.0),
    "compare_case_s": ("validate_case_s", 2.5),
    "rank_case_s": ("validate_case_s", 1.5),
    "write_case_s": ("rank_case_s", 0.2),
}


@dataclass
class JobPlan:
    """The work a job will do, in units; filled in as the engine reports it.

    Attributes:
        phases: the phases in order.
        epochs, steps_per_epoch: training budget (from the first ``train`` event).
        validation_cases: labelled validation cases (one pass each per validated epoch; two models each in
            compare_parent).
        validation_passes: validated epochs (``training.validate_from``); 0 until the engine reports it, then
            every epoch is assumed validated.
        compare_parent: whether the round compares with the active model.
        rank_cases: candidates the ranking will score.
        write_cases: cases whose prediction or pseudo-label will be written.
    """

    phases: list[str]
    epochs: int = 0
    steps_per_epoch: int = 0
    validation_cases: int = 0
    validation_passes: int = 0
    compare_parent: bool = False
    rank_cases: int = 0
    write_cases: int = 0


@dataclass
class _Phase:
    started: float
    done_units: float = 0.0
    finished: float | None = None


@dataclass
class ProgressModel:
    """Whole-job fraction and ETA from progress events.

    Args:
        plan: what the job will do (updated from the events).
        history: seconds per unit measured by earlier jobs (``step_s``, ``validate_case_s``, ``compare_case_s``,
            ``rank_case_s``, ``write_case_s``, ``preprocess_s``).
        clock: monotonic seconds (tests pass a fake one).
    """

    plan: JobPlan
    history: dict[str, float] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.started = self.clock()
        self.phase = "starting"
        self._phases: dict[str, _Phase] = {}
        self._measured: dict[str, float] = {}
        self._validation_passes_done = 0
        self._validate_started: float | None = None
        self._validate_seconds = 0.0
        self._fraction = 0.0
        self._last_event = self.started

    # ------------------------------------------------------------------ events

    def observe(self, event: dict[str, Any]) -> None:
        """Take one engine event (see :mod:`activeseg.pipeline.training_round` and ``ranking_round``)."""
        now = self.clock()
        try:
            self._observe(event, now)
        finally:
            self._last_event = now

    def _observe(self, event: dict[str, Any], now: float) -> None:
        phase = str(event.get("phase") or self.phase)
        plan = self.plan
        if phase == "retry":
            # The round trains again (a class was not learned): the training phase's work starts over, so the ETA
            # covers a whole attempt more; the completed fraction holds until elapsed time catches up.
            train = self._phases.get("train")
            if train is not None:
                train.started, train.done_units, train.finished = now, 0.0, None
            self._validation_passes_done, self._validate_seconds, self._validate_started = 0, 0.0, None
            self._enter("train", now)
            return
        if phase == "preprocess" and event.get("ready"):
            # The cases are ready: training starts now (its first step is reported only once done).
            plan.validation_cases = int(event.get("validation_cases") or 0)
            plan.compare_parent = bool(event.get("compare_parent"))
            plan.epochs = int(event.get("epochs") or plan.epochs)
            plan.steps_per_epoch = int(event.get("steps_per_epoch") or plan.steps_per_epoch)
            plan.validation_passes = int(event.get("validation_passes") or plan.validation_passes)
            self._enter("preprocess", now)
            self._last_event = now
            self._enter("train", now)
            return
        if phase in ("train", "validate") and event.get("epochs"):
            plan.epochs = int(event["epochs"])
            if phase == "train" and event.get("steps"):
                plan.steps_per_epoch = int(event["steps"])
        if phase == "validate":
            if event.get("running"):
                self._validate_started = now
            elif self._validate_started is not None:
                self._validate_seconds += now - self._validate_started
                self._validate_started = None
                self._validation_passes_done += 1
                if plan.validation_cases:
                    self._measured["validate_case_s"] = self._validate_seconds / (self._validation_passes_done * plan.validation_cases)
            phase = "train"  # validation is part of the training phase's budget
        if phase == "write" and event.get("steps"):
            plan.write_cases = int(event["steps"])
        if phase == "rank" and event.get("steps"):
            plan.rank_cases = int(event["steps"])
        self._enter(phase, now)
        current = self._phases.get(phase)
        if current is None:
            return
        if phase == "train" and event.get("step") is not None and event.get("epoch") and plan.steps_per_epoch:
            current.done_units = (int(event["epoch"]) - 1) * plan.steps_per_epoch + int(event["step"])
            train_seconds = now - current.started - self._validate_seconds
            if current.done_units > 0 and train_seconds > 0:
                self._measured["step_s"] = train_seconds / current.done_units
        elif event.get("step") is not None and phase != "preprocess":
            current.done_units = float(event["step"])
            if current.done_units > 0:
                key = {"rank": "rank_case_s", "write": "write_case_s", "compare_parent": "compare_case_s",
                       "pseudo-label": "write_case_s"}.get(phase)
                if key:
                    per_model = 1 if phase != "compare_parent" else max(1, plan.validation_cases)
                    self._measured[key] = (now - current.started) / (current.done_units * per_model)

    def _enter(self, phase: str, now: float) -> None:
        """Move to ``phase``: the previous one ended with its last event (engines report a unit once it is done,
        so the first event of a phase comes one unit after the phase began)."""
        if phase == self.phase or phase in ("starting",):
            return
        boundary = self._last_event
        previous = self._phases.get(self.phase)
        if previous is not None and previous.finished is None:
            previous.finished = boundary
            if self.phase == "preprocess":
                self._measured["preprocess_s"] = boundary - previous.started
        if phase not in self._phases:
            self._phases[phase] = _Phase(started=boundary if self._phases or phase != "preprocess" else now)
        if phase not in self.plan.phases and phase != "done":
            self.plan.phases.append(phase)
        self.phase = phase

    # ------------------------------------------------------------------ estimates

    def unit_seconds(self, key: str) -> float | None:
        """Seconds per unit: this job's measurement, else an earlier job's, else a prior (``None`` if none)."""
        for source in (self._measured, self.history):
            value = source.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
                return float(value)
        prior = _PRIORS.get(key)
        if prior is not None:
            base = self.unit_seconds(prior[0])
            return None if base is None else base * prior[1]
        return None

    def _remaining(self, phase: str) -> float | None:
        """Seconds left in ``phase`` (all of it when not started); ``None`` when it cannot be estimated yet."""
        plan, state = self.plan, self._phases.get(phase)
        if state is not None and state.finished is not None:
            return 0.0
        done = state.done_units if state is not None else 0.0
        if phase == "preprocess":
            if state is None:
                return self.unit_seconds("preprocess_s")
            return 0.0 if self._phases.get("train") else max(0.0, (self.unit_seconds("preprocess_s") or 0.0)
                                                              - (self.clock() - state.started))
        if phase == "train":
            step, case = self.unit_seconds("step_s"), self.unit_seconds("validate_case_s")
            if step is None or not plan.epochs or not plan.steps_per_epoch:
                return None
            steps_left = plan.epochs * plan.steps_per_epoch - done
            passes_left = max(0, (plan.validation_passes or plan.epochs) - self._validation_passes_done)
            left = steps_left * step + passes_left * plan.validation_cases * (case or 0.0)
            if self._validate_started is not None:  # a validation pass is under way
                left -= min(plan.validation_cases * (case or 0.0), self.clock() - self._validate_started)
            return max(0.0, left)
        if phase == "compare_parent":
            if not plan.compare_parent:
                return 0.0
            case = self.unit_seconds("compare_case_s")
            return None if case is None else (2 - done) * plan.validation_cases * case
        key, units = {"rank": ("rank_case_s", plan.rank_cases), "write": ("write_case_s", plan.write_cases),
                      "pseudo-label": ("write_case_s", plan.write_cases)}.get(phase, ("", 0))
        if not key:
            return 0.0
        seconds = self.unit_seconds(key)
        return None if seconds is None else max(0.0, units - done) * seconds

    def estimate(self) -> tuple[float, float | None]:
        """(fraction of the whole job done in [0, 1), seconds left or ``None`` while unknown)."""
        remaining = 0.0
        for phase in self.plan.phases:
            left = self._remaining(phase)
            if left is None:
                return self._fraction, None
            remaining += left
        elapsed = self.clock() - self.started
        if elapsed + remaining > 0:
            self._fraction = max(self._fraction, min(0.99, elapsed / (elapsed + remaining)))
        return self._fraction, remaining

    def snapshot(self) -> dict[str, Any]:
        """The fields a progress row gets: ``fraction``, ``eta_s`` (whole job), ``elapsed_s``, ``phase_label``."""
        fraction, remaining = self.estimate()
        return {
            "fraction": round(fraction, 4),
            "eta_s": None if remaining is None else round(remaining, 1),
            "elapsed_s": round(self.clock() - self.started, 1),
            "phase_label": PHASE_LABELS.get(self.phase, self.phase),
            "phases": list(self.plan.phases),
        }

    @property
    def timing(self) -> dict[str, float]:
        """Seconds per unit this job measured (kept in its result for the next job's estimates)."""
        return {key: round(value, 6) for key, value in self._measured.items()}
