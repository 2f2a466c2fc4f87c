"""Starting and stopping Flower's own processes (``flower-supernode``, ``flower-superlink``).

Shared by the site (``fedshop-site join``) and the central server (``fedshop-server start``):
each process gets its own ``FLWR_HOME`` and no phone-home, runs in its own process group so
that it and the helpers it starts (SuperExec, ServerApp, ClientApp) are stopped together, and
is stopped by its process id: SIGTERM first (Flower deregisters cleanly), SIGKILL after a
grace period.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

FLOWER_SETTINGS = {
    # no outbound calls besides the federation's own connections
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # the stack is pre-installed; never `uv sync` torch into a fresh env per run
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
STOP_TIMEOUT = 20.0
"""Seconds a process group gets to exit after SIGTERM before it is killed."""


def flower_environment(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a Flower process: its own FLWR_HOME, :data:`FLOWER_SETTINGS`, and
    this interpreter's directory first on PATH (Flower starts its helpers by name)."""
    env = dict(os.environ if base is None else base)
    env.update(FLOWER_SETTINGS)
    env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def spawn(
    command: Sequence[str],
    flwr_home: Path,
    *,
    cwd: Path | None = None,
    stdout: IO | int | None = None,
    text: bool = False,
) -> subprocess.Popen:
    """Start ``command`` (a Flower executable and its arguments) in a new process group.

    Standard error joins standard output when ``stdout`` is given.

    Raises:
        FileNotFoundError: the executable is not on PATH.
    """
    env = flower_environment(flwr_home)
    executable = shutil.which(command[0], path=env["PATH"])
    if executable is None:
        raise FileNotFoundError(errno.ENOENT, "not found on PATH (is flwr installed?)", command[0])
    Path(flwr_home).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [executable, *command[1:]],
        env=env,
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        text=text,
        start_new_session=True,  # one group to stop; a terminal's ^C reaches only our parent
    )


def request_stop(process: subprocess.Popen) -> None:
    """Send SIGTERM to the process group led by ``process``; do not wait."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)


def stop(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """Stop the process group led by ``process`` (SIGTERM, then SIGKILL after ``timeout``).

    The group is signalled even if its leader has already exited: a SuperNode that exits on
    an error leaves its SuperExec behind, retrying for minutes.
    """
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def on_termination(callback: Callable[[], None]) -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM call ``callback`` instead of interrupting."""

    def handler(signum: int, frame: object) -> None:
        callback()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old_handler in previous.items():
            signal.signal(sig, old_handler)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
