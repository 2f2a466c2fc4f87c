"""Where a site's answer to one message spends its time: the per-message overhead benchmark.

Off unless the environment variable :data:`TIMINGS_ENV` names a directory. Then every
answer of :mod:`clients.site_task` appends one JSON line to ``<dir>/<pid>.jsonl``: the
message kind, its wall seconds and the seconds of each :func:`phase` inside it
(load-prepared, read, featurise, store-prepared, policy, plan, ledger, train, evaluate,
reply). One file per process, because
simulated sites answer from several Ray worker processes at once and a line per message
then needs no lock. The variable reaches the simulated ClientApps through the
environment ``flwr run`` passes down to its SuperLink and Ray workers; on a Ray cluster
(``fedshop-sim run --ray-address``) the ClientApps run in the cluster's workers, which
inherit the environment of their node's ``ray start`` instead, so set it there.

Off, a phase costs two ``perf_counter`` calls; nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMINGS_ENV = "FEDSHOP_SITE_TIMINGS"

# A site answers one message at a time per process (Ray actors and the sequential loop
# alike), so the phases of the message under way can live in a module global.
_phases: dict[str, float] | None = None


@contextmanager
def message(kind: str) -> Iterator[None]:
    """Time one message's answer; its phases are recorded inside this block."""
    global _phases
    directory = os.environ.get(TIMINGS_ENV)
    if not directory:
        yield
        return
    _phases = {}
    began = time.perf_counter()
    try:
        yield
    finally:
        record = {"kind": kind, "seconds": time.perf_counter() - began, **_phases}
        _phases = None
        with open(Path(directory) / f"{os.getpid()}.jsonl", "a") as file:
            file.write(json.dumps(record) + "\n")


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the block's wall seconds to phase ``name`` of the message under way, if timed."""
    began = time.perf_counter()
    try:
        yield
    finally:
        if _phases is not None:
            _phases[name] = _phases.get(name, 0.0) + time.perf_counter() - began


def read_timings(directory: Path) -> list[dict[str, float | str]]:
    """Every message record the processes wrote to ``directory``."""
    return [
        json.loads(line)
        for path in sorted(Path(directory).glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]
