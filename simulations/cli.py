"""``fedshop-sim``: the researcher's command line (storefront splits, synthetic data, the
main run).

Every subcommand is a :class:`Command` in ``COMMANDS``: a name, a help line, a function
declaring its arguments and a handler ``(args) -> int``. To add one, write those two
functions (in any module) and append a :class:`Command`. The ``main`` subcommand runs the
stages in ``MAIN_STAGES`` in order on one :class:`MainRun`; later work (federated
training, the report) appends stages there.

A handler stops on bad input by raising :class:`CommandError` (or one of
``USER_ERRORS``); :func:`main` prints it as one line ``fedshop-sim: error: ...`` and
returns exit code 2, never a traceback. Progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from clients.errors import IngestError
from privacy.pseudonymise import KeyFileError
from simulations.progress import Progress
from simulations.storefronts import (
    DEFAULT_MIN_CUSTOMERS,
    StorefrontError,
    format_summary,
    prepare_bundled_storefronts,
    prepare_storefronts,
)
from simulations.synthetic import generate_orders

PROG = "fedshop-sim"
EXIT_USAGE = 2
DEFAULT_MAIN_OUT = Path("runs/main")
STOREFRONTS_DIR = "storefronts"
"""Subdirectory of a main run that holds its storefront split."""


class CommandError(Exception):
    """A subcommand cannot proceed; the message is shown to the user as one line."""


USER_ERRORS: tuple[type[Exception], ...] = (
    CommandError,
    IngestError,
    KeyFileError,
    StorefrontError,
)
"""Exceptions that mean bad input, not a bug: shown as one line with exit code 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand: how it is called and what it does."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (``1_000_000`` allowed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_min_customers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--min-customers",
        type=positive_int,
        default=DEFAULT_MIN_CUSTOMERS,
        help="fewest customers a country needs to be its own storefront; smaller countries"
        f" form 'Other' (default {DEFAULT_MIN_CUSTOMERS})",
    )


def add_storefronts_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``storefronts --out DIR [--min-customers N]``."""
    parser.add_argument("--out", type=Path, required=True, help="directory for the split")
    _add_min_customers(parser)


def run_storefronts(args: argparse.Namespace) -> int:
    """Split the bundled data into storefronts and print the summary table."""
    progress = Progress(PROG)
    summary = prepare_bundled_storefronts(
        args.out, min_customers=args.min_customers, progress=progress
    )
    print(format_summary(summary))
    return 0


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``synth --out DIR --storefronts N --customers N --items N ...``."""
    parser.add_argument("--out", type=Path, required=True, help="directory for the split")
    parser.add_argument("--storefronts", type=positive_int, required=True)
    parser.add_argument("--customers", type=positive_int, required=True)
    parser.add_argument("--items", type=positive_int, required=True)
    parser.add_argument(
        "--order-lines",
        type=positive_int,
        help="exact rows, returns included (default 90 per customer)",
    )
    parser.add_argument("--seed", type=int, default=0)


def run_synth(args: argparse.Namespace) -> int:
    """Generate synthetic order lines, write them per storefront, print the summary."""
    progress = Progress(PROG)
    with progress.step("generate synthetic order lines"):
        try:
            frame = generate_orders(
                n_storefronts=args.storefronts,
                n_customers=args.customers,
                n_items=args.items,
                n_order_lines=args.order_lines,
                seed=args.seed,
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
    metadata = {
        "source": "synthetic",
        "seed": args.seed,
        "storefronts": args.storefronts,
        "customers": args.customers,
        "items": args.items,
        "order-lines": len(frame),
    }
    with progress.step(f"write the split to {args.out}"):
        summary = prepare_storefronts(frame, args.out, metadata=metadata)
    print(format_summary(summary))
    return 0


@dataclass
class MainRun:
    """State of one ``fedshop-sim main`` run, passed from stage to stage."""

    out_dir: Path
    min_customers: int
    progress: Progress
    storefront_summary: pd.DataFrame | None = None
    outputs: list[Path] = field(default_factory=list)


def prepare_storefronts_stage(run: MainRun) -> None:
    """Stage 1: the bundled data split into storefronts under ``<out>/storefronts``."""
    split_dir = run.out_dir / STOREFRONTS_DIR
    run.storefront_summary = prepare_bundled_storefronts(
        split_dir, min_customers=run.min_customers, progress=run.progress
    )
    run.outputs.append(split_dir)
    print(f"Storefronts of the bundled data (at least {run.min_customers} customers each):")
    print(format_summary(run.storefront_summary))


MAIN_STAGES: list[Callable[[MainRun], None]] = [prepare_storefronts_stage]
"""The stages of ``fedshop-sim main``, run in order."""


def add_main_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``main [--out DIR] [--min-customers N]``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_MAIN_OUT,
        help=f"run directory (default {DEFAULT_MAIN_OUT})",
    )
    _add_min_customers(parser)


def run_main(args: argparse.Namespace) -> int:
    """Run every stage of ``MAIN_STAGES`` on the bundled data."""
    run = MainRun(out_dir=args.out, min_customers=args.min_customers, progress=Progress(PROG))
    for stage in MAIN_STAGES:
        stage(run)
    print("Outputs: " + ", ".join(str(path) for path in run.outputs))
    return 0


COMMANDS: list[Command] = [
    Command(
        "main",
        "the main run on the bundled data (for now: its storefront split)",
        add_main_arguments,
        run_main,
    ),
    Command(
        "storefronts",
        "split the bundled data into storefronts and print the summary",
        add_storefronts_arguments,
        run_storefronts,
    ),
    Command(
        "synth",
        "generate synthetic order lines split into storefronts",
        add_synth_arguments,
        run_synth,
    ),
]
"""Subcommands, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``fedshop-sim`` argument parser with every command in ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="fedshop simulations on real or synthetic storefronts"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(handler=command.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fedshop-sim``; returns the exit code (0 ok, 2 bad input or usage)."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        return _fail(str(error))
    except OSError as error:
        target = f"{error.filename}: " if error.filename else ""
        return _fail(f"{target}{error.strerror or type(error).__name__}")


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
