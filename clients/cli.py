"""``fedshop-site``: the storefront's command line (key generation, export preparation,
the site's privacy policy and report, joining the federation, and using the global models:
:mod:`clients.model_commands`).

Each subcommand is a pair: ``add_<name>_parser(subparsers)`` declares its arguments and
sets ``handler``, a function ``(args) -> int``. To add a subcommand from another module,
append its ``add_parser`` function to ``SUBCOMMANDS``. A handler stops on bad input by
raising :class:`CommandError` (or :class:`~clients.errors.IngestError`,
:class:`~privacy.pseudonymise.KeyFileError`, :class:`OSError`); ``main`` turns these into
one line ``fedshop-site: error: ...`` and exit code 2, never a traceback. Any other
exception is a bug: it is reported in one line by type and place only (exit code 1),
because a library's message may quote a raw cell.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from clients import join, model_commands, site_privacy
from clients.adapters import add_format_options, mapping_from_args
from clients.errors import IngestError
from clients.ingest import ORDERS_FILE, REPORT_FILE, IngestReport, prepare_export
from clients.model_store import ModelStoreError
from clients.site_data import SiteDataError
from common.console_errors import run_handler
from privacy.ledger import LedgerError
from privacy.pseudonymise import KeyFileError, generate_key

PROG = "fedshop-site"


class CommandError(Exception):
    """A subcommand cannot proceed; the message is shown to the user as one line."""


def add_keygen_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``keygen --key PATH``."""
    parser = subparsers.add_parser(
        "keygen",
        help="create the site's secret pseudonymisation key (mode 0600; never overwritten)",
    )
    parser.add_argument("--key", type=Path, required=True, help="where to create the key")
    parser.set_defaults(handler=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    """Create a new site key."""
    generate_key(args.key)
    print(f"created site key {args.key} (mode 0600): keep it private and backed up;")
    print("the same key is needed to link future exports to today's pseudonyms")
    return 0


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``prepare SOURCE --key K --out DIR [--adapter A | --mapping F] [--encoding E]``."""
    parser = subparsers.add_parser(
        "prepare",
        help="validate, pseudonymise and clean an export into OUT/orders.parquet",
    )
    parser.add_argument(
        "source", type=Path, help="the export: CSV (any delimiter, gzip) or Parquet"
    )
    parser.add_argument("--key", type=Path, required=True, help="the site key (see keygen)")
    parser.add_argument("--out", type=Path, required=True, help="directory for the prepared files")
    add_format_options(parser)
    parser.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Prepare one export and print a summary of the ingest report."""
    mapping = mapping_from_args(args)
    report = prepare_export(
        args.source, args.out, args.key, mapping=mapping, encoding=args.encoding
    )
    print(summarise(report, args.out))
    site_privacy.ensure_default_policy(args.out, set_by=PROG + " prepare")
    print(f"privacy policy in {args.out}: see or change it with `{PROG} policy --data {args.out}`")
    return 0


def summarise(report: IngestReport, out_dir: Path) -> str:
    """A short human summary of an ingest report (counts only, no ids)."""
    lines = [
        f"read {report.rows_read:,} rows from {report.source} ({report.source_format},"
        f" format {report.mapping})",
    ]
    lines += [
        f"  dropped {count.rows:,} rows: {rule} ({count.customers:,} customers lost)"
        for rule, count in report.cleaning.items()
    ]
    lines.append(f"  kept {report.returns_flagged:,} cancellation/return rows, flagged")
    if report.columns_dropped:
        columns = ", ".join(
            f"{name} (personal)" if name in report.personal_columns_dropped else name
            for name in report.columns_dropped
        )
        lines.append(f"  columns not written: {columns}")
    lines.append(
        f"wrote {report.rows_written:,} rows of {report.customers_written:,} customers to"
        f" {out_dir / ORDERS_FILE}; report in {out_dir / REPORT_FILE}"
    )
    return "\n".join(lines)


USER_ERRORS: tuple[type[Exception], ...] = (
    CommandError,
    IngestError,
    KeyFileError,
    join.JoinError,
    site_privacy.PolicyCommandError,
    LedgerError,
    model_commands.ModelCommandError,
    ModelStoreError,
    SiteDataError,
)
"""Exceptions that mean bad input, not a bug: shown as one line with exit code 2."""

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_keygen_parser,
    add_prepare_parser,
    join.add_parser,
    site_privacy.add_policy_parser,
    site_privacy.add_privacy_report_parser,
    *model_commands.SUBCOMMANDS,
]
"""Parser builders, one per subcommand, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The ``fedshop-site`` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="fedshop at a storefront: keys, data preparation, the site's privacy "
        "policy and report, joining the federation, scoring customers with the global models "
        "and serving them",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in SUBCOMMANDS:
        add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fedshop-site``; returns the exit code (0 ok, 2 bad input or usage, 1 a bug)."""
    args = build_parser().parse_args(argv)
    return run_handler(PROG, args, USER_ERRORS, withhold_internal_errors=True)
