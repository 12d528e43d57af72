"""``activeseg simulate`` and ``activeseg plot``: label-efficiency experiments and their curves.

Usage::

    activeseg simulate --dataset DIR --strategy dsal --seed 0 --rounds 5 --per-round 4 --initial 4 \\
        --set network.channels=4,8,16,32 --out results_dsal_0.json
    activeseg simulate --dataset DIR --strategies dsal+alnt fg-random entropy full --seeds 0 1 2 3 4 \\
        --jobs 2 --out-dir runs/          # a campaign: parallel, resumable, one results file per run
    activeseg simulate ... --strategies fg-random --variant scratch --set training.warm_start=false --out-dir runs/
                                          # an ablation: curve fg-random@scratch beside fg-random
    activeseg plot runs/*.json -o curves.png --summary summary.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from activeseg.cli.console import format_table

__all__ = ["add_simulation_commands", "simulate_command", "campaign_command", "plot_command", "comparison_tables"]

logger = logging.getLogger("activeseg")

# Curve labels in table and legend order (the method first, baselines after, the ceiling last); also a campaign's
# --strategies choices: the keys of activeseg.experiments.campaign.STRATEGY_VARIANTS, listed here so that building
# the parser imports nothing heavy (a test checks that the two agree).
_ORDER = ["dsal+alnt", "dsal", "dsal-nopseudo", "fg-random", "random", "entropy", "mc-dropout", "full"]


def _base_settings(args: argparse.Namespace, strategy: str) -> Any:
    from activeseg.experiments.simulation import SimulationSettings

    return SimulationSettings(
        strategy=strategy, seed=args.seed, rounds=args.rounds, per_round=args.per_round, initial=args.initial,
        test_fraction=args.test_fraction, val_fraction=args.val_fraction, overrides=tuple(args.set), alnt=not args.no_alnt,
        pool_size=args.pool_size, pseudo=not args.no_pseudo, mc_passes=args.mc_passes, work_dir=args.work_dir,
        round0_cache=args.round0_cache, variant=args.variant,
    )


def campaign_command(args: argparse.Namespace) -> int:
    """Run ``--strategies`` x ``--seeds`` (:func:`activeseg.experiments.campaign.run_campaign`); 1 if a run failed."""
    from activeseg.experiments.campaign import plan_campaign, run_campaign

    runs = plan_campaign(args.strategies, args.seeds, _base_settings(args, "random"), args.out_dir, args.round0_cache)
    outcome = run_campaign(args.dataset, runs, jobs=args.jobs, show_progress=not args.no_progress)
    sys.stdout.write(format_table(
        ["run", "outcome"],
        [[name, "skipped (results exist)"] for name in outcome["skipped"]]
        + [[name, f"done in {seconds:.0f} s"] for name, seconds in outcome["completed"].items()]
        + [[name, f"FAILED: {error}"] for name, error in outcome["failed"].items()],
    ) + "\n")
    return 1 if outcome["failed"] else 0


def simulate_command(args: argparse.Namespace) -> int:
    """Run one experiment (:func:`activeseg.experiments.simulation.run_simulation`) and write its results JSON,
    or a campaign when ``--out-dir`` is given."""
    from activeseg.errors import ConfigError
    from activeseg.experiments.simulation import run_simulation

    if args.out_dir is not None:
        if not args.strategies:
            raise ConfigError("a campaign (--out-dir) needs --strategies")
        return campaign_command(args)
    if args.strategy is None or args.out is None:
        raise ConfigError("one run needs --strategy and --out (or give --strategies and --out-dir for a campaign)")
    results = run_simulation(args.dataset, _base_settings(args, args.strategy))
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


def _base_label(label: str) -> str:
    """A curve label without its ``@variant``."""
    return label.split("@", 1)[0]


def _ordered(labels: list[str]) -> list[str]:
    """Table and legend order: by strategy (:data:`_ORDER`), a strategy's variants after it."""
    return sorted(labels, key=lambda name: (_ORDER.index(_base_label(name)) if _base_label(name) in _ORDER else len(_ORDER),
                                            name))


def _interval(entry: dict[str, float], digits: int = 3) -> str:
    return f"{entry['mean']:.{digits}f} [{entry['low']:.{digits}f}, {entry['high']:.{digits}f}]"


def comparison_tables(summary: dict[str, Any], markdown: bool = False) -> str:
    """The plot command's text: Dice per budget and AULC with 95 % intervals, then paired differences, then the
    pseudo-labels' quality (``markdown``: Markdown tables, for RESULTS.md)."""
    curves = summary["curves"]
    reference = summary["reference"]
    rows = [
        [label, point["labelled"], _interval(point), len(curves[label]["seeds"])]
        for label in _ordered(list(curves)) for point in curves[label]["per_budget"]
    ]
    text = format_table(["curve", "labelled", "test Dice mean [95% CI]", "seeds"], rows, markdown=markdown)
    rows = []
    for label in _ordered(list(curves)):
        curve = curves[label]
        versus = curve.get("versus_reference")
        if "aulc" not in curve:
            continue
        below = [p["labelled"] for p in versus["per_budget"] if p["significantly_below"]] if versus else []
        above = [p["labelled"] for p in versus["per_budget"] if p["significantly_above"]] if versus else []
        rows.append([
            label, _interval(curve["aulc"]), _interval(versus["aulc"], 4) if versus else "(reference)" if label == reference else "",
            ",".join(map(str, below)) or "-", ",".join(map(str, above)) or "-",
        ])
    text += "\n\n" + format_table(
        ["curve", "AULC [95% CI]", f"AULC - {reference} (paired) [95% CI]", "budgets sig. below", "budgets sig. above"], rows,
        markdown=markdown)
    rows = [
        [label, point["labelled"], _interval(point, 4)]
        for label in _ordered(list(curves)) if curves[label].get("versus_reference")
        for point in curves[label]["versus_reference"]["per_budget"]
    ]
    if rows:
        text += "\n\n" + format_table(["curve", "labelled", f"Dice - {reference} (paired) [95% CI]"], rows, markdown=markdown)
    rows = [
        [e["label"], e["labelled"], e["seeds"], e["pseudo_dice"], e["spearman"], e["spearman_foreground"], e["concordance"],
         "-" if e["positive_seeds"] is None else f"{e['positive_seeds']}/{e['seeds']}"]
        for e in summary.get("pseudo_labels", [])
    ]
    if rows:
        text += "\n\nPseudo-labels a round trained on (true Dice) and ALNT weight vs a pseudo crop's true Dice:\n" + format_table(
            ["curve", "labelled", "seeds", "pseudo Dice", "Spearman", "Spearman (fg crops)", "concordance", "Spearman > 0"], rows,
            markdown=markdown)
    return text


def plot_command(args: argparse.Namespace) -> int:
    """Plot test Dice against labelled volumes (mean and 95 % bootstrap band; paired differences to the reference
    below) and print the tables; ``--summary`` also writes them as JSON."""
    from activeseg.experiments.plotting import plot_learning_curve
    from activeseg.experiments.simulation import load_results
    from activeseg.experiments.statistics import collect_curves, compare_to_reference, pseudo_label_report

    runs = [load_results(path) for path in args.results]
    summary = compare_to_reference(collect_curves(runs), args.reference)
    summary["pseudo_labels"] = pseudo_label_report(runs)
    curves = summary["curves"]
    xs = [p["labelled"] for name, c in curves.items() if _base_label(name) != "full" for p in c["per_budget"]] or [0]
    plotted: dict[str, list[tuple[float, float, float, float]]] = {}
    differences: dict[str, list[tuple[float, float, float, float]]] = {}
    for name in _ordered(list(curves)):
        points = [(float(p["labelled"]), p["mean"], p["low"], p["high"]) for p in curves[name]["per_budget"]]
        key = f"{name} (n={len(curves[name]['seeds'])})"
        if _base_label(name) == "full" and len(points) == 1:
            # The ceiling is one point at the whole pool; draw it as a level across the budget axis.
            count, mean, low, high = points[0]
            key = f"full ({count:.0f} labelled, n={len(curves[name]['seeds'])})"
            points = [(float(min(xs)), mean, low, high), (float(max(xs)), mean, low, high)]
        plotted[key] = points
        versus = curves[name].get("versus_reference")
        if versus:
            differences[key] = [(float(p["labelled"]), p["mean"], p["low"], p["high"]) for p in versus["per_budget"]]
    meta = runs[0]["metadata"]
    title = args.title or f"{Path(meta['dataset']).name}: test Dice vs expert labels (mean, 95% CI)"
    path = plot_learning_curve(plotted, args.output, title, differences=differences or None, reference=args.reference)
    sys.stdout.write(comparison_tables(summary, args.markdown) + "\n")
    if args.summary is not None:
        args.summary.write_text(json.dumps(summary, indent=1) + "\n")
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
    sub.add_argument("--strategy", choices=_StrategyNames(), metavar="STRATEGY", default=None,
                     help="one run: one of %(choices)s")
    sub.add_argument("--strategies", nargs="+", choices=_ORDER, metavar="LABEL", default=[],
                     help="a campaign's curves: %(choices)s (dsal+alnt is the product's default)")
    sub.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="a campaign's seeds")
    sub.add_argument("--out-dir", type=Path, default=None,
                     help="a campaign's results folder (one JSON per run; existing ones are skipped: resumable)")
    sub.add_argument("--jobs", type=int, default=2, help="a campaign's parallel worker processes")
    sub.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    sub.add_argument("--variant", default=None, metavar="NAME",
                     help="name these settings (an ablation, e.g. --variant scratch --set training.warm_start=false): "
                          "curves are labelled <strategy>@NAME and files <strategy>@NAME-seed<N>.json")
    sub.add_argument("--out", type=Path, default=None, help="one run's results JSON")
    sub.set_defaults(func=simulate_command)

    sub = commands.add_parser("plot", help="learning curves (test Dice vs labelled volumes) from simulate results")
    sub.add_argument("results", type=Path, nargs="+", help="results JSON files (several seeds and strategies)")
    sub.add_argument("-o", "--output", type=Path, default=Path("curves.png"))
    sub.add_argument("--reference", default="fg-random", help="the curve paired differences are taken against")
    sub.add_argument("--summary", type=Path, default=None, help="also write the statistics as JSON")
    sub.add_argument("--markdown", action="store_true", help="print Markdown tables (for RESULTS.md)")
    sub.add_argument("--title", default=None)
    sub.set_defaults(func=plot_command)
