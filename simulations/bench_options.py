"""The options of ``fedshop-sim bench``, declared apart from :mod:`simulations.bench` so
that building the command line imports no more than the section registry."""

from __future__ import annotations

import argparse
from pathlib import Path

from simulations.benchmarks.sections import FULL, QUICK

DEFAULT_OUTPUTS = {FULL: Path("BENCHMARKS.md"), QUICK: Path("runs/bench/BENCHMARKS.quick.md")}
"""Where each mode writes without ``--output``: quick runs never touch the published file."""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``bench (--quick | --full) [--section NAME ...] [--output FILE] [--list]``."""
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        dest="mode",
        action="store_const",
        const=QUICK,
        help=f"CI-sized sizes, rounds and repeats; writes {DEFAULT_OUTPUTS[QUICK]} by default",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const=FULL,
        help=f"the published figures' arguments; writes {DEFAULT_OUTPUTS[FULL]} by default",
    )
    parser.add_argument(
        "--section",
        action="append",
        default=[],
        metavar="NAME",
        help="regenerate only this section (repeatable; default: every section; see --list)",
    )
    parser.add_argument("--output", type=Path, help="the Markdown file to update")
    parser.add_argument(
        "--list",
        action="store_true",
        help="list the sections with their quick and full commands, and run nothing",
    )
