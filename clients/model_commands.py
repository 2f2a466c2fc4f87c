"""``fedshop-site`` commands that use the global models: ``install-model``, one scoring
command per model use (``recommend``, ``churn-risk``), and ``serve``.

- ``install-model BUNDLE --data DIR``: install a bundle copied from the server (or a run
  another directory installed), verified in full first: only models the site's policy
  allows, every checksum, weights that fit their models (:mod:`clients.model_store`).
- ``<command> --data DIR (--customer ID --key KEY | --out FILE) [-k K] [--top N]
  [--own-ids EXPORT]``: score the site's customers with the installed run
  (:mod:`clients.scoring`). One customer, named by the site's own id (hashed with the
  site key here), is printed as JSON — the API's answer; all customers go to a Parquet or
  CSV file keyed by pseudonym, with the site's own ids beside them when ``--own-ids``
  names the export to re-read (:mod:`clients.own_ids`). The commands are declared by the
  built-in models' packages (:func:`models.site_use.builtin_site_uses`), so this module
  names no model.
- ``serve --data DIR --key KEY``: the HTTP API (:mod:`clients.api`) under uvicorn, on
  loopback unless told otherwise, swapping to a newly installed model on its own.

Handlers import the model stack, FastAPI and uvicorn when they run, so ``--help`` is light.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clients.adapters import add_format_options, mapping_from_args
from clients.model_store import InstalledModels, install_bundle_dir, load_installed
from common.atomic_files import atomic_output
from models.schema import CUSTOMER, ORDERS_FILE
from models.site_use import MAX_ITEMS, NoAnswer, SiteUse, builtin_site_uses
from privacy.pseudonymise import customer_token, load_key

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_PORT = 8080
LOOPBACK = ("127.0.0.1", "::1", "localhost")
TOKEN_FILE = "api-token"
TOKEN_BYTES = 32
SCORING_THREADS = 1
"""Torch threads while scoring: a customer is one tiny forward pass, and more threads only
wait on each other (measured: 2 threads on a busy 2-core machine took twice as long)."""


class ModelCommandError(Exception):
    """A model command cannot proceed; the message is shown as one line."""


def _add_data_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help=f"the site's prepared directory ({ORDERS_FILE}, models/, privacy ledger)",
    )


def add_install_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``install-model BUNDLE --data DIR``."""
    parser = subparsers.add_parser(
        "install-model",
        help="install a model bundle copied from the server (policy, checksums, weights checked)",
    )
    parser.add_argument("bundle", type=Path, help="the bundle directory (manifest.json, *.npz)")
    _add_data_option(parser)
    parser.set_defaults(handler=run_install)


def run_install(args: argparse.Namespace) -> int:
    """Install the bundle, score it on the site's own customers, say what the site uses."""
    from clients.local_evaluation import write_local_evaluation  # torch: not for --help

    installed = install_bundle_dir(args.bundle, args.data)
    write_local_evaluation(installed, _site_orders(args.data))
    print(
        f"installed model run {installed.run!r} in {installed.directory} (models allowed by the "
        "site's policy, checksums and weights verified)"
    )
    for model, spent in installed.site_privacy.items():
        print(f"  {model}: ε spent by this site {spent['epsilon']:.3g} (δ {spent['delta']:.3g})")
    _print_local_evaluation(installed)
    return 0


def add_local_evaluation_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``local-evaluation --data DIR``."""
    parser = subparsers.add_parser(
        "local-evaluation",
        help="the installed models' exact metrics on this site's own held-out customers "
        "(kept at the site; the server sees only noisy estimates)",
    )
    _add_data_option(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(handler=run_local_evaluation)


def run_local_evaluation(args: argparse.Namespace) -> int:
    """Show the installed run's exact local metrics (scoring it first if it never was)."""
    from clients.local_evaluation import read_local_evaluation, write_local_evaluation

    installed = load_installed(args.data)
    metrics = read_local_evaluation(installed)
    if metrics is None:
        write_local_evaluation(installed, _site_orders(args.data))
        metrics = read_local_evaluation(installed)
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        _print_local_evaluation(installed)
    return 0


def _print_local_evaluation(installed: InstalledModels) -> None:
    from clients.local_evaluation import read_local_evaluation

    metrics = read_local_evaluation(installed) or {}
    for model, values in sorted(metrics.items()):
        shown = ", ".join(
            f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
            for name, value in sorted(values.items())
        )
        print(f"  {model} on this site's held-out customers (exact, kept here): {shown}")


def _site_orders(data_dir: Path) -> pd.DataFrame:
    import pandas as pd

    path = Path(data_dir) / ORDERS_FILE
    if not path.is_file():
        raise ModelCommandError(f"{path}: no prepared orders; run `fedshop-site prepare` first")
    return pd.read_parquet(path)


def scoring_parser(use: SiteUse) -> Callable[[argparse._SubParsersAction], None]:
    """The ``add_parser`` function of ``use``'s command."""

    def add_parser(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser(use.command, help=use.summary)
        _add_data_option(parser)
        which = parser.add_mutually_exclusive_group(required=True)
        which.add_argument(
            "--customer", help="one customer by the site's own id: print the answer as JSON"
        )
        which.add_argument(
            "--out", type=Path, help="every customer, to a .parquet or .csv file by pseudonym"
        )
        parser.add_argument("--key", type=Path, help="the site key (for --customer, --own-ids)")
        if use.default_items is not None:
            parser.add_argument(
                "-k",
                type=_bounded(1, MAX_ITEMS),
                default=use.default_items,
                help=f"items per customer, 1 to {MAX_ITEMS} (default {use.default_items})",
            )
        if use.ranks_customers:
            parser.add_argument("--top", type=_bounded(1, None), help="only the first N customers")
        _add_own_ids_options(parser)
        parser.set_defaults(handler=run_scoring, use=use)

    return add_parser


def _add_own_ids_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--own-ids",
        type=Path,
        metavar="EXPORT",
        help="the export to re-read for the site's own customer ids (kept in memory only)",
    )
    add_format_options(parser)


def run_scoring(args: argparse.Namespace) -> int:
    """Score one customer (printed) or every customer (to ``--out``)."""
    import torch

    from clients.scoring import load_answers  # the model stack, only when scoring

    use: SiteUse = args.use
    key = _key(args, needed=args.customer is not None or args.own_ids is not None)
    if args.out is not None:
        _table_format(args.out)  # refuse a bad file name before the work
    ids = _own_ids(args, key)
    torch.set_num_threads(SCORING_THREADS)
    started = time.monotonic()
    print(f"scoring the customers of {args.data} ...", file=sys.stderr, flush=True)
    answers = load_answers(args.data, models=[use.model])
    scores = answers.for_use(use)
    seconds = time.monotonic() - started
    print(
        f"scored {answers.customers:,} customers with model run {answers.installed.run!r} in "
        f"{seconds:.1f} s ({answers.customers / seconds:,.0f} customers/s)",
        file=sys.stderr,
    )
    items = getattr(args, "k", None)
    if args.customer is not None:
        try:
            answer = scores.answer(customer_token(args.customer, key) or "", items)
        except NoAnswer as error:
            raise ModelCommandError(str(error)) from None
        print(json.dumps(answer, indent=2))
        return 0
    table = scores.table(items)
    if getattr(args, "top", None):
        table = table.head(args.top)
    if ids is not None:
        from clients.own_ids import with_own_ids

        table = with_own_ids(table, ids)
    _write_table(table, args.out)
    print(f"wrote {len(table):,} rows for {table[CUSTOMER].nunique():,} customers to {args.out}")
    return 0


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``serve --data DIR --key KEY [--host H] [--port P] [--token-file F] ...``."""
    parser = subparsers.add_parser(
        "serve", help="HTTP JSON API for the storefront's systems over the installed models"
    )
    _add_data_option(parser)
    parser.add_argument(
        "--key", type=Path, required=True, help="the site key (hashes the ids in requests)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"the bearer token, made (mode 0600) on first start (default: DATA/{TOKEN_FILE})",
    )
    _add_own_ids_options(parser)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Load the installed models, then serve until SIGINT/SIGTERM."""
    import torch
    import uvicorn

    from clients.api import build_app
    from clients.live_answers import LiveAnswers

    key = _key(args, needed=True)
    ids = _own_ids(args, key)
    token_file = args.token_file or args.data / TOKEN_FILE
    token, created = ensure_token(token_file)
    print(f"{'created' if created else 'using'} the API token in {token_file} (mode 0600)")
    torch.set_num_threads(SCORING_THREADS)  # a swap rebuilds on one core, requests keep one
    live = LiveAnswers(args.data)
    current = live.current
    print(
        f"serving model run {current.installed.run!r}: {', '.join(current.uses)} for"
        f" {current.customers:,} customers on http://{args.host}:{args.port} (docs: /docs)",
        flush=True,
    )
    if args.host not in LOOPBACK:
        print(
            f"WARNING: listening on {args.host}, beyond loopback: put TLS in front of it",
            file=sys.stderr,
        )
    app = build_app(live, token, key, ids)
    live.start()
    try:
        uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")
    finally:
        live.stop()
    return 0


def ensure_token(path: Path) -> tuple[str, bool]:
    """The API's bearer token in ``path``, created (random, mode 0600, never overwritten)
    on first use; returns ``(token, created)``.

    Raises:
        ModelCommandError: the file is readable by group or others, or empty.
    """
    path = Path(path)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _existing_token(path), False
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    return token, True


def _existing_token(path: Path) -> str:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ModelCommandError(
            f"{path}: API token is readable by others (mode {mode:04o}); run chmod 600 {path}"
        )
    token = path.read_text().strip()
    if not token:
        raise ModelCommandError(f"{path}: the API token file is empty; delete it to make one")
    return token


def _key(args: argparse.Namespace, *, needed: bool) -> bytes | None:
    if args.key is None:
        if needed:
            raise ModelCommandError("give --key: the site key hashes the customer ids")
        return None
    return load_key(args.key)


def _own_ids(args: argparse.Namespace, key: bytes | None) -> dict[str, str] | None:
    if args.own_ids is None:
        return None
    from clients.own_ids import own_ids

    return own_ids(args.own_ids, key, mapping_from_args(args), args.encoding)


def _table_format(path: Path) -> str:
    """``parquet``, ``csv`` or ``csv.gz`` by the file's suffixes.

    Raises:
        ModelCommandError: any other name.
    """
    suffixes = "".join(path.suffixes[-2:]).lower()
    for kind in ("parquet", "csv.gz", "csv"):
        if suffixes.endswith("." + kind):
            return kind
    raise ModelCommandError(f"--out {path}: name a .parquet, .csv or .csv.gz file")


def _write_table(table: pd.DataFrame, path: Path) -> None:
    """Write ``table`` as its name says, atomically and private (mode 0600)."""
    kind = _table_format(path)
    with atomic_output(path, mode=0o600) as temporary:
        if kind == "parquet":
            table.to_parquet(temporary, index=False)
        else:
            table.to_csv(temporary, index=False, compression="gzip" if kind == "csv.gz" else None)


def _bounded(low: int, high: int | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{value} is out of range: {allowed}")
        return value

    return parse


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_install_parser,
    add_local_evaluation_parser,
    *(scoring_parser(use) for use in builtin_site_uses()),
    add_serve_parser,
]
"""This module's subcommands, in ``--help`` order."""
