"""``fedshop-sim``: the researcher's command line (storefront splits, synthetic data,
federated simulation runs with their report, the main run). The studies and benchmarks
have their own, ``python -m lab`` (:mod:`lab.cli`), over the same :class:`Command`.

Every subcommand is a :class:`Command` in ``COMMANDS``: a name, a help line, a function
declaring its arguments and a handler ``(args) -> int``. To add one, write those two
functions (in any module) and append a :class:`Command`. Commands that train (``main``,
``run``) have a :class:`DeferredHandler`, so their module, and
the torch/Flower/matplotlib stack it imports, loads only when such a command runs:
``--help``, ``synth`` and ``storefronts`` start without it. ``main`` and ``run`` are the
staged jobs of :mod:`simulations.jobs`.

A handler stops on bad input by raising :class:`CommandError` (or one of
``USER_ERRORS``); :func:`main` prints it as one line ``fedshop-sim: error: ...`` and
returns exit code 2, never a traceback. Progress lines go to stderr, results to stdout.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clients.errors import IngestError
from clients.site_privacy import PolicyCommandError
from common.console_errors import run_handler
from privacy.pseudonymise import KeyFileError
from simulations.errors import PROG, CommandError, ComparisonError, PrivacyReportError
from simulations.progress import Progress
from simulations.runner import DEFAULT_CLIENT_CPUS, SimulationError
from simulations.storefronts import (
    DEFAULT_MIN_CUSTOMERS,
    StorefrontError,
    format_summary,
    prepare_bundled_storefronts,
)
from simulations.synthetic import LARGEST_STOREFRONT_SHARE, ZIPF, write_synthetic_split

DEFAULT_MAIN_OUT = Path("runs/main")
BUNDLED_REFERENCE = Path(__file__).parent / "data" / "reference-comparison.json"
"""``python -m lab compare`` on the bundled data, shown beside the main job's results."""


USER_ERRORS: tuple[type[Exception], ...] = (
    CommandError,
    IngestError,
    KeyFileError,
    StorefrontError,
    SimulationError,
    PrivacyReportError,
    ComparisonError,
    PolicyCommandError,
)
"""Exceptions that mean bad input, not a bug: shown as one line with exit code 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand: how it is called and what it does."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class DeferredHandler:
    """A handler whose module is imported only when its command runs: the training stack
    such a module imports (torch, Flower, matplotlib) costs seconds that ``--help`` and
    the light commands should not pay."""

    module: str
    function: str

    def __call__(self, args: argparse.Namespace) -> int:
        """Import ``module`` and run its ``function`` on ``args``."""
        return getattr(importlib.import_module(self.module), self.function)(args)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (``1_000_000`` allowed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def largest_share(text: str) -> float | None:
    """A ``--largest-share`` value: a share in (0, 1), or ``zipf`` (None)."""
    if text.strip().lower() == ZIPF:
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a share or {ZIPF!r}: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1) or {ZIPF!r}, got {text}")
    return value


LARGEST_SHARE_HELP = (
    f"share of all customers in the largest storefront (default {LARGEST_STOREFRONT_SHARE}, "
    f"like the UK in the bundled data), or '{ZIPF}': every storefront on one Zipf curve, a "
    "few large and many small (with 1,000 storefronts the largest holds ~23%%)"
)


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
    parser.add_argument(
        "--largest-share",
        type=largest_share,
        default=LARGEST_STOREFRONT_SHARE,
        help=LARGEST_SHARE_HELP,
    )
    parser.add_argument("--seed", type=int, default=0)


def run_synth(args: argparse.Namespace) -> int:
    """Generate synthetic order lines, write them per storefront, print the summary."""
    summary = write_synthetic_split(
        args.out,
        storefronts=args.storefronts,
        customers=args.customers,
        items=args.items,
        order_lines=args.order_lines,
        seed=args.seed,
        progress=Progress(PROG),
        largest=args.largest_share,
    )
    print(format_summary(summary))
    return 0


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the federated-training options shared by ``run`` and ``main``."""
    group = parser.add_argument_group("federated training")
    group.add_argument("--models", help="comma-separated: churn, recommender")
    group.add_argument("--rounds", type=positive_int, help="federated rounds per model")
    group.add_argument("--epsilon", type=float, help="ε budget per site and model (≤ 0: no DP)")
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "any other key of [tool.flwr.app.config] (value in TOML: 0.5, true, 'text'), "
            "e.g. recommender.learning-rate=1.0"
        ),
    )
    group.add_argument(
        "--client-cpus",
        type=positive_int,
        default=DEFAULT_CLIENT_CPUS,
        help=f"CPUs per simulated ClientApp (default {DEFAULT_CLIENT_CPUS}): Ray runs a node's "
        "CPUs divided by this many ClientApps at once on each node",
    )
    group.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS") or None,
        metavar="HOST:PORT",
        help="run the simulated ClientApps on the running Ray cluster whose head is at this "
        "address (what `ray start --head` printed); run fedshop-sim on one of the cluster's "
        "nodes, with the storefronts and --out at the same paths on every node (default: "
        "$RAY_ADDRESS if set, else a Ray instance of the run's own on this machine)",
    )
    group.add_argument(
        "--sweep-dir",
        type=Path,
        help="directory of other runs (e.g. other ε) to draw on the privacy-utility curve",
    )
    group.add_argument(
        "--site-policy",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a privacy-policy setting of every simulated site, as for `fedshop-site policy "
        "--set` (e.g. epsilon-cap=20, dp-required=false, min-cohort=10); default: the site "
        "defaults (ε cap 8 per model, DP required, minimum cohort 20)",
    )
    group.add_argument(
        "--verbose",
        action="store_true",
        help="show Flower's whole log live (by default it goes to <out>/flwr-run.log and the "
        "console shows one line per round)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``run (--storefronts DIR | --bundled | --synthetic) --out RUN_DIR ...``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--storefronts", type=Path, help="an existing storefront split")
    source.add_argument("--bundled", action="store_true", help="split the bundled data")
    source.add_argument("--synthetic", action="store_true", help="generate synthetic data")
    parser.add_argument("--out", type=Path, required=True, help="the run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run already in --out")
    parser.add_argument(
        "--reference",
        type=Path,
        help="a comparison.json of `python -m lab compare` on the same data, shown in the report",
    )
    _add_min_customers(parser)
    synthetic = parser.add_argument_group("synthetic data (with --synthetic)")
    synthetic.add_argument("--synthetic-storefronts", type=positive_int, default=3)
    synthetic.add_argument("--synthetic-customers", type=positive_int, default=300)
    synthetic.add_argument("--synthetic-items", type=positive_int, default=200)
    synthetic.add_argument(
        "--synthetic-order-lines",
        type=positive_int,
        help="exact rows over all storefronts, returns included (default 90 per customer)",
    )
    synthetic.add_argument(
        "--synthetic-largest-share",
        type=largest_share,
        default=LARGEST_STOREFRONT_SHARE,
        help=LARGEST_SHARE_HELP,
    )
    synthetic.add_argument("--seed", type=int, default=0)
    add_training_arguments(parser)


def add_main_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``main [--out DIR] [--min-customers N] [training options]``."""
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_MAIN_OUT,
        help=f"run directory, replaced on every main run (default {DEFAULT_MAIN_OUT})",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=BUNDLED_REFERENCE,
        help="a comparison.json of `python -m lab compare` shown beside the results in the "
        "report (default: the one made on the bundled data, shipped with fedshop)",
    )
    _add_min_customers(parser)
    add_training_arguments(parser)


COMMANDS: list[Command] = [
    Command(
        "main",
        "the main job: bundled data -> storefronts -> federated DP training -> report.html",
        add_main_arguments,
        DeferredHandler("simulations.jobs", "run_main"),
    ),
    Command(
        "run",
        "federated DP simulation of the Flower app on storefronts, with privacy report"
        " and report.html",
        add_run_arguments,
        DeferredHandler("simulations.jobs", "run_run"),
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


def build_parser(
    prog: str = PROG,
    description: str = "fedshop simulations on real or synthetic storefronts",
    commands: list[Command] = COMMANDS,
) -> argparse.ArgumentParser:
    """The argument parser of ``prog`` with every command in ``commands``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in commands:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(handler=command.handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fedshop-sim``; returns the exit code (0 ok, 2 bad input or usage)."""
    return run_handler(PROG, build_parser().parse_args(argv), USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
