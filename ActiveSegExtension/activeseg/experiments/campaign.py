"""A campaign of label-efficiency runs: several strategies x seeds, in parallel processes, resumable.

::

    runs = plan_campaign(["dsal", "fg-random"], seeds=[0, 1, 2], base=SimulationSettings(strategy="dsal"))
    run_campaign(dataset_dir, runs, out_dir, jobs=2)

* **One file per run**: ``OUT/<label>-seed<N>.json`` (the :func:`activeseg.experiments.simulation.run_simulation`
  results), written atomically when the run ends. A campaign started again skips every run whose file exists, so
  an interrupted campaign resumes where it stopped (a run cut off mid-way starts again from its beginning; runs are
  minutes long). Each run also logs to ``OUT/logs/<label>-seed<N>.log``.
* **Parallel**: ``jobs`` worker processes (spawned, not forked, so no torch thread pool is inherited), each with one
  torch thread unless the settings say otherwise. Runs are ordered so that the two first workers start different
  seeds. A seed's first run trains the round-0 model that its other strategies reuse from the cache; those others
  are held back until that model is cached (the ``round_done`` event of round 0, or the run's end), so that however
  many workers there are, the strategies of a seed share one round-0 model and their paired comparison at the first
  budget holds (with 15 workers on a GPU they would otherwise each train their own at once).
* **Progress**: one bar per running run (rounds done, with the current phase and training step), drawn by the
  parent from events the workers send over a queue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import queue as queue_module
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from activeseg.experiments.simulation import SimulationSettings, run_simulation

__all__ = ["CampaignRun", "plan_campaign", "ceiling_steps", "run_campaign", "result_name", "STRATEGY_VARIANTS"]

logger = logging.getLogger(__name__)

# Curve label -> how SimulationSettings expresses it (``dsal`` alone is DSAL with ALNT, the product's default).
STRATEGY_VARIANTS: dict[str, dict[str, Any]] = {
    "dsal+alnt": {"strategy": "dsal", "alnt": True, "pseudo": True},
    "dsal": {"strategy": "dsal", "alnt": False, "pseudo": True},
    "dsal-nopseudo": {"strategy": "dsal", "alnt": True, "pseudo": False},
    "fg-random": {"strategy": "fg-random"},
    "random": {"strategy": "random"},
    "entropy": {"strategy": "entropy"},
    "mc-dropout": {"strategy": "mc-dropout"},
    "full": {"strategy": "full"},
}


@dataclasses.dataclass(frozen=True)
class CampaignRun:
    """One run of a campaign: its settings and where its results go."""

    settings: SimulationSettings
    out: Path

    @property
    def name(self) -> str:
        return self.out.stem


def result_name(label: str, seed: int) -> str:
    """File stem of a run's results: ``<label>-seed<N>`` (``+`` and ``@`` kept: ``dsal+alnt@scratch-seed0``)."""
    return f"{label}-seed{seed}"


def plan_campaign(labels: Sequence[str], seeds: Sequence[int], base: SimulationSettings, out_dir: Path,
                  round0_cache: Path | None = None) -> list[CampaignRun]:
    """The runs of ``labels`` x ``seeds``, ordered for two workers (seeds in pairs; the given label order within).

    ``full`` trains one round on the whole pool (``rounds=0``): R more rounds on the same labels would only cost
    time. When the active runs warm-start (``training.warm_start``), their last model has trained for the sum of
    all their rounds' steps; the ceiling's one round gets that same sum (:func:`ceiling_steps`), so it is not
    under-trained against the curves it caps.

    Args:
        labels: curve labels, keys of :data:`STRATEGY_VARIANTS`.
        seeds: experiment seeds.
        base: every other setting (rounds, per-round K, initial set, fractions, overrides).
        out_dir: results folder.
        round0_cache: shared round-0 cache folder (default ``out_dir/round0``).

    Raises:
        ValueError: an unknown label.
    """
    unknown = [label for label in labels if label not in STRATEGY_VARIANTS]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; choose from {list(STRATEGY_VARIANTS)}")
    cache = Path(round0_cache) if round0_cache is not None else Path(out_dir) / "round0"
    order = {label: index for index, label in enumerate(labels)}
    pairs = sorted(((seed, label) for seed in seeds for label in labels),
                   key=lambda item: (list(seeds).index(item[0]) // 2, order[item[1]], list(seeds).index(item[0])))
    runs = []
    for seed, label in pairs:
        variant = dict(STRATEGY_VARIANTS[label])
        if label == "full":
            variant["rounds"] = 0
            steps = ceiling_steps(base)
            if steps is not None:
                variant["overrides"] = (*base.overrides, f"training.steps_base={steps}", "training.steps_per_label=0",
                                        f"training.max_steps={steps}")
        settings = dataclasses.replace(base, seed=seed, round0_cache=cache, work_dir=None, keep_work_dir=False, **variant)
        runs.append(CampaignRun(settings, Path(out_dir) / f"{result_name(settings.label, seed)}.json"))
    return runs


def ceiling_steps(base: SimulationSettings) -> int | None:
    """Optimiser steps the active runs' last model has trained for when rounds warm-start; None otherwise."""
    from activeseg.config import Config, apply_overrides
    from activeseg.pipeline.training_round import round_steps

    config = apply_overrides(Config(), list(base.overrides))
    if not config.training.warm_start:
        return None
    return sum(round_steps(config, base.initial + r * base.per_round) for r in range(base.rounds + 1))


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    temporary.write_text(text)
    os.replace(temporary, path)


def _worker(dataset_dir: str, run: CampaignRun, events: Any) -> tuple[str, float]:
    """Run one simulation in a worker process; send progress events; write the results file."""
    log_dir = run.out.parent / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / f"{run.name}.log", mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)

    def forward(event: dict[str, Any]) -> None:
        phase = event.get("phase")
        if phase in ("train", "validate", "evaluate", "select", "round_done", "compare_parent"):
            if phase != "train" or event.get("step", 0) % 10 == 0:  # a bar needs no more than every 10th step
                events.put((str(run.out), {k: v for k, v in event.items() if isinstance(v, (int, float, str, bool))}))

    results = run_simulation(Path(dataset_dir), run.settings, progress=forward)
    _write_atomically(run.out, json.dumps(results, indent=1) + "\n")
    return run.name, float(results["seconds"])


def _round0_group(run: CampaignRun) -> tuple[Any, ...] | None:
    """What a run's round-0 model depends on (runs with equal groups share it); None for a run that trains its own.

    A superset of the cache key's inputs (:func:`activeseg.experiments.simulation._round0_key` also hashes the split
    the dataset yields): runs with equal groups have equal keys. ALNT settings never enter round 0.
    """
    settings = run.settings
    if settings.round0_cache is None or settings.strategy == "full":
        return None
    overrides = tuple(o for o in settings.config_overrides() if not o.startswith("alnt."))
    return (str(settings.round0_cache), settings.seed, settings.initial, settings.test_fraction, settings.val_fraction,
            settings.pool_size, overrides)


def _draw_progress(events: Any, runs: list[CampaignRun], stop: threading.Event, show: bool,
                   round0_done: queue_module.Queue[str]) -> None:
    """Parent-side progress: one tqdm bar per run while it runs (rounds done; phase and step as postfix).

    Events are keyed by the run's results path; a run's round-0 ``round_done`` is also passed on to ``round0_done``.
    """
    from tqdm import tqdm

    names = {str(run.out): run.name for run in runs}
    totals = {str(run.out): run.settings.rounds + 1 for run in runs}
    bars: dict[str, Any] = {}
    free_positions = list(range(len(runs)))
    while not stop.is_set() or not events.empty():
        try:
            key, event = events.get(timeout=0.5)
        except queue_module.Empty:
            continue
        if event.get("phase") == "round_done" and event.get("round") == 0:
            round0_done.put(key)
        if not show:
            continue
        bar = bars.get(key)
        if bar is None:
            bar = bars[key] = tqdm(total=totals.get(key, 1), desc=names.get(key, key), position=free_positions.pop(0),
                                  unit="round", leave=True, dynamic_ncols=True)
        phase = event.get("phase")
        if phase == "round_done":
            bar.update(1)
            bar.set_postfix_str(f"{event.get('labelled')} labelled, test Dice {event.get('test_dice', 0):.3f}")
            if bar.n >= bar.total:
                bar.close()
        elif phase == "train":
            bar.set_postfix_str(f"round {event.get('round')}: train epoch {event.get('epoch')}/{event.get('epochs')} "
                                f"step {event.get('step')}/{event.get('steps')}")
        else:
            bar.set_postfix_str(f"round {event.get('round')}: {phase}")
    for bar in bars.values():
        bar.close()


def run_campaign(dataset_dir: Path, runs: Sequence[CampaignRun], jobs: int = 2, show_progress: bool = True) -> dict[str, Any]:
    """Run every run whose results file is missing, ``jobs`` at a time; return what happened.

    Returns:
        ``{"skipped": [names already done], "completed": {name: seconds}, "failed": {name: error}}``. A failed
        run writes no results file, so the next campaign retries it.
    """
    pending = [run for run in runs if not run.out.exists()]
    skipped = [run.name for run in runs if run.out.exists()]
    for name in skipped:
        logger.info("%s: results exist, skipped", name)
    outcome: dict[str, Any] = {"skipped": skipped, "completed": {}, "failed": {}}
    if not pending:
        return outcome
    for run in pending:
        run.out.parent.mkdir(parents=True, exist_ok=True)
    # A seed's first run goes first; the others of its round-0 group wait until that model is cached.
    group_of = {str(run.out): _round0_group(run) for run in pending}
    first: list[CampaignRun] = []
    waiting: dict[tuple[Any, ...], list[CampaignRun]] = {}
    for run in pending:
        group = group_of[str(run.out)]
        if group is not None and group in waiting:
            waiting[group].append(run)
        else:
            first.append(run)
            if group is not None:
                waiting[group] = []
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        events = manager.Queue()
        round0_done: queue_module.Queue[str] = queue_module.Queue()
        stop = threading.Event()
        drawer = threading.Thread(target=_draw_progress, args=(events, pending, stop, show_progress, round0_done),
                                  daemon=True)
        drawer.start()
        try:
            with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=context) as pool:
                futures: dict[Future[tuple[str, float]], CampaignRun] = {}

                def submit(runs_now: list[CampaignRun]) -> None:
                    for run in runs_now:
                        futures[pool.submit(_worker, str(dataset_dir), run, events)] = run

                submit(first)
                while futures:
                    done, _ = wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
                    while not round0_done.empty():
                        group = group_of.get(round0_done.get())
                        if group is not None:
                            submit(waiting.pop(group, []))
                    for future in done:
                        run = futures.pop(future)
                        group = group_of[str(run.out)]
                        try:
                            name, seconds = future.result()
                            outcome["completed"][name] = seconds
                            logger.info("%s: done in %.0f s", name, seconds)
                            if group is not None:
                                submit(waiting.pop(group, []))
                        except Exception as exc:  # one failed run must not stop the others; it is reported and retried
                            outcome["failed"][run.name] = f"{type(exc).__name__}: {exc}"
                            logger.error("%s failed: %s (see %s)", run.name, exc, run.out.parent / "logs" / f"{run.name}.log")
                            if group is not None and waiting.get(group):
                                submit([waiting[group].pop(0)])  # the next run of the group trains round 0 instead
        finally:
            stop.set()
            drawer.join(timeout=5)
    return outcome
