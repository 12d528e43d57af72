"""The ``activeseg`` command line: thin ``*_command`` functions over the engine's typed functions.

Every command that works on a datastore takes it as ``--data STORE``. Errors the user can fix print one
line (``activeseg: error: ...``) and exit with status 2; nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from activeseg import __version__
from activeseg.config import apply_overrides, describe_settings
from activeseg.cli.console import ProgressBar, format_table
from activeseg.errors import ActiveSegError

if TYPE_CHECKING:
    from activeseg.store.datastore import Datastore

__all__ = ["main", "build_parser"]

logger = logging.getLogger("activeseg")


def _open_store(path: Path) -> Datastore:
    """Open a datastore; imported here so that building the parser (``--version``, ``--help``) stays light."""
    from activeseg.store.datastore import Datastore

    return Datastore(path)


def init_command(args: argparse.Namespace) -> int:
    """Create a datastore from a folder of volumes, a dataset.json, DICOM files or a DICOMweb server."""
    from activeseg.errors import DatastoreError
    from activeseg.store.cases import CaseState
    from activeseg.store.importing import small_store_advice
    from activeseg.store.initialise import init_datastore

    if args.dicomweb:
        from activeseg.store.dicomweb_source import init_from_dicomweb

        store, problems = init_from_dicomweb(
            args.store, args.dicomweb, study_uids=tuple(args.study), series_uids=tuple(args.series), token=args.token,
            with_labels=args.with_labels, overrides=args.set, seed=args.seed,
        )
    else:
        if args.study or args.series:
            raise DatastoreError("--study and --series apply to --dicomweb only")
        store, problems = init_datastore(args.store, args.source, args.with_labels, args.set, args.seed)
    for problem in problems:
        logger.warning("%s", problem)
    counts = store.counts()
    logger.info(
        "Created %s: %d case(s), %d in the fixed validation split, %d labelled%s.",
        store.root, counts["total"], counts["val"], counts[CaseState.LABELED],
        f"; {len(problems)} problem(s) listed above (those files were not imported)" if problems else "",
    )
    advice = small_store_advice(counts["total"], counts["val"])
    if advice:
        logger.warning("%s", advice)
    return 0



def config_command(args: argparse.Namespace) -> int:
    """Show the datastore's settings, or change them with --set."""
    from activeseg.errors import ConfigError

    store = _open_store(args.data)
    if args.set:
        before = dict(store.config.labels)
        config = apply_overrides(store.config, args.set)
        if set(config.labels) != set(before) and (store.models() or any(
                r.label_path is not None or r.pseudo_path is not None for r in store.cases())):
            raise ConfigError(
                f"the label values cannot change once cases are labelled or a model is trained ({sorted(before)} -> "
                f"{sorted(config.labels)}): the stored labels and models use them; rename with labels.N=NAME, or "
                "start a new datastore")
        config.save(store.meta_dir / "config.json")
        logger.info("updated %d setting(s)", len(args.set))
    sys.stdout.write(json.dumps(store.config.to_dict() if not args.set else config.to_dict(), indent=2) + "\n")
    return 0


def train_command(args: argparse.Namespace) -> int:
    """One training round from the active model."""
    from activeseg.pipeline.distributed import train

    store = _open_store(args.data)
    bar = ProgressBar("training", enabled=not args.quiet)
    try:
        outcome = train(store, progress=bar, processes=args.nproc)
    finally:
        bar.close()
    metrics = outcome.metrics
    logger.info(
        "%s; round %d: validation Dice %s; %d expert, %d pseudo-labelled case(s); %.0f s",
        outcome.message, metrics["round"], _dice_text(metrics["val_dice"]), metrics["n_expert"],
        metrics["n_pseudo"], metrics["seconds"],
    )
    return 0


def _dice_text(dice: dict[str, float]) -> str:
    if not dice:
        return "n/a (no labelled validation case)"
    return ", ".join(f"{name} {value:.3f}" for name, value in dice.items())


def rank_command(args: argparse.Namespace) -> int:
    """Score the pool with the active model, queue the most uncertain, write pseudo-labels."""
    from activeseg.pipeline.distributed import rank

    store = _open_store(args.data)
    bar = ProgressBar("ranking", enabled=not args.quiet)
    try:
        result = rank(store, progress=bar, write_pseudo=not args.no_pseudo, processes=getattr(args, "nproc", None))
    finally:
        bar.close()
    logger.info("ranked %d case(s) in %.1f s: %d queued, %d pseudo-labelled", len(result.scores), result.seconds, len(result.strong), len(result.weak))
    return queue_command(args)


def queue_command(args: argparse.Namespace) -> int:
    """Print the strong queue, most uncertain first."""
    store = _open_store(args.data)
    rows = [
        [record.case_id, score.mdsc if score else None, score.confidence if score else None,
         score.route if score else ("validation" if record.split == "val" else "-"), record.lease_holder]
        for record, score in store.queue()
    ]
    sys.stdout.write(format_table(["case", "M-DSC", "confidence", "route", "leased to"], rows) + "\n")
    return 0


def status_command(args: argparse.Namespace) -> int:
    """Print case counts and model versions."""
    store = _open_store(args.data)
    counts = store.counts()
    sys.stdout.write(format_table(["state", "cases"], [[s, n] for s, n in counts.items()]) + "\n\n")
    active = store.active_version()
    rows = [
        [("* " if m.version == active else "  ") + f"v{m.version}", m.metrics.get("round"), m.metrics.get("n_expert"),
         m.metrics.get("n_pseudo"), m.metrics.get("val_dice", {}).get("mean")]
        for m in store.models()
    ]
    sys.stdout.write(format_table(["model", "round", "expert", "pseudo", "val Dice"], rows) + "\n")
    if store.queue_stale():
        chosen = store.queue_model()
        sys.stdout.write(f"queue chosen by {'v' + str(chosen) if chosen is not None else 'no model'}, not the active "
                         f"v{active}: run 'activeseg rank' to refresh it\n")
    plan_file = store.meta_dir / "plan.json"
    if plan_file.is_file():  # written by the last round trained from scratch (model/plan.py)
        plan = json.loads(plan_file.read_text())["plan"]
        rows = [[key, plan[key]] for key in ("target_spacing", "patch_size", "channels", "strides", "batch_size",
                                             "normalisation", "clip", "mean", "sd", "notes")]
        sys.stdout.write("\nplan (spacing mm and patch voxels in k, j, i order)\n" + format_table(["", "value"], rows) + "\n")
    return 0


def activate_command(args: argparse.Namespace) -> int:
    """Make an earlier model version active (rollback); with --rank, re-rank the cases with it."""
    store = _open_store(args.data)
    store.activate(args.version)
    logger.info("model v%d is active", args.version)
    if store.queue_stale():
        if args.rank:
            return rank_command(args)
        chosen = store.queue_model()
        logger.warning("the queue was chosen by %s, not v%d: its order and starting predictions are not this model's; "
                       "run 'activeseg rank --data %s' (or activate with --rank)",
                       f"v{chosen}" if chosen is not None else "no model", args.version, args.data)
    return 0


def phantoms_command(args: argparse.Namespace) -> int:
    """Write synthetic CT phantoms as an MSD-style folder."""
    from activeseg.experiments.phantoms import write_phantom_dataset

    shape = tuple(int(v) for v in args.shape.split(","))
    path = write_phantom_dataset(args.out, args.count, seed=args.seed, shape=shape, file_format=args.format)  # type: ignore[arg-type]
    logger.info("wrote %d phantoms and %s", args.count, path)
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Run the whole loop on generated phantoms."""
    from activeseg.experiments.demo import run_demo

    run_demo(args.out, cases=args.cases, rounds=args.rounds, seed=args.seed, progress=not args.quiet)
    return 0


def serve_command(args: argparse.Namespace) -> int:
    """Run the HTTP backend."""
    from activeseg.api.server import serve

    serve(args.data, host=args.host, port=args.port, token=args.token, max_upload_bytes=args.max_upload_bytes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the commands in the README)."""
    parser = argparse.ArgumentParser(prog="activeseg", description="ActiveSeg backend engine: active learning for 3D segmentation.")
    parser.add_argument("--version", action="version", version=f"activeseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_data(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--data", type=Path, required=True, metavar="STORE", help="the datastore folder")
        return sub

    sub = commands.add_parser("init", help="create a datastore from volumes, an MSD dataset.json, DICOM files or a PACS")
    sub.add_argument("store", type=Path, help="datastore folder to create")
    origin = sub.add_mutually_exclusive_group(required=True)
    origin.add_argument("--from", dest="source", type=Path, help="folder of .nii.gz/.nrrd volumes, a dataset.json, or a folder of DICOM files")
    origin.add_argument("--dicomweb", metavar="URL", help="DICOMweb root of a PACS, e.g. http://pacs:8042/dicom-web (CT series become cases)")
    sub.add_argument("--study", action="append", default=[], metavar="UID", help="with --dicomweb: only this study (repeatable)")
    sub.add_argument("--series", action="append", default=[], metavar="UID", help="with --dicomweb: only this series (repeatable)")
    sub.add_argument("--token", default=os.environ.get("ACTIVESEG_DICOMWEB_TOKEN"),
                     help="with --dicomweb: bearer token; default $ACTIVESEG_DICOMWEB_TOKEN (never stored)")
    sub.add_argument("--with-labels", action="store_true", help="import the dataset's labels as expert labels")
    sub.add_argument("--seed", type=int, default=0, help="seed of the fixed validation split")
    sub.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE",
                     help="a setting (repeatable), e.g. --set labels=liver,tumour --set val_fraction=0.25; "
                          "'activeseg config --help' lists them all")
    sub.set_defaults(func=init_command)

    sub = with_data(commands.add_parser(
        "config", help="show or change settings, e.g. --set alnt.lambda=0.5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show the datastore's settings (JSON), or change them with --set NAME=VALUE.",
        epilog="settings (name = default  [accepted values], then what it does):\n" + describe_settings()))
    sub.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="change a setting (repeatable), e.g. training.epochs_per_round=5, labels.2=tumour")
    sub.set_defaults(func=config_command)

    for name, func, text in (("train", train_command, "run one training round"), ("rank", rank_command, "rank the pool and write pseudo-labels")):
        sub = with_data(commands.add_parser(name, help=text))
        sub.add_argument("--quiet", action="store_true", help="no progress bar")
        sub.add_argument("--nproc", type=int, default=None, metavar="N",
                         help="data-parallel processes (one per GPU; default training.processes); above 1 they run "
                              "under torchrun (README 'Several GPUs and nodes')")
        if name == "rank":
            sub.add_argument("--no-pseudo", action="store_true", help="only rank and queue; keep the pseudo-labels as they are")
        sub.set_defaults(func=func)

    with_data(commands.add_parser("queue", help="print the strong queue")).set_defaults(func=queue_command)
    with_data(commands.add_parser("status", help="print case counts and model versions")).set_defaults(func=status_command)
    sub = with_data(commands.add_parser("activate", help="make an earlier model version active (rollback)"))
    sub.add_argument("version", type=int)
    sub.add_argument("--rank", action="store_true", help="then rank the cases with it (refreshes the queue)")
    sub.add_argument("--quiet", action="store_true", help="no progress bar (with --rank)")
    sub.add_argument("--no-pseudo", action="store_true", help="with --rank: keep the pseudo-labels as they are")
    sub.set_defaults(func=activate_command)

    sub = commands.add_parser("phantoms", help="generate synthetic CT phantoms (MSD-style folder)")
    sub.add_argument("out", type=Path)
    sub.add_argument("--count", type=int, default=24)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--shape", default="32,64,64", help="k,j,i voxels")
    sub.add_argument("--format", choices=("nii.gz", "nrrd"), default="nii.gz")
    sub.set_defaults(func=phantoms_command)

    sub = commands.add_parser("demo", help="the whole loop on generated phantoms with a simulated radiologist")
    sub.add_argument("--out", type=Path, default=Path("demo_output"))
    sub.add_argument("--cases", type=int, default=24)
    sub.add_argument("--rounds", type=int, default=3)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--quiet", action="store_true")
    sub.set_defaults(func=demo_command)

    sub = with_data(commands.add_parser("serve", help="run the HTTP backend for the Slicer module"))
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument("--port", type=int, default=0, help="0 = pick a free port (printed on start)")
    sub.add_argument("--token", default=os.environ.get("ACTIVESEG_TOKEN"),
                     help="bearer token every request must carry (required off loopback); default $ACTIVESEG_TOKEN, "
                          "which keeps it out of the process list")
    sub.add_argument("--max-upload-bytes", type=int, default=None,
                     help="largest accepted upload (default $ACTIVESEG_MAX_UPLOAD_BYTES or 1 GiB; 413 above it)")
    sub.set_defaults(func=serve_command)
    from activeseg.cli.simulate import add_simulation_commands

    add_simulation_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``activeseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except ActiveSegError as exc:
        logger.error("activeseg: error: %s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("activeseg: interrupted")
        return 130
