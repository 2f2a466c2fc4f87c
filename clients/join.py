"""``fedshop-site join``: connect this storefront to the federation as a Flower SuperNode.

Checks first that the site is ready (a prepared ``orders.parquet`` in the canonical schema, a
private SuperNode key, a CA certificate), then runs ``flower-supernode`` in the foreground:
TLS to the SuperLink (``--root-certificates``), node authentication
(``--auth-supernode-private-key``), ``data-path`` (and optionally ``storefront``) in the node
config for the ClientApp, a bounded reconnect budget, and an own ``FLWR_HOME``. Data never
travels: only the path does, and the ClientApp reads the file on this machine.

flwr 1.42's SuperNode logs "Giving up reconnection" when its budget is spent but then stays
alive (its Runtime API server thread is not a daemon), so ``join`` watches the output and
stops the SuperNode then, exiting with :data:`EXIT_GAVE_UP`; SIGINT/SIGTERM stop it cleanly.

Register with ``clients.cli`` by appending :func:`add_parser` to ``SUBCOMMANDS`` and catching
:class:`JoinError` in ``main``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from clients.site_data import AUDIT_DIR
from common import flower_processes
from models.schema import ARROW_SCHEMA, ORDERS_FILE

DEFAULT_PORT = 9094
DEFAULT_MAX_RETRIES = 30
DEFAULT_MAX_WAIT_TIME = 600.0
EXIT_GAVE_UP = 3
"""Exit code of ``join`` when the SuperNode spent its reconnect budget."""
GAVE_UP = "Giving up reconnection"
"""What flwr logs when ``--max-retries``/``--max-wait-time`` is exhausted."""


class JoinError(Exception):
    """The site is not ready to join; the message names the file and what to do."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Declare ``join --superlink HOST:PORT --ca CRT --key KEY --data DIR [options]``."""
    parser = subparsers.add_parser(
        "join", help="connect to the federation's SuperLink as a Flower SuperNode (foreground)"
    )
    parser.add_argument(
        "--superlink", required=True, help="the SuperLink's HOST:PORT, from the central team"
    )
    parser.add_argument("--ca", type=Path, help="the federation's CA certificate (ca.crt)")
    parser.add_argument(
        "--key",
        type=Path,
        help="this site's SuperNode private key (mode 0600), from the central team",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help=f"the prepared directory (with {ORDERS_FILE}, see `prepare`)",
    )
    parser.add_argument("--storefront", help="storefront name passed to the ClientApp")
    parser.add_argument(
        "--audit-dir",
        type=Path,
        help="keep a copy of every message this site sends, as it leaves (one file each)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="local port of the SuperNode's runtime API; distinct per SuperNode on one host",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=DEFAULT_MAX_RETRIES,
        help="give up after this many failed connection attempts",
    )
    parser.add_argument(
        "--max-wait-time",
        type=float,
        default=DEFAULT_MAX_WAIT_TIME,
        help="give up after trying to (re)connect for this many seconds",
    )
    parser.add_argument(
        "--flwr-home", type=Path, help="the SuperNode's FLWR_HOME (default: DATA/flwr-home)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS and no node authentication (only against a SuperLink started --insecure)",
    )
    parser.set_defaults(handler=run_join)


def run_join(args: argparse.Namespace) -> int:
    """Check the site, then run the SuperNode until it stops, gives up, or is told to stop."""
    if args.insecure and (args.ca is not None or args.key is not None):
        raise JoinError("--insecure cannot be combined with --ca or --key")
    if not args.insecure and (args.ca is None or args.key is None):
        raise JoinError(
            "give both --ca (the federation's ca.crt) and --key (this site's key);"
            " --insecure is for local experiments only"
        )
    check_site_ready(args.data, args.ca, args.key)
    command = supernode_command(
        args.superlink,
        args.data,
        ca=args.ca,
        key=args.key,
        storefront=args.storefront,
        audit_dir=args.audit_dir,
        port=args.port,
        max_retries=args.max_retries,
        max_wait_time=args.max_wait_time,
    )
    if args.insecure:
        print("WARNING: insecure mode: updates travel unencrypted", file=sys.stderr)
    print(f"joining {args.superlink} with {Path(args.data) / ORDERS_FILE}", flush=True)
    return run_supernode(command, args.flwr_home or Path(args.data) / "flwr-home")


def run_supernode(command: list[str], flwr_home: Path, out: IO[str] | None = None) -> int:
    """Run ``flower-supernode`` with its output echoed to ``out`` (default: stdout).

    Returns:
        0 after SIGINT/SIGTERM, :data:`EXIT_GAVE_UP` if it gave up reconnecting, else the
        SuperNode's own exit code (1 on a Flower error, e.g. a key the SuperLink refuses).
    """
    out = sys.stdout if out is None else out
    process = flower_processes.spawn(command, flwr_home, stdout=subprocess.PIPE, text=True)
    gave_up, stop_requested = threading.Event(), threading.Event()
    # a reader thread, because the pipe stays open while the SuperExec child outlives its node
    echo = threading.Thread(target=_echo, args=(process.stdout, out, gave_up), daemon=True)
    echo.start()
    try:
        with flower_processes.on_termination(stop_requested.set):
            while process.poll() is None and not (gave_up.is_set() or stop_requested.is_set()):
                time.sleep(0.2)
    finally:
        flower_processes.stop(process)
        echo.join(timeout=5)
    if gave_up.is_set():
        print(
            "SuperNode stopped: it gave up reconnecting to the SuperLink"
            " (--max-retries/--max-wait-time spent)",
            file=sys.stderr,
        )
        return EXIT_GAVE_UP
    return 0 if stop_requested.is_set() else process.returncode


def _echo(lines: IO[str], out: IO[str], gave_up: threading.Event) -> None:
    for line in lines:
        out.write(line)
        out.flush()
        if GAVE_UP in line:
            gave_up.set()


def check_site_ready(data_dir: Path, ca: Path | None, key: Path | None) -> None:
    """Refuse to join without prepared data, a readable CA certificate or a private EC key.

    Raises:
        JoinError: one line naming the file at fault and what is wrong.
    """
    orders = Path(data_dir) / ORDERS_FILE
    if not orders.is_file():
        raise JoinError(f"{orders}: not found; prepare the export first (`fedshop-site prepare`)")
    try:
        found = pq.read_schema(orders)
    except (OSError, pa.ArrowException) as error:
        raise JoinError(f"{orders}: not a readable Parquet file ({error})") from None
    for field in ARROW_SCHEMA:
        index = found.get_field_index(field.name)
        if index < 0 or found.field(index).type != field.type:
            raise JoinError(
                f"{orders}, column {field.name!r}: missing or not {field.type}; prepare the"
                " export again with `fedshop-site prepare`"
            )
    if ca is not None:
        try:
            x509.load_pem_x509_certificate(Path(ca).read_bytes())
        except (OSError, ValueError) as error:
            raise JoinError(f"{ca}: not a PEM CA certificate ({error})") from None
    if key is not None:
        _check_private_key(Path(key))


def supernode_command(
    superlink: str,
    data_dir: Path,
    *,
    ca: Path | None,
    key: Path | None,
    storefront: str | None = None,
    audit_dir: Path | None = None,
    port: int = DEFAULT_PORT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    max_wait_time: float = DEFAULT_MAX_WAIT_TIME,
) -> list[str]:
    """The ``flower-supernode`` command line; insecure when ``ca`` and ``key`` are None.

    Raises:
        JoinError: ``superlink`` is not ``HOST:PORT``, or a node-config value holds a quote.
    """
    host, _, port_text = superlink.rpartition(":")
    if not host or not port_text.isdigit():
        raise JoinError(f"--superlink {superlink!r}: expected HOST:PORT, e.g. fl.example.com:8000")
    node_config = {"data-path": str(Path(data_dir).resolve())}
    if storefront is not None:
        node_config["storefront"] = storefront
    if audit_dir is not None:
        node_config[AUDIT_DIR] = str(Path(audit_dir).resolve())
    command = ["flower-supernode", "--superlink", superlink, "--port", str(port)]
    command += ["--max-retries", str(max_retries), "--max-wait-time", str(max_wait_time)]
    command += ["--node-config", _node_config(node_config)]
    if ca is None or key is None:
        return [*command, "--insecure"]
    return [
        *command,
        "--root-certificates",
        str(Path(ca).resolve()),
        "--auth-supernode-private-key",
        str(Path(key).resolve()),
    ]


def _check_private_key(key: Path) -> None:
    if not key.is_file():
        raise JoinError(f"{key}: SuperNode key not found; ask the central team for it")
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        raise JoinError(f"{key}: key is readable by others (mode {mode:04o}); run chmod 600 {key}")
    try:
        private_key = load_ssh_private_key(key.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise JoinError(f"{key}: not an OpenSSH private key ({error})") from None
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise JoinError(f"{key}: not an EC key; SuperNode authentication needs EC (P-384)")


def _node_config(values: Mapping[str, str]) -> str:
    for name, value in values.items():
        if "'" in value or "\n" in value:
            raise JoinError(f"{name} {value!r}: must not contain quotes or line breaks")
    return " ".join(f"{name}='{value}'" for name, value in values.items())
