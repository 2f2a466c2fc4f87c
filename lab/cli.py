"""``python -m lab``: the studies and the benchmarks file from the command line.

The commands are :class:`simulations.cli.Command` entries like ``fedshop-sim``'s, and
report bad input the same way (one line, exit code 2). ``compare`` and ``tune`` import
their module, and the training stack with it, only when they run.
"""

from __future__ import annotations

import argparse

from common.console_errors import run_handler
from lab.bench import BenchError, add_bench_arguments, run_bench
from lab.compare_options import add_compare_arguments
from lab.tune_options import add_tune_arguments
from simulations import cli as simulations_cli
from simulations.cli import USER_ERRORS, Command, DeferredHandler

PROG = "python -m lab"

COMMANDS: list[Command] = [
    Command(
        "compare",
        "centralized (plain and DP) and storefront-alone training on the bundled data,"
        " side by side with the baselines",
        add_compare_arguments,
        DeferredHandler("lab.compare", "run_compare"),
    ),
    Command(
        "tune",
        "seeded random search of a model's DP settings at one ε, scored on the validation"
        " split only (never on test)",
        add_tune_arguments,
        DeferredHandler("lab.tuning", "run_tune"),
    ),
    Command(
        "bench",
        "regenerate BENCHMARKS.md section by section (--quick: CI-sized, --full: published)",
        add_bench_arguments,
        run_bench,
    ),
]
"""Subcommands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m lab`` argument parser with every command in ``COMMANDS``."""
    return simulations_cli.build_parser(PROG, "fedshop's studies and benchmarks", COMMANDS)


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m lab``; returns the exit code (0 ok, 2 bad input or usage)."""
    return run_handler(PROG, build_parser().parse_args(argv), (*USER_ERRORS, BenchError))
