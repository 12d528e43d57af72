"""The one typed configuration object, stored as JSON in each datastore (``.activeseg/config.json``).

Settings are grouped by concern (network, training, dsal, alnt, intensity). Any setting can be
overridden from the command line as ``--set section.name=value`` (e.g. ``--set alnt.lambda_=0.5``
or its alias ``alnt.lambda=0.5``); the top-level ones as ``--set val_fraction=0.25`` and
``--set lease_seconds=600``. The label set: ``--set labels=liver,tumour`` (values 1, 2, ...),
``--set labels.3=vessel`` (one value), ``--set label_colours.1=#d96c4e`` and
``--set label_codes.1=SCT^10200004^Liver`` (a coded concept, scheme^value^meaning; known names get
SNOMED CT codes without it). :func:`describe_settings` lists every setting with its meaning and range
(``activeseg config --help``).

Length (~510 lines): one dataclass field per setting, each with the docstring ``activeseg config --help`` prints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activeseg.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "NetworkConfig",
    "TrainingConfig",
    "DsalConfig",
    "AlntConfig",
    "IntensityConfig",
    "Config",
    "apply_overrides",
    "describe_settings",
    "KNOWN_TERMS",
]

#: SNOMED CT concepts (scheme^value^meaning, as Slicer's and DICOM's terminologies write them) of common CT
#: segmentation classes, by lower-case name; a label named so gets the code unless ``label_codes`` says otherwise.
KNOWN_TERMS: dict[str, str] = {
    "lung": "SCT^39607008^Lung",
    "lungs": "SCT^39607008^Lung",
    "liver": "SCT^10200004^Liver",
    "spleen": "SCT^78961009^Spleen",
    "pancreas": "SCT^15776009^Pancreas",
    "kidney": "SCT^64033007^Kidney",
    "kidneys": "SCT^64033007^Kidney",
    "heart": "SCT^80891009^Heart",
    "aorta": "SCT^15825003^Aorta",
    "bone": "SCT^272673000^Bone",
    "lesion": "SCT^52988006^Lesion",
    "tumour": "SCT^108369006^Neoplasm",
    "tumor": "SCT^108369006^Neoplasm",
    "nodule": "SCT^27925004^Nodule",
    "hippocampus": "SCT^5366008^Hippocampus",
    "prostate": "SCT^41216001^Prostate",
    "bladder": "SCT^89837001^Urinary bladder",
    "colon": "SCT^71854001^Colon",
    "stomach": "SCT^69695003^Stomach",
    "gallbladder": "SCT^28231008^Gallbladder",
    "vessel": "SCT^59820001^Blood vessel",
}


@dataclass
class NetworkConfig:
    """Deeply supervised 3D U-Net shape (``model/network.py``); by default planned from the data.

    Attributes:
        channels: feature channels per resolution level, finest first (at least 3 levels). Empty = planned:
            ``base_channels`` doubled per level up to ``max_channels``, as many levels as the plan's strides.
        base_channels: planned channels at full resolution.
        max_channels: cap of the planned channels.
        dropout: dropout probability in the decoder blocks, active in training and sampled by the MC-dropout
            baseline. 0 by default: DSAL needs none, and without it ALNT's step reuses the expert backward (fused).
    """

    channels: tuple[int, ...] = ()
    base_channels: int = 16
    max_channels: int = 256
    dropout: float = 0.0


@dataclass
class TrainingConfig:
    """One training round. Empty or zero values are taken from the plan (``activeseg status`` shows it).

    Attributes:
        patch_size: crop and sliding-window size, voxels, array order (k, j, i) = (z, y, x); empty = planned.
        target_spacing: mm per voxel the network sees, (k, j, i); empty = planned (median spacing).
        max_patch_voxels: the plan's memory budget for one crop; 0 = 128^3 on CUDA, 64^3 on the CPU.
        batch_size: expert crops per step.
        epochs_first: validation points of a round trained from scratch (an "epoch" is a share of the round's steps).
        epochs_per_round: validation points of a warm-started round.
        validate_from: share of a round's steps after which validation starts: an epoch that ends earlier is not
            validated, so its weights cannot be selected; the last epoch is always validated, 0 validates every
            epoch. In the 34 rounds of the issue-11 hippocampus campaign every selected epoch ended at 40 % of its
            round or later (2 at 40 %, 32 at 60 % or later), so 0.4 gives up none of them. On a full-size CT,
            validation had taken three quarters of a round.
        steps_per_epoch: optimiser steps per epoch; 0 = the round's budget (below) divided by the epochs.
        steps_base: a round's budget: ``steps_base + steps_per_label * labelled volumes``, at most ``max_steps``.
        steps_per_label: see ``steps_base``.
        max_steps: see ``steps_base``.
        optimizer: "adamw" (AdamW, linear warm-up then cosine decay) or "sgd" (SGD, Nesterov momentum 0.99, poly
            decay, as nnU-Net).
        learning_rate: peak learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        warmup_fraction: share of the round's steps with a linearly rising learning rate.
        warm_start: start a round from the active model's weights (and its plan) instead of from scratch (DSAL's
            schedule; the first round, and a round after a class was added to the labels, train from scratch).
            Measured on hippocampus MRI at equal steps per round (RESULTS.md, issue 9, "Warm start or from scratch"):
            from-scratch rounds of a few hundred steps often missed a class, the keep-the-parent rule then held the
            older model, and the new labels went unused.
        unlearned_class_dice: a class present in the validation labels whose validation Dice is below this has not
            been learned: the round says so, a warm start from that model starts over instead, and its ranking writes
            no pseudo-labels (each would miss the class). 0 turns the rule off.
        unlearned_retries: a round whose model has not learned a class (``unlearned_class_dice``) trains again from
            a new initialisation and crop seed (from scratch, also in a warm-started round), up to this many times,
            and keeps the attempt with the best validation Dice. Whether a short round learns a class depended on the
            seed: hippocampus seed 2's initial set gave Posterior 0.000 with its own seed and 0.79 / 0.80 with two
            others (RESULTS.md, issue 9).
        keep_better_parent: a round whose weights score below the active model on the validation split registers
            nothing (the active model stays); off: every round registers its weights.
        foreground_crop_fraction: share of crops centred on a foreground voxel (nnU-Net: 1/3).
        augment: MONAI random augmentation of training crops (``model/sampling.py``).
        mirroring: "auto" (mirror along ``flip_axes`` only when there is one foreground class: classes that differ
            by side or position, such as left/right organs, become indistinguishable when mirrored), "on" or "off".
        flip_axes: axes (array order) that mirroring may use.
        tta_flips: mirror test-time augmentation at inference along the plan's mirror axes (1 + one pass per axis).
        loader_workers: DataLoader worker processes preparing batches (0 = in the training process).
        seed: random seed of crops, augmentation and initialisation.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        num_threads: torch CPU threads (0 = torch's default).
        class_balance: weight the cross-entropy per class by inverse square-root voxel frequency of the expert
            labels (``model.loss.balanced_class_weights``), for small lesions within a short budget.
        processes: data-parallel processes (one per GPU; gloo on the CPU): above 1 a training round runs under
            torchrun with DDP, ``batch_size`` crops per process, and a ranking shares its passes among them (README
            "Several GPUs and nodes").
        launcher: command template that starts the ranks instead of torchrun on this machine (e.g. through srun);
            ``{entry}`` is what torchrun runs, ``{nproc}`` the processes, ``{python}`` this interpreter; empty =
            ``{python} -m torch.distributed.run --standalone --nproc-per-node {nproc} {entry}``.
        distributed_timeout_s: how long a rank waits for the others at a collective, seconds (the others wait
            while rank 0 prepares the cases and validates).
    """

    patch_size: tuple[int, ...] = ()
    target_spacing: tuple[float, ...] = ()
    max_patch_voxels: int = 0
    batch_size: int = 2
    epochs_first: int = 10
    epochs_per_round: int = 10
    validate_from: float = 0.4
    steps_per_epoch: int = 0
    steps_base: int = 250
    steps_per_label: int = 25
    max_steps: int = 4000
    optimizer: str = "adamw"
    learning_rate: float = 2e-3
    weight_decay: float = 3e-5
    warmup_fraction: float = 0.05
    warm_start: bool = True
    keep_better_parent: bool = True
    unlearned_class_dice: float = 0.05
    unlearned_retries: int = 1
    foreground_crop_fraction: float = 0.33
    augment: bool = True
    mirroring: str = "auto"
    flip_axes: tuple[int, ...] = (0, 1, 2)
    tta_flips: bool = False
    loader_workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_threads: int = 0
    class_balance: bool = False
    processes: int = 1
    launcher: str = ""
    distributed_timeout_s: float = 7200.0


@dataclass
class DsalConfig:
    """DSAL routing (ALGORITHMS.md).

    Attributes:
        strong_per_round: K, cases queued for the radiologist per round (lowest M-DSC).
        weak_start_round: first round that writes pseudo-labels (original: 5; 1-based rounds).
        weak_initial: pseudo-labels at ``weak_start_round`` (original: 20).
        weak_increment: extra pseudo-labels per later round (original: 20).
        confidence_bins: histogram bins of confidence; the top bin's cases are weak candidates (original: 10).
        foreground_tiebreak: among equal M-DSC, rank cases with predicted foreground as more uncertain,
            so "both heads found nothing" (Dice 1 by convention) does not hide a missed lesion.
    """

    strong_per_round: int = 4
    weak_start_round: int = 2
    weak_initial: int = 4
    weak_increment: int = 4
    confidence_bins: int = 10
    foreground_tiebreak: bool = True


@dataclass
class AlntConfig:
    """ALNT gradient re-weighting of pseudo-labelled samples (ALGORITHMS.md).

    Attributes:
        enabled: re-weight pseudo-labelled samples; off = pseudo-labels train at weight 1/B like experts.
        lambda_: mix w = lambda*w_S + (1-lambda)*w_M; 1 = RGS, 0 = RGM, 0.5 = RGS&M.
        rectify: "+AL": zero weights below 1/B, no renormalisation.
        objective: "expert+weighted" (mean expert loss + sum w_i l_i, default) or "weighted" (paper: pseudo only).
        pseudo_batch_size: B, pseudo-labelled crops per step (original: 4).
        scale_by_share: scale the pseudo term of "expert+weighted" by n_pseudo / (n_pseudo + n_expert)
            volumes, so one pseudo-label cannot outweigh the expert labels (see ``alnt.pseudo_share``).
    """

    enabled: bool = True
    lambda_: float = 0.5
    rectify: bool = True
    objective: str = "expert+weighted"
    pseudo_batch_size: int = 2
    scale_by_share: bool = True


@dataclass
class IntensityConfig:
    """Intensity normalisation of images before the network; the numbers come from the plan (``model/plan.py``).

    Attributes:
        mode: "ct" (Hounsfield units): clip to the labelled foreground's 0.5-99.5 percentiles, then z-score with
            the foreground's mean and sd, one transform for all cases; "zscore" (MRI and others): each volume
            minus its mean, divided by its standard deviation.
    """

    mode: str = "ct"


@dataclass
class Config:
    """All engine settings.

    Attributes:
        labels: foreground class names by label value (1-based); 0 is background.
        label_colours: segment colour (RGB in [0, 1]) by label value; values without one take the segmentation writer's palette.
        label_codes: coded concept by label value, ``scheme^value^meaning`` (e.g. ``SCT^10200004^Liver``); values
            without one take :data:`KNOWN_TERMS` by name, else none.
        val_fraction: share of cases drawn into the fixed validation split at ``init``.
        lease_seconds: how long a queued case stays leased to one annotator, seconds.
    """

    labels: dict[int, str] = field(default_factory=lambda: {1: "lung", 2: "lesion"})
    label_colours: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    label_codes: dict[int, str] = field(default_factory=dict)
    val_fraction: float = 0.2
    lease_seconds: float = 1800.0
    network: NetworkConfig = field(default_factory=NetworkConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    dsal: DsalConfig = field(default_factory=DsalConfig)
    alnt: AlntConfig = field(default_factory=AlntConfig)
    intensity: IntensityConfig = field(default_factory=IntensityConfig)

    def colour(self, value: int) -> tuple[float, float, float] | None:
        """The segment colour chosen for label ``value`` (RGB in [0, 1]), or ``None``: the writer's palette."""
        return self.label_colours.get(value)

    def code(self, value: int) -> str | None:
        """The coded concept ``scheme^value^meaning`` of label ``value``, or ``None`` when unknown."""
        return self.label_codes.get(value) or KNOWN_TERMS.get(self.labels.get(value, "").strip().lower())

    @property
    def num_classes(self) -> int:
        """Output channels of the network: background plus every foreground label."""
        return 1 + max(self.labels, default=0)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting."""
        if not self.labels or any(k < 1 for k in self.labels):
            raise ConfigError(f"labels must map values >= 1 to names, got {self.labels!r}")
        if any(not name.strip() for name in self.labels.values()) or len(set(self.labels.values())) != len(self.labels):
            raise ConfigError(f"labels need distinct, non-empty names, got {self.labels!r}")
        for value in (*self.label_colours, *self.label_codes):
            if value not in self.labels:
                raise ConfigError(f"label_colours/label_codes name value {value}, which is not a label ({self.labels!r})")
        for value, colour in self.label_colours.items():
            if len(colour) != 3 or not all(0.0 <= c <= 1.0 for c in colour):
                raise ConfigError(f"label_colours.{value} must be three values in [0, 1] or #rrggbb, got {colour!r}")
        for value, code in self.label_codes.items():
            if len(code.split("^")) != 3 or not all(part.strip() for part in code.split("^")):
                raise ConfigError(f"label_codes.{value} must be scheme^value^meaning (e.g. SCT^10200004^Liver), got {code!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if not self.lease_seconds > 0:
            raise ConfigError(f"lease_seconds must be > 0, got {self.lease_seconds}")
        if not 0.0 <= self.alnt.lambda_ <= 1.0:
            raise ConfigError(f"alnt.lambda must be in [0, 1], got {self.alnt.lambda_}")
        if self.alnt.objective not in ("expert+weighted", "weighted"):
            raise ConfigError(f"alnt.objective must be 'expert+weighted' or 'weighted', got {self.alnt.objective!r}")
        if self.intensity.mode not in ("ct", "zscore"):
            raise ConfigError(f"intensity.mode must be 'ct' or 'zscore', got {self.intensity.mode!r}")
        if self.training.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"training.device must be auto, cpu or cuda, got {self.training.device!r}")
        if self.training.patch_size and (len(self.training.patch_size) != 3 or min(self.training.patch_size) < 1):
            raise ConfigError(f"training.patch_size must be three positive sizes (k,j,i), got {self.training.patch_size}")
        if self.training.target_spacing and (len(self.training.target_spacing) != 3 or min(self.training.target_spacing) <= 0):
            raise ConfigError(f"training.target_spacing must be three positive mm values (k,j,i), got {self.training.target_spacing}")
        if self.network.channels and len(self.network.channels) < 3:
            raise ConfigError(f"network.channels needs at least 3 levels (DSAL's 1/2 and 1/4 heads), got {self.network.channels}")
        if not 0.0 <= self.training.unlearned_class_dice < 1.0:
            raise ConfigError(f"training.unlearned_class_dice must be in [0, 1), got {self.training.unlearned_class_dice}")
        if self.training.unlearned_retries < 0:
            raise ConfigError(f"training.unlearned_retries must be >= 0, got {self.training.unlearned_retries}")
        if not 0.0 <= self.training.validate_from < 1.0:
            raise ConfigError(f"training.validate_from must be in [0, 1), got {self.training.validate_from}")
        if self.training.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"training.optimizer must be adamw or sgd, got {self.training.optimizer!r}")
        if self.training.mirroring not in ("auto", "on", "off"):
            raise ConfigError(f"training.mirroring must be auto, on or off, got {self.training.mirroring!r}")
        if any(a not in (0, 1, 2) for a in self.training.flip_axes):
            raise ConfigError(f"training.flip_axes must be array axes 0, 1, 2, got {self.training.flip_axes}")
        if self.training.processes < 1:
            raise ConfigError(f"training.processes must be >= 1, got {self.training.processes}")
        if self.training.launcher and "{entry}" not in self.training.launcher:
            raise ConfigError("training.launcher must contain {entry} (what torchrun runs), got "
                              f"{self.training.launcher!r}")
        if not self.training.distributed_timeout_s > 0:
            raise ConfigError(f"training.distributed_timeout_s must be > 0, got {self.training.distributed_timeout_s}")
        if self.dsal.confidence_bins < 1 or self.dsal.strong_per_round < 0:
            raise ConfigError("dsal.confidence_bins must be >= 1 and dsal.strong_per_round >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (label keys become strings)."""
        data = dataclasses.asdict(self)
        data["labels"] = {str(k): v for k, v in self.labels.items()}
        data["label_colours"] = {str(k): list(v) for k, v in self.label_colours.items()}
        data["label_codes"] = {str(k): v for k, v in self.label_codes.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        config = cls()
        for key, value in data.items():
            if key == "labels":
                config.labels = {int(k): str(v) for k, v in value.items()}
            elif key == "label_colours":
                config.label_colours = {int(k): _colour(v, f"label_colours.{k}") for k, v in value.items()}
            elif key == "label_codes":
                config.label_codes = {int(k): str(v) for k, v in value.items()}
            elif key in _SECTIONS:
                section = getattr(config, key)
                for name, item in value.items():
                    if f"{key}.{name}" in _RETIRED:  # written by an earlier version; the plan replaced it
                        logger.warning("ignoring the retired setting %s.%s (now planned from the data)", key, name)
                        continue
                    _set_field(section, name, item, f"{key}.{name}")
            elif key in ("val_fraction", "lease_seconds"):
                setattr(config, key, float(value))
            else:
                raise ConfigError(f"unknown setting {key!r}")
        config.validate()
        return config

    def save(self, path: Path) -> None:
        """Write as indented JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Config:
        """Read a file written by :meth:`save`."""
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc


_SECTIONS = ("network", "training", "dsal", "alnt", "intensity")
# Settings of earlier versions that the plan replaced: ignored (with a warning) when an old config.json has them.
_RETIRED = {"intensity.window_min", "intensity.window_max"}
# Tuple settings whose items are floats (all others hold integers).
_FLOAT_TUPLES = {"target_spacing"}


def _set_field(section: Any, name: str, value: Any, dotted: str) -> None:
    """Set ``section.name`` to ``value`` converted to the field's declared type."""
    if name == "lambda":  # ``lambda`` is a keyword in Python; accept it as the user writes it
        name = "lambda_"
    fields = {f.name: f for f in dataclasses.fields(section)}
    if name not in fields:
        raise ConfigError(f"unknown setting {dotted!r}")
    current = getattr(section, name)
    try:
        if isinstance(current, bool):
            converted: Any = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
        elif isinstance(current, tuple):
            items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
            converted = tuple((float if name in _FLOAT_TUPLES else int)(v) for v in items)
        elif isinstance(current, int):
            converted = int(value)
        elif isinstance(current, float):
            converted = float(value)
        else:
            converted = str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{dotted}: cannot use {value!r} ({exc})") from exc
    setattr(section, name, converted)


def _colour(value: Any, dotted: str) -> tuple[float, float, float]:
    """``#rrggbb``, ``r,g,b`` in [0, 1], or a list of three numbers, as RGB in [0, 1]."""
    try:
        if isinstance(value, str) and value.strip().startswith("#") and len(value.strip()) == 7:
            text = value.strip()[1:]
            return tuple(int(text[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]
        items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
        if len(items) == 3:
            return tuple(float(v) for v in items)  # type: ignore[return-value]
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{dotted}: expected #rrggbb or r,g,b in [0, 1], got {value!r}")


def _label_value(text: str, dotted: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or value > 255:
        raise ConfigError(f"{dotted}: label values are integers 1..255, got {text!r}")
    return value


def _set_label_setting(config: Config, dotted: str, value: str) -> None:
    """``labels=a,b``, ``labels.N=name``, ``label_colours.N=#rrggbb``, ``label_codes.N=scheme^value^meaning``."""
    key, _, index = dotted.partition(".")
    if key == "labels" and not index:
        names = [n.strip() for n in value.split(",")]
        config.labels = {i: n for i, n in enumerate(names, start=1)}
        config.label_colours = {k: v for k, v in config.label_colours.items() if k in config.labels}
        config.label_codes = {k: v for k, v in config.label_codes.items() if k in config.labels}
        return
    if not index:
        raise ConfigError(f"{dotted}: expected {key}.VALUE=..., e.g. {key}.1=...")
    label = _label_value(index, dotted)
    if key == "labels":
        config.labels = dict(sorted({**config.labels, label: value.strip()}.items()))
    elif key == "label_colours":
        config.label_colours[label] = _colour(value, dotted)
    else:
        config.label_codes[label] = value.strip()


#: Top-level settings and the label set, beside the sections.
_TOP_LEVEL = ("val_fraction", "lease_seconds")
_LABEL_KEYS = ("labels", "label_colours", "label_codes")


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``section.name=value`` (and ``val_fraction=``, ``lease_seconds=``, ``labels...=``) strings from
    ``--set`` and validate.

    Raises:
        ConfigError: a malformed string, unknown setting or invalid value.
    """
    for item in overrides:
        dotted, sep, value = item.partition("=")
        dotted = dotted.strip()
        section_name, dot, name = dotted.partition(".")
        if sep and section_name in _LABEL_KEYS:
            _set_label_setting(config, dotted, value)
            continue
        if sep and not dot and dotted in _TOP_LEVEL:
            try:
                setattr(config, dotted, float(value))
            except ValueError as exc:
                raise ConfigError(f"{dotted}: cannot use {value!r} ({exc})") from exc
            continue
        if not sep or not dot or section_name not in _SECTIONS:
            raise ConfigError(
                f"--set expects section.name=value with section in {_SECTIONS}, or one of {_TOP_LEVEL + _LABEL_KEYS}"
                f" (see 'activeseg config --help'), got {item!r}")
        _set_field(getattr(config, section_name), name.strip(), value.strip(), dotted)
    config.validate()
    return config


#: What values each setting accepts, where more than its type says (shown by ``activeseg config --help``).
_RANGES: dict[str, str] = {
    "labels": "values 1..255, distinct non-empty names",
    "label_colours": "#rrggbb or r,g,b in [0, 1]",
    "label_codes": "scheme^value^meaning",
    "val_fraction": "[0, 1)",
    "lease_seconds": "> 0",
    "network.channels": "empty, or >= 3 positive integers",
    "network.dropout": "[0, 1)",
    "training.patch_size": "empty, or 3 positive integers (k,j,i)",
    "training.target_spacing": "empty, or 3 positive mm values (k,j,i)",
    "training.optimizer": "adamw | sgd",
    "training.device": "auto | cpu | cuda",
    "training.flip_axes": "subset of 0,1,2",
    "training.warmup_fraction": "[0, 1]",
    "training.foreground_crop_fraction": "[0, 1]",
    "training.learning_rate": "> 0",
    "training.processes": ">= 1",
    "training.launcher": "empty, or a command with {entry} ({nproc}, {python} optional)",
    "training.distributed_timeout_s": "> 0",
    "dsal.strong_per_round": ">= 0",
    "dsal.confidence_bins": ">= 1",
    "alnt.lambda_": "[0, 1] (alias alnt.lambda)",
    "alnt.objective": "expert+weighted | weighted",
    "intensity.mode": "ct | zscore",
}


def _attribute_docs(cls: type) -> dict[str, str]:
    """``{field: meaning}`` from a dataclass docstring's ``Attributes:`` section (continuation lines joined)."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").splitlines()
    inside, current, indent = False, "", 0
    for line in lines:
        stripped = line.strip()
        if stripped == "Attributes:":
            inside, indent = True, len(line) - len(line.lstrip()) + 4
            continue
        if not inside or not stripped:
            continue
        depth = len(line) - len(line.lstrip())
        if depth == indent and ":" in stripped:
            names, _, text = stripped.partition(":")
            current = names.strip()
            docs[current] = text.strip()
        elif depth > indent and current:
            docs[current] += " " + stripped
        elif depth < indent:
            break
    return docs


def describe_settings(config: Config | None = None) -> str:
    """Every setting, one paragraph each: ``name = current value  [range]`` and its meaning."""
    config = config or Config()
    rows: list[tuple[str, Any, str]] = []
    top_docs = _attribute_docs(Config)
    for name in ("labels", "label_colours", "label_codes", *_TOP_LEVEL):
        rows.append((name, getattr(config, name), top_docs.get(name, "")))
    for section_name in _SECTIONS:
        section = getattr(config, section_name)
        docs = _attribute_docs(type(section))
        for f in dataclasses.fields(section):
            rows.append((f"{section_name}.{f.name}", getattr(section, f.name), docs.get(f.name, "")))
    paragraphs = []
    for dotted, value, meaning in rows:
        shown = ",".join(str(v) for v in value) if isinstance(value, tuple) else value
        if isinstance(value, dict):
            shown = ",".join(f"{k}:{v}" for k, v in value.items()) or "(none)"
        limits = f"  [{_RANGES[dotted]}]" if dotted in _RANGES else ""
        meaning = re.sub(r":\w+:`([^`]+)`", r"\1", meaning).replace("``", "")  # docstring markup, for a terminal
        paragraphs.append(f"  {dotted} = {shown}{limits}\n      {meaning}")
    return "\n".join(paragraphs)
