"""Running the fedshop Flower app as a simulation, the way Flower users do: ``flwr run``.

:func:`run_simulation_job` calls ``flwr run <app> --stream`` with the ``:local:``
connection, so Flower starts its managed local SuperLink in simulation mode and runs the
real ServerApp and ClientApp of ``pyproject.toml`` on one simulated SuperNode per
storefront. The run config is passed with ``--run-config`` (a TOML file of overrides, so
any path survives quoting); the number of SuperNodes and the CPUs per ClientApp with
``--federation-config``. Each job is isolated: its own ``FLWR_HOME`` under the run
directory, its own free ports for the SuperLink, no telemetry, no update check and no
per-run dependency installation. The SuperLink ``flwr`` leaves running (and the SuperExec
below it) is stopped by pid when the job ends, however it ends
(:mod:`simulations.local_superlink`).

Flower's simulation backend calls ``ray.init()`` without an address, so Ray decides where
the ClientApps run from ``RAY_ADDRESS`` in the environment it inherits. The job sets it:
to a running cluster's address when asked (``ray_address``; the ClientApps then run as
Ray actors on every node of that cluster, as many per node as its CPUs divided by
``client_cpus``), else to ``local``, a Ray instance of the job's own, so that a cluster
someone started on the machine with ``ray start`` is never joined by accident.

The console shows one line per round and model, and a ticker on a terminal
(:class:`RunConsole`); with ``verbose``, the whole log live. What the job leaves in the
run directory besides the ServerApp's outputs::

    <run-dir>/flwr-run.log       everything ``flwr run --stream`` printed
    <run-dir>/flwr-home/         the job's FLWR_HOME: SuperLink state and log, installed app
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from clients.site_data import storefront_slugs
from common.flower_processes import flower_environment
from models.schema import ORDERS_FILE
from server import progress
from server.checkpoint import CHECKPOINT_DIR
from simulations.local_superlink import find_local_superlink, processes_of_home, stop_processes
from simulations.loopback_ports import free_ports
from simulations.site_policies import apply_site_policy

APP_DIR = Path(__file__).resolve().parents[1]
"""The directory of the fedshop Flower app (its ``pyproject.toml``)."""
FLWR_HOME_DIR = "flwr-home"
RUN_LOG = "flwr-run.log"
RUN_CONFIG_FILE = "run-config.toml"
COMPLETED = "finished:completed"
DEFAULT_CLIENT_CPUS = 1
"""CPUs Ray reserves per simulated ClientApp: on a 2-core machine two sites train at once."""

SUPERLINK_START_ATTEMPTS = 3
"""``flwr`` gives its managed SuperLink 15 s to start (not configurable); on a busy machine
that can fail, and the job tries again."""

LOCAL_RAY = "local"
"""``RAY_ADDRESS`` that makes ``ray.init()`` start a Ray instance of its own."""
RAY_CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a Ray cluster's head to accept a connection before giving up."""

_SUPERLINK_START_FAILED = "Failed to start local SuperLink"
_RUN_STARTED = re.compile(r"Successfully started run (\d+)")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class SimulationError(Exception):
    """A simulation job cannot start or did not complete; ``str()`` is one line."""


def app_run_config(app_dir: Path = APP_DIR) -> dict[str, Any]:
    """The app's default run config: ``[tool.flwr.app.config]`` of its ``pyproject.toml``,
    flattened as Flower does (``recommender.learning-rate`` for a per-model table)."""
    # Imported here, not at the top: fedshop-sim's parser reads this module's settings,
    # and Flower's import costs seconds that light commands (--help, synth) do not need.
    from flwr.common.config import flatten_dict

    with open(Path(app_dir) / "pyproject.toml", "rb") as file:
        return flatten_dict(tomllib.load(file)["tool"]["flwr"]["app"]["config"])


def run_simulation_job(
    storefronts_dir: Path,
    run_dir: Path,
    *,
    run_config: Mapping[str, Any],
    num_supernodes: int | None = None,
    client_cpus: int = DEFAULT_CLIENT_CPUS,
    resume: bool = False,
    app_dir: Path = APP_DIR,
    out: TextIO | None = None,
    verbose: bool = False,
    site_policy: Sequence[str] = (),
    ray_address: str | None = None,
) -> Path:
    """Run the federated simulation of the app on a storefront split; returns ``run_dir``,
    which then also holds the final models' exact metrics on the split
    (:mod:`simulations.exact_evaluation`).

    Args:
        storefronts_dir: a split written by :mod:`simulations.storefronts`.
        run_dir: where the ServerApp writes the run (config, rounds, checkpoints, bundle,
            the simulated sites' privacy ledgers).
        run_config: overrides of ``[tool.flwr.app.config]`` (kebab-case keys); the job
            sets ``storefronts-dir`` and ``run-dir`` itself, as absolute paths.
        num_supernodes: simulated SuperNodes; default and maximum: one per storefront.
        client_cpus: CPUs reserved per ClientApp (Ray's ``num_cpus``).
        resume: continue a run directory that already holds checkpoints (otherwise such
            a directory is refused, so a finished run is never silently extended).
        app_dir: the Flower app to run.
        out: where the progress lines go (default: stderr).
        verbose: show ``flwr run``'s whole output live instead of one line per round.
        site_policy: ``KEY=VALUE`` settings of every simulated site's privacy policy
            (:mod:`simulations.site_policies`); none: the sites' defaults.
        ray_address: ``HOST:PORT`` of a running Ray cluster's head (what ``ray start
            --head`` prints) to run the ClientApps on; this machine must be one of the
            cluster's nodes, and every node must see the storefronts and the run directory
            at the same paths. None (or ``local``): a Ray instance of the job's own.

    Raises:
        SimulationError: bad arguments, the Ray cluster cannot be reached, ``flwr``
            failed, or the run did not complete.
    """
    out = sys.stderr if out is None else out
    storefronts_dir = Path(storefronts_dir).resolve()
    run_dir = Path(run_dir).resolve()
    supernodes = _supernodes(storefronts_dir, num_supernodes)
    attach_to = ray_cluster_address(ray_address)
    if not resume and any((run_dir / CHECKPOINT_DIR).glob("*")):
        raise SimulationError(
            f"{run_dir} already holds a run (checkpoints); choose a new directory or resume it"
        )
    overrides = {
        **run_config,
        "storefronts-dir": str(storefronts_dir),
        "run-dir": str(run_dir),
    }
    unknown = sorted(set(overrides) - set(app_run_config(app_dir)))
    if unknown:
        raise SimulationError(
            f"run config key(s) {', '.join(unknown)} are not in [tool.flwr.app.config] of "
            f"{Path(app_dir) / 'pyproject.toml'}"
        )
    for value in run_config.values():
        _toml_value(value)  # refuses a type Flower cannot take before facts are derived

    # Imported here: the models load torch, which the light commands importing this
    # module do not.
    from simulations.shared_facts import with_split_facts

    try:
        overrides = with_split_facts(overrides)
    except ValueError as error:
        raise SimulationError(f"shared facts: {error}") from None
    config_toml = "".join(f"{key} = {_toml_value(value)}\n" for key, value in overrides.items())
    apply_site_policy(storefronts_dir, run_dir, site_policy, set_by="fedshop-sim")

    flwr_home = run_dir / FLWR_HOME_DIR
    flwr_home.mkdir(parents=True, exist_ok=True)
    config_file = flwr_home / RUN_CONFIG_FILE
    config_file.write_text(config_toml)
    port, control_port = free_ports(2)
    env = flower_environment(flwr_home)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(port)
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(control_port)
    env["RAY_ADDRESS"] = attach_to or LOCAL_RAY
    command = [
        "flwr",
        "run",
        str(Path(app_dir).resolve()),
        "--stream",
        "--run-config",
        str(config_file),
        "--federation-config",
        f"num-supernodes={supernodes} client-resources-num-cpus={client_cpus}",
    ]
    (run_dir / RUN_LOG).unlink(missing_ok=True)
    console = RunConsole(out, verbose=verbose)
    if attach_to is not None:
        print(
            f"[fedshop-sim] ClientApps run on the Ray cluster at {attach_to}", file=out, flush=True
        )
    try:
        for attempt in range(1, SUPERLINK_START_ATTEMPTS + 1):
            run_id = _run_streaming(command, env, run_dir / RUN_LOG, console)
            if run_id is not None or attempt == SUPERLINK_START_ATTEMPTS:
                break
            print(
                f"[fedshop-sim] the local SuperLink did not start within flwr's limit "
                f"(attempt {attempt} of {SUPERLINK_START_ATTEMPTS}); trying again",
                file=out,
                flush=True,
            )
        status = _run_status(env, run_id) if run_id is not None else "not started"
    finally:
        stopped = find_local_superlink(flwr_home, port)
        stop_processes(stopped)
        # Ray's daemons can outlive the SuperExec that started them, re-parented to init.
        stragglers = processes_of_home(flwr_home)
        stop_processes(stragglers)
        stopped += stragglers
        if stopped:
            pids = ", ".join(f"{p.name} {p.pid}" for p in stopped)
            print(f"[fedshop-sim] stopped the local SuperLink by pid: {pids}", file=out, flush=True)
    if status != COMPLETED:
        ray_problem = _ray_problem(run_dir / RUN_LOG)
        if ray_problem:
            where = f"the Ray cluster at {attach_to}" if attach_to else "Ray"
            raise SimulationError(
                f"the simulation could not run on {where}: {ray_problem}; see {run_dir / RUN_LOG}"
            )
        raise SimulationError(f"flwr run ended with status {status!r}; see {run_dir / RUN_LOG}")
    # Imported here: scoring loads torch, which the light commands importing this module do not.
    from simulations.exact_evaluation import write_exact_evaluation

    write_exact_evaluation(storefronts_dir, run_dir)
    return run_dir


def ray_cluster_address(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT) -> str | None:
    """The Ray cluster a job should attach to: None for none (``address`` None, empty or
    ``local``), else ``address`` once it is ``HOST:PORT`` and something accepts connections
    there (whether it is a Ray head shows when Ray connects).

    Raises:
        SimulationError: in one line, saying which of the two is not the case.
    """
    if address is None or address.strip() in ("", LOCAL_RAY):
        return None
    host, separator, port = address.strip().rpartition(":")
    if "://" in address or not separator or not host or not port.isdigit():
        raise SimulationError(
            f"a Ray cluster address is HOST:PORT, as `ray start --head` prints it, got {address!r}"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as error:
        reason = error.strerror or str(error) or type(error).__name__
        raise SimulationError(
            f"cannot reach the Ray cluster at {address} ({reason}); is its head running "
            f"(`ray start --head --port {port}`)?"
        ) from None
    return address.strip()


def _supernodes(storefronts_dir: Path, requested: int | None) -> int:
    if not storefronts_dir.is_dir():
        raise SimulationError(f"{storefronts_dir}: no such storefront split directory")
    available = len(storefront_slugs(storefronts_dir))
    if available == 0:
        raise SimulationError(f"{storefronts_dir} holds no storefront ({ORDERS_FILE}) to simulate")
    if requested is None:
        return available
    if not 1 <= requested <= available:
        raise SimulationError(
            f"num_supernodes must be between 1 and the {available} storefronts of "
            f"{storefronts_dir}, got {requested}"
        )
    return requested


def _run_streaming(
    command: list[str], env: dict[str, str], log: Path, console: RunConsole
) -> int | None:
    """Run ``flwr run --stream``, logging its lines and showing them on ``console``; return
    the run id, or None if the managed SuperLink failed to start."""
    run_id = None
    superlink_failed = False
    with (
        open(log, "a") as log_file,
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
        console.ticking(),
    ):
        try:
            for line in process.stdout:
                line = _ANSI_ESCAPE.sub("", line)
                log_file.write(line)
                log_file.flush()
                console.show(line)
                started = _RUN_STARTED.search(line)
                if started and run_id is None:
                    run_id = int(started.group(1))
                superlink_failed = superlink_failed or _SUPERLINK_START_FAILED in line
        except BaseException:
            process.terminate()
            raise
    if process.returncode != 0 and superlink_failed and run_id is None:
        return None
    if process.returncode != 0:
        raise SimulationError(
            f"flwr run exited with code {process.returncode}; see {log} (last line: "
            f"{_last_line(log)!r})"
        )
    return run_id


class RunConsole:
    """What the console shows of a running ``flwr run``.

    By default, one line per round and model (:func:`server.progress.round_line`) and, on
    a terminal, a ticker naming the stage under way with its elapsed seconds; Flower's,
    Ray's and Opacus's own output goes to the run's log only. ``verbose`` shows every line
    of the log live instead.
    """

    def __init__(self, out: TextIO, *, verbose: bool = False, prog: str = "fedshop-sim") -> None:
        self.out, self.verbose, self.prog = out, verbose, prog
        self._status = ""
        self._round_started = time.monotonic()
        self._lock = threading.Lock()
        self._ticker_width = 0

    def show(self, line: str) -> None:
        """Take one line of ``flwr run``'s output."""
        if self.verbose:
            self._write(line)
            return
        event = progress.parse(line)
        if event is None:
            return
        if event.stage == "done":
            seconds = time.monotonic() - self._round_started
            self._status = ""
            self._write(f"[{self.prog}] {progress.round_line(event, seconds)}\n")
        else:
            if event.stage == "training":
                self._round_started = time.monotonic()
            self._status = progress.stage_line(event)

    @contextmanager
    def ticking(self) -> Iterator[None]:
        """Inside the block, refresh the ticker every second (on a terminal only)."""
        if self.verbose or not self.out.isatty():
            yield
            return
        stop = threading.Event()

        def tick() -> None:
            while not stop.wait(1.0):
                if self._status:
                    elapsed = time.monotonic() - self._round_started
                    self._write(f"[{self.prog}] {self._status} · {elapsed:.0f} s", ticker=True)

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._write("")

    def _write(self, text: str, *, ticker: bool = False) -> None:
        with self._lock:
            if self._ticker_width:  # clear the ticker line before anything else
                self.out.write("\r" + " " * self._ticker_width + "\r")
                self._ticker_width = 0
            self.out.write(text)
            if ticker:
                self._ticker_width = len(text)
            self.out.flush()


def _run_status(env: dict[str, str], run_id: int) -> str:
    """The run's status as the SuperLink reports it (``flwr run --stream`` exits 0 even
    when the ServerApp fails)."""
    result = subprocess.run(
        ["flwr", "list", "--run-id", str(run_id), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    start = result.stdout.find("{")  # any progress text comes before the JSON
    try:
        runs = json.loads(result.stdout[start:])["runs"] if start >= 0 else []
    except (json.JSONDecodeError, KeyError):
        runs = []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


_RAY_PROBLEMS = (
    # ray.init() could not connect to the cluster
    re.compile(r"ConnectionError: (.+)"),
    # Flower's Ray backend: no node has the CPUs one ClientApp asks for (client_cpus)
    re.compile(r"(The ActorPool is empty\. .+?)(?: Lowering these resources could help\.)?$"),
)


def _ray_problem(log: Path) -> str | None:
    """What Ray, or Flower's Ray backend, said stopped the simulation, if the log says so."""
    for line in log.read_text(errors="replace").splitlines():
        for pattern in _RAY_PROBLEMS:
            found = pattern.search(line)
            if found:
                return found.group(1).strip()
    return None


def _last_line(path: Path) -> str:
    """The last line of ``path`` that says something (flwr draws boxes around errors)."""
    lines = [line.strip(" │╭╮╰╯─\n") for line in path.read_text().splitlines()]
    return next((line for line in reversed(lines) if any(c.isalnum() for c in line)), "")


def _toml_value(value: Any) -> str:
    """A run-config value as TOML (the types Flower accepts: bool, int, float, str)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # A JSON string without non-ASCII escapes is a TOML basic string.
        return json.dumps(value, ensure_ascii=False)
    raise SimulationError(f"run config values must be bool, int, float or str, got {value!r}")
