"""``activeseg simulate`` and ``activeseg plot`` (label-efficiency experiments). Filled in by issue 6."""

from __future__ import annotations

import argparse

__all__ = ["add_simulation_commands"]


def add_simulation_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the simulation subcommands on the ``activeseg`` parser."""
