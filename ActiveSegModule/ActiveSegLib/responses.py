"""Typed answers of the backend's ``/v1`` API (frozen dataclasses), parsed from its JSON. Stdlib only.

Each class mirrors one of the backend's response schemas (``activeseg.api.schemas``: ``InfoOut``, ``CaseOut``,
``QueueOut``, ``JobOut``, ``ModelOut``, ``CurvePoint``...); ``Testing/module/test_protocol_agreement.py`` checks
that the field names agree. Parsing is strict about what the module relies on (a missing required field raises
:class:`~ActiveSegLib.errors.ProtocolError` naming it) and tolerant of additions (unknown fields are ignored, so a
newer backend still works).

Times are POSIX seconds; fractions and Dice values are in [0, 1]; volumes (``foreground_ml``) in millilitres.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ProtocolError
from .protocol import FINISHED_JOB_STATES

__all__ = [
    "Info",
    "Case",
    "CaseList",
    "QueueItem",
    "Queue",
    "EpochPoint",
    "JobProgress",
    "Job",
    "ModelVersion",
    "ModelList",
    "Activation",
    "CurvePoint",
]

_T = TypeVar("_T")


def _fields(cls: type[_T], data: Any, what: str, **converted: Any) -> _T:
    """``cls(**...)`` from a JSON object: required fields must be present, unknown ones are dropped."""
    if not isinstance(data, Mapping):
        raise ProtocolError(f"backend sent {type(data).__name__} where {what} (a JSON object) was expected")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in converted:
            values[f.name] = converted[f.name]
        elif f.name in data:
            values[f.name] = data[f.name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ProtocolError(f"backend's {what} lacks the field {f.name!r} (protocol mismatch: is it an older "
                                f"or newer ActiveSeg backend?)")
    return cls(**values)


def _list(data: Any, key: str, what: str) -> list[Any]:
    if not isinstance(data, Mapping) or not isinstance(data.get(key), list):
        raise ProtocolError(f"backend's {what} lacks the list {key!r}")
    return list(data[key])


@dataclass(frozen=True)
class Info:
    """``GET /v1/info``.

    Attributes:
        version: the backend's version. device: where jobs run (``cpu``, ``cuda:0 (...)``).
        labels: class value -> name, background (0) excluded.
        label_colours: class value -> RGB in [0, 1] of every class, as the backend's ``.seg.nrrd`` files colour
            them (older backends: only where the datastore sets one; the module's palette for the others).
        label_codes: class value -> coded concept ``scheme^value^meaning`` (e.g. ``SCT^10200004^Liver``) where known.
        active_model: active model version, or ``None`` before the first training round.
        counts: cases per state, plus ``total`` and ``val``.
        running_job: id of the running job, or ``None``.
        auth_required: whether requests need a bearer token. max_upload_bytes: largest label upload accepted.
    """

    version: str
    device: str
    labels: dict[int, str]
    active_model: int | None
    counts: dict[str, int]
    running_job: str | None
    auth_required: bool = False
    max_upload_bytes: int = 0
    name: str = "activeseg"
    api_version: str = "v1"
    label_colours: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    label_codes: dict[int, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> Info:
        """Parse an ``/v1/info`` object (label keys arrive as strings)."""
        if not isinstance(data, Mapping):
            raise ProtocolError(f"backend sent {type(data).__name__} where info (a JSON object) was expected")
        raw = data.get("labels")
        try:
            labels = {int(k): str(v) for k, v in (raw or {}).items() if int(k) != 0}
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"backend's info has label values that are not integers: {raw!r}") from exc
        try:
            colours = {int(k): (float(v[0]), float(v[1]), float(v[2]))
                       for k, v in dict(data.get("label_colours") or {}).items()}
            codes = {int(k): str(v) for k, v in dict(data.get("label_codes") or {}).items()}
        except (TypeError, ValueError, IndexError) as exc:
            raise ProtocolError(f"backend's info has malformed label colours or codes: {exc}") from exc
        return _fields(cls, data, "info", labels=labels, counts={str(k): int(v) for k, v in
                                                                   dict(data.get("counts") or {}).items()},
                       label_colours=colours, label_codes=codes)


@dataclass(frozen=True)
class Case:
    """One case (``GET /v1/cases/{id}`` and wherever a case is returned).

    Attributes:
        case_id: the case. split: ``train`` or ``val``. state: one of :data:`~ActiveSegLib.protocol.CASE_STATES`.
        has_label / label_source / no_finding: its expert or accepted label, if any.
        has_pseudo / pseudo_model: its pending pseudo-label and the model version that wrote it.
        lease_holder / lease_expires: who holds it until when (POSIX s), if anyone.
        mdsc: M-DSC under the active model (low = uncertain). confidence: mean max-softmax in [0, 1].
        foreground_ml: predicted foreground volume, ml. route: ``strong``, ``weak`` or ``None`` before ranking.
        display_name: a name the annotator recognises (DICOM datastores: series description and study date), or
            ``None``; never patient name, id or birth date. Shown, never logged (it may identify a visit).
    """

    case_id: str
    state: str
    display_name: str | None = None
    split: str = "train"
    has_label: bool = False
    label_source: str | None = None
    no_finding: bool = False
    has_pseudo: bool = False
    pseudo_model: int | None = None
    lease_holder: str | None = None
    lease_expires: float | None = None
    mdsc: float | None = None
    confidence: float | None = None
    foreground_ml: float | None = None
    route: str | None = None

    @property
    def name(self) -> str:
        """What the queue and review tables show: the display name, else the case id."""
        return self.display_name or self.case_id

    @classmethod
    def from_json(cls, data: Any) -> Case:
        """Parse a case object."""
        return _fields(cls, data, "case")


@dataclass(frozen=True)
class CaseList:
    """``GET /v1/cases``: the cases (by id) and the active model version."""

    active_model: int | None
    cases: list[Case]

    @classmethod
    def from_json(cls, data: Any) -> CaseList:
        return _fields(cls, data, "case list", cases=[Case.from_json(c) for c in _list(data, "cases", "case list")])


@dataclass(frozen=True)
class QueueItem:
    """One place in the strong queue: 1-based ``rank`` (most uncertain first) and the case."""

    rank: int
    case: Case


@dataclass(frozen=True)
class Queue:
    """``GET /v1/queue``: the strong queue under ``active_model``, most uncertain first."""

    active_model: int | None
    items: list[QueueItem]

    @classmethod
    def from_json(cls, data: Any) -> Queue:
        items = []
        for item in _list(data, "items", "queue"):
            if not isinstance(item, Mapping) or not isinstance(item.get("rank"), int):
                raise ProtocolError(f"backend's queue item has no integer 'rank': {item!r}"[:300])
            items.append(QueueItem(rank=int(item["rank"]), case=Case.from_json(item.get("case"))))
        return _fields(cls, data, "queue", items=items)


@dataclass(frozen=True)
class EpochPoint:
    """One finished epoch of a training job: mean loss and validation Dice (``None`` without validation labels)."""

    epoch: int | None = None
    loss: float | None = None
    val_dice: float | None = None


@dataclass(frozen=True)
class JobProgress:
    """A running job's progress.

    Attributes:
        phase: ``starting``, ``preprocess``, ``train``, ``validate``, ``compare_parent``, ``rank``, ``write``,
            ``pseudo-label``, ``done``. phase_label: the phase in words.
        fraction: share of the whole job done, in [0, 1] (all phases: training, validation, ranking, writing).
        epoch / epochs, step / steps: 1-based counters within the phase, when known.
        loss: current mean training loss. val_dice: last validation Dice in [0, 1].
        eta_s: seconds left in the whole job (``None`` while not yet estimable). elapsed_s: seconds since start.
        phase_eta_s: seconds left in the current phase (the engine's own estimate).
        history: this job's finished epochs (a live loss/Dice curve).
    """

    phase: str | None = None
    phase_label: str | None = None
    fraction: float | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    val_dice: float | None = None
    eta_s: float | None = None
    phase_eta_s: float | None = None
    elapsed_s: float | None = None
    history: list[EpochPoint] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Any) -> JobProgress:
        data = data if isinstance(data, Mapping) else {}
        history = [_fields(EpochPoint, p, "epoch point") for p in data.get("history") or []]
        return _fields(cls, data, "job progress", history=history)


@dataclass(frozen=True)
class Job:
    """A job (``GET /v1/jobs/{id}``).

    Attributes:
        job_id: its id. kind: ``train``, ``rank`` or ``pseudo-label``.
        status: ``running`` or one of :data:`~ActiveSegLib.protocol.FINISHED_JOB_STATES`.
        progress: see :class:`JobProgress`. error: the failure's message. log_tail: its last log lines.
        result: what it produced (``model_version``, ranking summary...), once succeeded.
        params / created / started / finished / updated / cancel_requested: bookkeeping (POSIX s).
    """

    job_id: str
    kind: str
    status: str
    progress: JobProgress = field(default_factory=JobProgress)
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    updated: float | None = None
    cancel_requested: bool = False

    @classmethod
    def from_json(cls, data: Any) -> Job:
        progress = JobProgress.from_json(data.get("progress") if isinstance(data, Mapping) else None)
        return _fields(cls, data, "job", progress=progress)

    @property
    def done(self) -> bool:
        """Whether the job finished (no further change will come)."""
        return self.status in FINISHED_JOB_STATES

    @property
    def model_version(self) -> int | None:
        """The model version a succeeded training round registered, if any."""
        value = (self.result or {}).get("model_version")
        return int(value) if isinstance(value, int) else None

    @property
    def outcome(self) -> str:
        """What a finished job did, in words (empty while it runs).

        A training round whose new weights lost to the active model on validation registers nothing; the backend
        says so (``result.message``: "kept the previous model v1: the new weights scored 0.039 against 0.127 ..."),
        and that is what is shown, never a bare "succeeded".
        """
        if not self.done:
            return ""
        if self.status != "succeeded":
            return f"{self.kind} {self.status}" + (f": {self.error}" if self.error else "")
        result = self.result or {}
        message = result.get("message")
        text = str(message) if isinstance(message, str) and message else f"{self.kind} finished"
        rank = result.get("rank") if self.kind == "train" else result
        if isinstance(rank, Mapping) and isinstance(rank.get("strong"), list):
            text += (f"; ranked the pool: {len(rank['strong'])} case(s) queued, "
                     f"{len(rank.get('weak') or [])} pseudo-labelled")
        return text

    @property
    def registered_new_model(self) -> bool:
        """Whether a finished training job added a model version (False when it kept the previous model)."""
        return self.kind == "train" and self.status == "succeeded" and (self.result or {}).get("registered", True) is True

    def describe(self) -> tuple[float | None, str]:
        """Completed fraction and a one-line summary for a progress bar and label.

        Returns:
            (fraction in [0, 1] or ``None`` when unknown, text such as ``"train: train, epoch 2/5, step 3/10,
            loss 0.412, ETA 1 min 5 s"``).
        """
        if self.done:
            return (1.0 if self.status == "succeeded" else None), self.outcome
        p = self.progress
        phase = p.phase or self.status
        fraction: float | None = None
        parts = [f"{self.kind}: {p.phase_label or phase}"]
        if isinstance(p.fraction, (int, float)) and math.isfinite(p.fraction):
            fraction = min(1.0, max(0.0, float(p.fraction)))  # the backend's whole-job estimate
        if p.epoch and p.epochs:
            parts.append(f"epoch {p.epoch}/{p.epochs}")
            if fraction is None:  # an older backend: the training phase's share only
                per_epoch = p.steps or 1
                within = per_epoch if phase == "validate" else (p.step or 0)  # validation follows a finished epoch
                fraction = min(1.0, max(0.0, ((p.epoch - 1) * per_epoch + within) / (p.epochs * per_epoch)))
        if p.step and p.steps:
            parts.append(f"step {p.step}/{p.steps}")
        if isinstance(p.loss, (int, float)):
            parts.append(f"loss {p.loss:.3f}")
        if isinstance(p.val_dice, (int, float)):
            parts.append(f"val Dice {p.val_dice:.3f}")
        if isinstance(p.eta_s, (int, float)) and math.isfinite(p.eta_s):
            minutes, seconds = divmod(int(round(p.eta_s)), 60)
            parts.append(f"ETA {minutes} min {seconds} s" if minutes else f"ETA {seconds} s")
        elif phase not in ("done",):
            parts.append("ETA: estimating")
        return fraction, ", ".join(parts)


@dataclass(frozen=True)
class ModelVersion:
    """A model version (``GET /v1/models/{version}``): its parent, creation time (POSIX s), validation Dice and
    round metrics.

    Attributes:
        val_dice: mean Dice in [0, 1] on the fixed validation split, or ``None`` (no labelled validation case then).
        val_dice_classes: validation Dice per class name.
    """

    version: int
    active: bool
    parent: int | None = None
    created: float | None = None
    val_dice: float | None = None
    val_dice_classes: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Any) -> ModelVersion:
        return _fields(cls, data, "model version")


@dataclass(frozen=True)
class ModelList:
    """``GET /v1/models``: every version, the active one, and the one whose ranking chose the queue.

    Attributes:
        queue_stale: a model is active but the queue is another's picks (after a rollback without ranking, or a
            round without ranking): offer Rank.
    """

    active: int | None
    models: list[ModelVersion]
    queue_model: int | None = None
    queue_stale: bool = False

    @classmethod
    def from_json(cls, data: Any) -> ModelList:
        models = [ModelVersion.from_json(m) for m in _list(data, "models", "model list")]
        return _fields(cls, data, "model list", models=models)


@dataclass(frozen=True)
class Activation:
    """``POST /v1/models/{version}/activate``: the now-active version, the queue's state and the ranking job started
    with it (``None`` when the queue was already its own, or ranking was not asked for)."""

    model: ModelVersion
    queue_stale: bool
    message: str
    queue_model: int | None = None
    rank_job: Job | None = None

    @classmethod
    def from_json(cls, data: Any) -> Activation:
        if not isinstance(data, Mapping):
            raise ProtocolError("backend's activation answer is not a JSON object")
        job = data.get("rank_job")
        return _fields(cls, data, "activation", model=ModelVersion.from_json(data.get("model")),
                       rank_job=Job.from_json(job) if job is not None else None)


@dataclass(frozen=True)
class CurvePoint:
    """One point of the learning curve (one model version), ``GET /v1/learning-curve``.

    Attributes:
        version: model version. round: its training round.
        n_expert / n_pseudo: expert (and accepted) labels and pseudo-labels it was trained on, if known.
        val_dice: mean Dice on the fixed validation split in [0, 1], or ``None`` (no validation labels yet).
        final_loss: the last epoch's mean training loss. active: whether it is the active version.
    """

    version: int
    active: bool
    round: int | None = None
    n_expert: int | None = None
    n_pseudo: int | None = None
    val_dice: float | None = None
    final_loss: float | None = None

    @classmethod
    def from_json(cls, data: Any) -> CurvePoint:
        return _fields(cls, data, "learning-curve point")
