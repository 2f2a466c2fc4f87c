"""``fedshop-server``: the central team's command line (credentials, SuperLink, run submission).

Subcommands are thin over :mod:`server.certificates` and :mod:`server.deployment`:

- ``certs --out DIR --site NAME ... [--host H ...]`` issues the CA, server certificate and
  site keys, and says which files go to which site;
- ``start --certs DIR --state DIR [--host H] [--port P] [--insecure]`` runs the SuperLink in
  the foreground with TLS and SuperNode authentication and registers the sites;
- ``submit [--run-config ...]`` submits this repository's Flower app to it.

Bad input ends with one line ``fedshop-server: error: ...`` and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.console_errors import run_handler
from server.certificates import CredentialsError, credential_paths, issue_credentials
from server.deployment import (
    APP_DIR,
    DEFAULT_PORT,
    DeploymentError,
    SuperLinkSettings,
    central_flwr_home,
    serve,
    submit_run,
)

PROG = "fedshop-server"


def add_certs_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``certs --out DIR --site NAME [--site NAME ...] [--host H ...]``."""
    parser = subparsers.add_parser(
        "certs",
        help="issue the CA, the SuperLink's TLS certificate and one key pair per site",
    )
    parser.add_argument("--out", type=Path, required=True, help="credentials directory")
    parser.add_argument(
        "--site", action="append", required=True, help="a site name (repeat for each site)"
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="a DNS name or IP address sites use to reach the SuperLink (repeatable;"
        " localhost and 127.0.0.1 are always included)",
    )
    parser.set_defaults(handler=run_certs)


def run_certs(args: argparse.Namespace) -> int:
    """Issue credentials and print what each site receives."""
    issued = issue_credentials(args.out, args.site, args.host)
    server = credential_paths(args.out)
    print(f"SuperLink credentials: {server.ca_cert}, {server.server_cert}, {server.server_key}")
    print("hand each site, over a trusted channel, exactly these two files:")
    for site in issued.sites:
        print(f"  {site.name}: {server.ca_cert} and {site.private_key} (keep it private)")
    print(
        f"site public keys stay here ({server.directory / 'sites'}/*.pub): `start` registers them"
    )
    return 0


def add_start_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``start --certs DIR --state DIR [--host H] [--port P] [--insecure]``."""
    parser = subparsers.add_parser(
        "start", help="run the SuperLink (TLS + SuperNode authentication) until Ctrl-C"
    )
    parser.add_argument("--certs", type=Path, help="credentials directory from `certs`")
    parser.add_argument(
        "--state", type=Path, required=True, help="directory for the database and run outputs"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)"
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the SuperLink's port")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no node authentication: for local experiments only",
    )
    _add_flwr_home(parser)
    parser.set_defaults(handler=run_start)


def run_start(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    if args.insecure == (args.certs is not None):
        raise DeploymentError("give exactly one of --certs DIR and --insecure")
    settings = SuperLinkSettings(state=args.state, certs=args.certs, host=args.host, port=args.port)
    return serve(settings, args.flwr_home)


def add_submit_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``submit [--run-config VALUE ...] [--app DIR] [--flwr-home DIR]``."""
    parser = subparsers.add_parser(
        "submit", help="run the federated app on the SuperLink started by `start`"
    )
    parser.add_argument(
        "--run-config",
        action="append",
        default=[],
        help="run-config overrides: 'key=value key2=value2' or a TOML file (repeatable)",
    )
    parser.add_argument(
        "--app", type=Path, default=APP_DIR, help="the Flower app directory (default: this repo)"
    )
    _add_flwr_home(parser)
    parser.set_defaults(handler=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    """Submit a run and follow its logs; exit code 0 only if the run completed."""
    return submit_run(args.flwr_home, args.run_config, app_dir=args.app).exit_code


def _add_flwr_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--flwr-home",
        type=Path,
        default=central_flwr_home(),
        help="the Flower CLI home holding the 'fedshop' connection (default: $FLWR_HOME or"
        " ~/.flwr)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``fedshop-server`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="fedshop central server: credentials, SuperLink, runs"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser in (add_certs_parser, add_start_parser, add_submit_parser):
        add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``fedshop-server``; returns the exit code (0 ok, 2 bad input or usage)."""
    return run_handler(PROG, build_parser().parse_args(argv), (CredentialsError, DeploymentError))
