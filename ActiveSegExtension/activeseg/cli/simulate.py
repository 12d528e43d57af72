"""``activeseg simulate`` and ``activeseg plot``: label-efficiency experiments and their curves.

Usage::

    activeseg simulate --dataset DIR --strategy dsal --seed 0 --rounds 5 --per-round 4 --initial 4 \\
        --set network.channels=4,8,16,32 --out results_dsal_0.json
    activeseg plot results_*.json -o curves.png
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from activeseg.cli.console import format_table

__all__ = ["add_simulation_commands", "simulate_command", "plot_command", "summarise_curves"]

logger = logging.getLogger("activeseg")

# Curve order in tables and legends: the method first, baselines after, the ceiling last.
_ORDER = ["dsal+alnt", "dsal", "dsal-nopseudo", "fg-random", "random", "mc-dropout", "full"]


def simulate_command(args: argparse.Namespace) -> int:
    """Run one experiment (:func:`activeseg.experiments.simulation.run_simulation`) and write its results JSON."""
    from activeseg.experiments.simulation import SimulationSettings, run_simulation

    settings = SimulationSettings(
        strategy=args.strategy, seed=args.seed, rounds=args.rounds, per_round=args.per_round, initial=args.initial,
        test_fraction=args.test_fraction, val_fraction=args.val_fraction, overrides=tuple(args.set), alnt=not args.no_alnt,
        pool_size=args.pool_size, pseudo=not args.no_pseudo, mc_passes=args.mc_passes, work_dir=args.work_dir,
        round0_cache=args.round0_cache,
    )
    results = run_simulation(args.dataset, settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    rows = [
        [r["round"], r["labelled"], r["pseudo"], r["test_dice"]["mean"], *[r["test_dice"][n] for n in _class_names(results)],
         r["train_s"], r["rank_s"]]
        for r in results["rounds"]
    ]
    sys.stdout.write(format_table(
        ["round", "labelled", "pseudo", "test Dice", *[f"Dice {n}" for n in _class_names(results)], "train s", "rank s"], rows,
    ) + "\n")
    logger.info("%s seed %d: %.0f s; results in %s", results["metadata"]["label"], args.seed, results["seconds"], args.out)
    return 0


def _class_names(results: dict[str, Any]) -> list[str]:
    return [k for k in results["rounds"][0]["test_dice"] if k != "mean"]


def summarise_curves(runs: list[dict[str, Any]], metric: str = "mean") -> dict[str, list[tuple[float, float, float, int]]]:
    """Mean and sd over seeds of test Dice per labelled count, one curve per results label.

    Args:
        runs: results dicts of :func:`activeseg.experiments.simulation.simulate`.
        metric: ``"mean"`` or a class name.

    Returns:
        label -> [(labelled count, mean Dice, sd over seeds (population, 0 for one seed), seeds)]
        sorted by count. ``full`` curves keep only their last round (the trained-to-budget ceiling).
    """
    import numpy as np

    grouped: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        label = run["metadata"]["label"]
        rows = run["rounds"][-1:] if run["metadata"]["strategy"] == "full" else run["rounds"]
        for row in rows:
            grouped[label][int(row["labelled"])].append(float(row["test_dice"][metric]))
    ordered = sorted(grouped, key=lambda name: (_ORDER.index(name) if name in _ORDER else len(_ORDER), name))
    return {
        label: [(float(n), float(np.mean(v)), float(np.std(v)), len(v)) for n, v in sorted(grouped[label].items())]
        for label in ordered
    }


def plot_command(args: argparse.Namespace) -> int:
    """Plot test Dice against labelled volumes (mean +/- sd over seeds) and print the table."""
    from activeseg.experiments.plotting import plot_learning_curve
    from activeseg.experiments.simulation import load_results

    runs = [load_results(path) for path in args.results]
    curves = summarise_curves(runs, args.metric)
    plotted: dict[str, list[tuple[float, float, float]]] = {}
    xs = [p[0] for name, points in curves.items() if name != "full" for p in points] or [0.0]
    for name, points in curves.items():
        seeds = max(p[3] for p in points)
        key = f"{name} (n={seeds})"
        if name == "full" and len(points) == 1:
            # The ceiling is one point at the whole pool; draw it as a level across the budget axis.
            count, mean, sd, _ = points[0]
            key = f"full ({count:.0f} labelled, n={seeds})"
            plotted[key] = [(min(xs), mean, sd), (max(xs), mean, sd)]
        else:
            plotted[key] = [(p[0], p[1], p[2]) for p in points]
    meta = runs[0]["metadata"]
    title = args.title or f"{Path(meta['dataset']).name}: test Dice ({args.metric}) vs expert labels"
    path = plot_learning_curve(plotted, args.output, title)
    rows = [[name, f"{p[0]:.0f}", p[1], p[2], p[3]] for name, points in curves.items() for p in points]
    sys.stdout.write(format_table(["curve", "labelled", f"Dice {args.metric} (mean)", "sd", "seeds"], rows) + "\n")
    logger.info("wrote %s", path)
    return 0


class _StrategyNames:
    """The ``--strategy`` choices, read from :data:`activeseg.experiments.strategies.STRATEGIES` only when used.

    argparse asks a choices container only when it checks a value (``in``) or formats ``simulate --help``
    (iteration), so building the parser (``activeseg --version``, ``activeseg --help``) does not import torch.
    """

    @staticmethod
    def _names() -> list[str]:
        from activeseg.experiments.strategies import STRATEGIES

        return sorted(STRATEGIES)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._names())


def add_simulation_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the simulation subcommands on the ``activeseg`` parser (imports nothing heavy)."""
    sub = commands.add_parser("simulate", help="label-efficiency experiment with the ground truth as the radiologist")
    sub.add_argument("--dataset", type=Path, required=True, help="MSD-style folder with dataset.json (imagesTr/labelsTr)")
    sub.add_argument("--strategy", choices=_StrategyNames(), metavar="STRATEGY", required=True,
                     help="one of: %(choices)s")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--rounds", type=int, default=5, help="query rounds after the initial training round")
    sub.add_argument("--per-round", type=int, default=4, help="K, cases labelled per round")
    sub.add_argument("--initial", type=int, default=4, help="expert-labelled training cases before round 0")
    sub.add_argument("--test-fraction", type=float, default=0.2, help="share of the dataset in the fixed test split")
    sub.add_argument("--val-fraction", type=float, default=0.1, help="share of the dataset in the fixed validation split")
    sub.add_argument("--pool-size", type=int, default=None, help="cap on the training pool (seeded subset)")
    sub.add_argument("--no-alnt", action="store_true", help="pseudo-labels train at the experts' weight")
    sub.add_argument("--no-pseudo", action="store_true", help="DSAL without weak pseudo-labels")
    sub.add_argument("--mc-passes", type=int, default=10, help="T of mc-dropout")
    sub.add_argument("--work-dir", type=Path, default=None, help="datastore folder (replaced); default a temp folder")
    sub.add_argument("--round0-cache", type=Path, default=None,
                     help="folder sharing the identical round-0 model between strategies of one seed (saves CPU)")
    sub.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE", help="override a setting (repeatable)")
    sub.add_argument("--out", type=Path, required=True, help="results JSON to write")
    sub.set_defaults(func=simulate_command)

    sub = commands.add_parser("plot", help="learning curves (test Dice vs labelled volumes) from simulate results")
    sub.add_argument("results", type=Path, nargs="+", help="results JSON files (several seeds and strategies)")
    sub.add_argument("-o", "--output", type=Path, default=Path("curves.png"))
    sub.add_argument("--metric", default="mean", help="'mean' or a class name")
    sub.add_argument("--title", default=None)
    sub.set_defaults(func=plot_command)
