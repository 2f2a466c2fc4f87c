"""The header section ``python -m lab bench`` writes at the top of BENCHMARKS.md: on which
machine, with which versions and seeds, when and in which mode the last run measured.

:func:`machine_facts` reads the machine (CPU model, cores, RAM, load), the interpreter
and the installed versions of the training stack, and the code's commit; it imports
none of that stack. :func:`header_section` formats them with what the run regenerated.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HEADING = "Machine, versions and seeds"
STACK = ("torch", "flwr", "opacus")
CODE_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class MachineFacts:
    """What the figures of a bench run depend on besides the code."""

    cpu: str
    cores: int
    ram_gib: float
    system: str
    python: str
    versions: dict[str, str]
    commit: str
    load: tuple[float, float, float]


@dataclass(frozen=True)
class SectionRun:
    """One section a bench run regenerated."""

    name: str
    seeds: str
    seconds: float


def machine_facts() -> MachineFacts:
    """The facts of this machine, interpreter and checkout, read now."""
    return MachineFacts(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        ram_gib=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        system=platform.platform(),
        python=platform.python_version(),
        versions={name: _version(name) for name in STACK},
        commit=_commit(),
        load=os.getloadavg(),
    )


def header_section(
    facts: MachineFacts, mode: str, runs: Sequence[SectionRun], when: dt.datetime
) -> str:
    """The header section (``## Machine, versions and seeds``) for a bench run."""
    stack = " / ".join(facts.versions[name] for name in STACK)
    load = " / ".join(f"{value:.1f}" for value in facts.load)
    lines = [
        f"## {HEADING}",
        "",
        f"Written by the last `python -m lab bench --{mode}` run, {when:%Y-%m-%d %H:%M} UTC,",
        "which regenerated the sections listed below; every other section comes from an",
        "earlier run, and its own command says how it was made.",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {facts.cpu}, {facts.cores} cores |",
        f"| RAM | {facts.ram_gib:.1f} GiB |",
        f"| system | {facts.system} |",
        f"| load average at start (1 / 5 / 15 min) | {load} |",
        f"| Python | {facts.python} |",
        f"| {' / '.join(STACK)} | {stack} |",
        f"| code | {facts.commit} |",
        "| hash seed | PYTHONHASHSEED=0 in every section's process |",
        "",
        "| section regenerated | wall s | seeds |",
        "|---|---:|---|",
    ]
    lines += [f"| {run.name} | {run.seconds:.1f} | {run.seeds} |" for run in runs]
    return "\n".join(lines) + "\n"


def _cpu_model() -> str:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    """The checkout's commit, ``+ local changes`` if the work tree differs from it."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} + local changes" if changed else commit


def _git(*argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=CODE_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
