"""Running the federation server: the SuperLink process, the CLI connection, site registration.

``fedshop-server start`` is :func:`serve`: it launches ``flower-superlink`` with TLS, SuperNode
authentication and a database under a state directory, writes the connection
``[superlink.fedshop]`` into the central team's ``$FLWR_HOME/config.toml`` (so plain
``flwr`` commands reach it), registers every site public key found in the credentials
directory, and runs until SIGINT/SIGTERM, then stops the SuperLink by its process id.
``fedshop-server submit`` is :func:`submit_run`: ``flwr run <app> fedshop --stream``.

State directory layout: ``superlink.db`` (runs, nodes, registrations; survives restarts, so a
restarted SuperLink keeps its SuperNodes) and ``flwr-home/`` (the SuperLink's own
``FLWR_HOME``: installed apps). The SuperLink runs with the state directory as its working
directory, so relative paths written by the ServerApp land there too. Processes are started
and stopped through :mod:`common.flower_processes`, shared with the site side.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import tomli_w

from common import flower_processes
from common.atomic_files import atomic_write
from common.flower_processes import flower_environment
from server.certificates import (
    check_private_key_file,
    credential_paths,
    site_keys,
)

CONNECTION = "fedshop"
"""Name of the SuperLink connection in the central team's Flower configuration."""
APP_DIR = Path(__file__).resolve().parents[1]
"""The Flower app of this repository (its ``pyproject.toml`` declares the components)."""
DEFAULT_PORT = 8000
READY_TIMEOUT = 60.0
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
COMPLETED = "finished:completed"
_RUN_STARTED = re.compile(r"Successfully started run (\d+)")
_PUBLIC_KEY_IN_USE = "[code: 23]"
"""How ``flwr supernode register`` reports a key that is already registered."""


class DeploymentError(Exception):
    """The server cannot be started, configured or reached; the message says why."""


@dataclass(frozen=True)
class SuperLinkSettings:
    """How to run one SuperLink.

    Attributes:
        state: directory for the database, the SuperLink's FLWR_HOME and ServerApp outputs.
        certs: credentials directory (see :mod:`server.certificates`), or None for insecure
            mode: no TLS and no SuperNode authentication.
        host: address to listen on (``0.0.0.0`` for every interface).
        port: the one port serving the Fleet, Control and ServerAppIo APIs.
    """

    state: Path
    certs: Path | None
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    @property
    def insecure(self) -> bool:
        """True when the SuperLink runs without TLS and without node authentication."""
        return self.certs is None

    @property
    def database(self) -> Path:
        """The SuperLink's SQLite state."""
        return self.state / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        """The SuperLink process's own FLWR_HOME."""
        return self.state / "flwr-home"

    @property
    def local_address(self) -> str:
        """``host:port`` at which the CLI on this machine reaches the SuperLink."""
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def central_flwr_home(environ: Mapping[str, str] | None = None) -> Path:
    """The central team's FLWR_HOME: ``$FLWR_HOME``, else ``~/.flwr`` (as ``flwr`` uses)."""
    environ = os.environ if environ is None else environ
    return Path(environ.get("FLWR_HOME") or Path.home() / ".flwr")


def superlink_command(settings: SuperLinkSettings) -> list[str]:
    """The ``flower-superlink`` command line for ``settings``."""
    command = [
        "flower-superlink",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--database",
        str(settings.database.resolve()),
        "--disable-runtime-dependency-installation",
    ]
    if settings.certs is None:
        return [*command, "--insecure"]
    paths = credential_paths(settings.certs.resolve())
    return [
        *command,
        "--ssl-ca-certfile",
        str(paths.ca_cert),
        "--ssl-certfile",
        str(paths.server_cert),
        "--ssl-keyfile",
        str(paths.server_key),
        "--enable-supernode-auth",
    ]


def launch_superlink(settings: SuperLinkSettings, log: IO | None = None) -> subprocess.Popen:
    """Start ``flower-superlink`` in its own process group; its output goes to ``log``.

    Stop it with :func:`common.flower_processes.stop`.

    Raises:
        DeploymentError: a credentials file is missing or the server key is readable by others.
    """
    if settings.certs is not None:
        paths = credential_paths(settings.certs)
        for path in (paths.ca_cert, paths.server_cert):
            if not path.is_file():
                raise DeploymentError(
                    f"{path}: not found; create credentials with `fedshop-server certs`"
                )
        check_private_key_file(paths.server_key)
    settings.state.mkdir(parents=True, exist_ok=True)
    command = superlink_command(settings)
    return flower_processes.spawn(command, settings.flwr_home, cwd=settings.state, stdout=log)


def wait_until_listening(process: subprocess.Popen, address: str, timeout: float) -> None:
    """Block until ``address`` (``host:port``) accepts TCP connections.

    Raises:
        DeploymentError: the process exited, or nothing listened within ``timeout`` seconds.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(
                f"flower-superlink exited with code {process.returncode} before listening"
                f" on {address}"
            )
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(f"flower-superlink did not listen on {address} within {timeout:.0f} s")


def write_connection(flwr_home: Path, settings: SuperLinkSettings) -> Path:
    """Add or replace ``[superlink.fedshop]`` in ``flwr_home/config.toml``; returns its path.

    Other connections and settings in the file are kept. TLS mode records the CA certificate
    (``root-certificates``); insecure mode records ``insecure = true``.
    """
    config_path = Path(flwr_home) / "config.toml"
    config = tomllib.loads(config_path.read_text("utf-8")) if config_path.exists() else {}
    connection: dict[str, object] = {"address": settings.local_address}
    if settings.certs is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(credential_paths(settings.certs.resolve()).ca_cert)
    config.setdefault("superlink", {})[CONNECTION] = connection
    config_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(config_path, tomli_w.dumps(config))
    return config_path


def register_sites(flwr_home: Path, certs: Path) -> dict[str, str]:
    """Register every ``certs/sites/*.pub`` with the SuperLink via ``flwr supernode register``.

    Returns:
        Site name -> ``"registered"`` or ``"already registered"`` (a key registered by an
        earlier start of the same database).

    Raises:
        DeploymentError: a key was refused for another reason, or no site key exists.
    """
    sites = site_keys(certs)
    if not sites:
        raise DeploymentError(
            f"no site public keys in {Path(certs) / 'sites'}; add sites with"
            " `fedshop-server certs --out DIR --site NAME`"
        )
    env = flower_environment(flwr_home)
    outcome = {}
    for site in sites:
        command = ["flwr", "supernode", "register", str(site.public_key.resolve()), CONNECTION]
        command += ["--name", site.name, "--format", "json"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        reply = _json_reply(result)
        if reply.get("success"):
            outcome[site.name] = "registered"
        elif _PUBLIC_KEY_IN_USE in str(reply.get("error-message", "")):
            outcome[site.name] = "already registered"
        else:
            detail = reply.get("error-message") or result.stderr or result.stdout
            raise DeploymentError(
                f"registering site {site.name!r} ({site.public_key}) failed:"
                f" {' '.join(str(detail).split())}"
            )
    return outcome


def serve(settings: SuperLinkSettings, flwr_home: Path, *, log: IO | None = None) -> int:
    """Run the SuperLink in the foreground until SIGINT/SIGTERM or until it exits.

    Writes the CLI connection into ``flwr_home`` and registers the sites once it listens.
    Progress lines go to stdout; the SuperLink's own output to ``log`` (default: inherited).

    Returns:
        0 after a requested stop, else the SuperLink's exit code.

    Raises:
        DeploymentError: the SuperLink could not start or a site could not be registered (the
            SuperLink is stopped first).
    """
    if settings.insecure:
        print(
            "WARNING: insecure mode: no TLS and no SuperNode authentication; any process that"
            f" reaches {settings.host}:{settings.port} can join and read model updates",
            file=sys.stderr,
        )
    stop_requested = False

    def request_stop() -> None:
        nonlocal stop_requested
        stop_requested = True

    with flower_processes.on_termination(request_stop):
        process = launch_superlink(settings, log)
        try:
            wait_until_listening(process, settings.local_address, READY_TIMEOUT)
            config_path = write_connection(flwr_home, settings)
            print(f"SuperLink (pid {process.pid}) listening on {settings.host}:{settings.port}")
            print(f"connection {CONNECTION!r} written to {config_path}")
            if settings.certs is not None:
                for name, outcome in register_sites(flwr_home, settings.certs).items():
                    print(f"site {name}: {outcome}")
            print("ready; submit a run with `fedshop-server submit`; stop with Ctrl-C", flush=True)
            while not stop_requested and process.poll() is None:
                time.sleep(0.2)
        finally:
            flower_processes.stop(process)
    print(f"SuperLink stopped (exit code {process.returncode})", flush=True)
    return 0 if stop_requested else process.returncode


@dataclass(frozen=True)
class SubmittedRun:
    """What became of one ``flwr run``.

    Attributes:
        exit_code: 0 if the run was accepted (and, when followed, completed), else non-zero.
        run_id: the SuperLink's id for the run, if it was accepted.
        status: the run's final status (``finished:completed``, ``finished:failed``, ...)
            when its logs were followed, else None.
    """

    exit_code: int
    run_id: int | None
    status: str | None


def submit_run(
    flwr_home: Path,
    run_config: Sequence[str] = (),
    *,
    app_dir: Path = APP_DIR,
    stream: bool = True,
    out: IO[str] | None = None,
) -> SubmittedRun:
    """Submit the Flower app in ``app_dir`` to the ``fedshop`` connection.

    ``flwr run --stream`` exits with 0 even when the ServerApp fails, so after following the
    logs the run's final status is read back with ``flwr list`` and decides the exit code.

    Args:
        flwr_home: the central team's FLWR_HOME holding the connection (see :func:`serve`).
        run_config: ``--run-config`` values (``"key=value ..."`` or a TOML file), each passed on.
        app_dir: directory with the app's ``pyproject.toml``.
        stream: follow the run's logs until it ends (``--stream``).
        out: where flwr's output is echoed (default: stdout).
    """
    out = sys.stdout if out is None else out
    env = flower_environment(flwr_home)
    command = ["flwr", "run", str(Path(app_dir).resolve()), CONNECTION]
    for value in run_config:
        command += ["--run-config", value]
    if stream:
        command.append("--stream")
    run_id = None
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            out.write(line)
            out.flush()
            started = _RUN_STARTED.search(line)
            if started and run_id is None:
                run_id = int(started.group(1))
    if process.returncode != 0 or run_id is None:
        return SubmittedRun(process.returncode or 1, run_id, None)
    if not stream:
        return SubmittedRun(0, run_id, None)
    status = run_status(flwr_home, run_id)
    if status != COMPLETED:
        print(f"run {run_id} ended with status {status}", file=out, flush=True)
    return SubmittedRun(0 if status == COMPLETED else 1, run_id, status)


def run_status(flwr_home: Path, run_id: int, timeout: float = 30.0) -> str:
    """The status of run ``run_id`` once finished (or the last status seen at ``timeout``)."""
    command = ["flwr", "list", CONNECTION, "--run-id", str(run_id), "--format", "json"]
    env = flower_environment(flwr_home)
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        runs = _json_reply(result).get("runs") or [{}]
        status = str(runs[0].get("status", "unknown"))
        if status.startswith("finished") or time.monotonic() > deadline:
            return status
        time.sleep(1.0)


def _json_reply(result: subprocess.CompletedProcess) -> dict:
    # flwr prints the JSON object last, after any progress text
    start = result.stdout.find("{")
    try:
        return json.loads(result.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        return {}
