"""``make bench``: run every ``Testing/benchmarks/bench_*.py`` and print its table of side-by-side ratios.

Each benchmark module exposes ``run(quick: bool) -> str`` returning a Markdown table (with a header line
naming the machine). ``--quick`` uses small sizes; the default is the real sizes named in each module.
Only benchmarks print timings; tests never assert on time.

Usage::

    python -m Testing.benchmarks.run_all [--quick] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import importlib
import logging
import platform
import sys
import time
from pathlib import Path

logger = logging.getLogger("activeseg.bench")


def machine_description() -> str:
    """One line naming the CPU, core count and accelerator, for the results table."""
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return a process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only (minutes, not tens of minutes)")
    parser.add_argument("--only", nargs="*", default=None, help="benchmark module names, e.g. bench_alnt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    folder = Path(__file__).parent
    names = sorted(p.stem for p in folder.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n in args.only]
    out_dir = Path("bench_output")
    out_dir.mkdir(exist_ok=True)
    sys.stdout.write(f"# ActiveSeg benchmarks ({time.strftime('%Y-%m-%d')}, {machine_description()})\n\n")
    for name in names:
        module = importlib.import_module(f"Testing.benchmarks.{name}")
        started = time.perf_counter()
        table = module.run(quick=args.quick)
        sys.stdout.write(f"## {name} ({time.perf_counter() - started:.0f} s)\n\n{table}\n\n")
        sys.stdout.flush()
        (out_dir / f"{name}.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
