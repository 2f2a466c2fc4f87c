"""Finding and stopping the managed local SuperLink that ``flwr run`` starts for a simulation.

With the ``:local:`` connection, ``flwr run`` starts a detached ``flower-superlink
--simulation`` (which starts a ``flower-superexec``, which starts ``flwr-simulation`` and
its Ray workers) and leaves it running after the run; Flower has no command to stop it.
A simulation job stops it itself, by process id, and only its own: a process belongs to a
job when its command line is the managed SuperLink's with the job's port and log file
under the job's ``FLWR_HOME`` *and* its environment holds that ``FLWR_HOME``, or when it
descends from such a process. Processes are read from ``/proc`` (Linux), and each is
identified by (pid, start time) so that a recycled pid is never signalled.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
SUPERLINK_LOG = Path("local-superlink") / "superlink.log"
"""Where the managed SuperLink logs, relative to its ``FLWR_HOME`` (set by ``flwr``)."""
STOP_TIMEOUT = 15.0
"""Seconds the processes get to exit after SIGTERM before they are killed."""


@dataclass(frozen=True)
class FlowerProcess:
    """One running process, identified so that a recycled pid is not mistaken for it."""

    pid: int
    start_time: int
    """Clock ticks after boot at which the process started (``/proc/<pid>/stat`` field 22)."""
    command: tuple[str, ...]

    @property
    def name(self) -> str:
        """The program's base name (``flower-superlink``, ``flower-superexec``, ...)."""
        programs = [Path(arg).name for arg in self.command[:2]]
        return next((p for p in programs if not p.startswith("python")), "")


def find_local_superlink(flwr_home: Path, port: int) -> list[FlowerProcess]:
    """The managed SuperLink of ``flwr_home`` listening on ``port``, and all its descendants.

    The SuperExec is one of the descendants (``flower-superexec --parent-pid <superlink>``
    is its child), as are ``flwr-simulation`` and Ray while a run is going on. SuperLinks
    first, then their descendants, each once.
    """
    table = _process_table()
    log_file = str(Path(flwr_home).resolve() / SUPERLINK_LOG)
    roots = [
        process
        for process, _ in table.values()
        if _is_managed_superlink(process.command, port, log_file)
        and _environ(process.pid).get("FLWR_HOME") == str(Path(flwr_home).resolve())
    ]
    children: dict[int, list[int]] = {}
    for process, parent in table.values():
        children.setdefault(parent, []).append(process.pid)
    found: dict[int, FlowerProcess] = {root.pid: root for root in roots}
    pending = [root.pid for root in roots]
    while pending:
        for child in children.get(pending.pop(), []):
            if child not in found:
                found[child] = table[child][0]
                pending.append(child)
    return list(found.values())


def stop_processes(processes: list[FlowerProcess], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM each process that is still the one found, wait, then SIGKILL the survivors."""
    _signal_all(processes, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_running(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal_all(processes, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while any(is_running(p) for p in processes) and time.monotonic() < deadline:
        time.sleep(0.2)


def is_running(process: FlowerProcess) -> bool:
    """True if ``process`` (same pid *and* start time) exists and is not a zombie."""
    stat = _stat(process.pid)
    return stat is not None and stat[2] == process.start_time and stat[0] != "Z"


def _signal_all(processes: list[FlowerProcess], sig: signal.Signals) -> None:
    for process in processes:
        if is_running(process):
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                pass


def processes_of_home(flwr_home: Path) -> list[FlowerProcess]:
    """Every live process whose environment names ``flwr_home`` as its FLWR_HOME: a job's
    own processes (its FLWR_HOME is its own directory), including any that outlived the
    SuperLink they descend from (Ray daemons re-parented to init)."""
    home = str(Path(flwr_home).resolve())
    return [
        process
        for process, _ in _process_table().values()
        if process.pid != os.getpid() and _environ(process.pid).get("FLWR_HOME") == home
    ]


def _is_managed_superlink(command: tuple[str, ...], port: int, log_file: str) -> bool:
    # The command line `flwr` gives the managed SuperLink (flwr/cli/local_superlink.py).
    return (
        any(Path(arg).name == "flower-superlink" for arg in command[:2])
        and "--simulation" in command
        and _option(command, "--port") == str(port)
        and _option(command, "--log-file") == log_file
    )


def _option(command: tuple[str, ...], name: str) -> str | None:
    for flag, value in zip(command, command[1:], strict=False):
        if flag == name:
            return value
    return None


def _process_table() -> dict[int, tuple[FlowerProcess, int]]:
    """Every visible process: pid -> (process, parent pid)."""
    table = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat is None or stat[0] == "Z":
            continue
        command = tuple(arg.decode(errors="replace") for arg in raw.split(b"\0") if arg)
        table[pid] = (FlowerProcess(pid, stat[2], command), stat[1])
    return table


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of ``pid``, or None if it does not exist."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}
