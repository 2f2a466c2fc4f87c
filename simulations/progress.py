"""Progress lines for long simulation work: one line when a step starts, one with its
wall time when it ends, on stderr so that stdout stays the command's result."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class Progress:
    """Reports steps as ``[prog] <step> ...`` and ``[prog] <step>: done in 1.2 s``.

    Args:
        prog: prefix of every line (the command's name).
        stream: where lines go; default ``sys.stderr`` at the time of writing.
        enabled: False makes every step silent (library calls, tests).
    """

    def __init__(
        self, prog: str = "fedshop-sim", stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.prog = prog
        self.stream = stream
        self.enabled = enabled

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        """Time the ``with`` block; report its start, and its duration if it succeeds."""
        self._write(f"{description} ...")
        began = time.perf_counter()
        yield
        self._write(f"{description}: done in {time.perf_counter() - began:.1f} s")

    def _write(self, line: str) -> None:
        if self.enabled:
            print(f"[{self.prog}] {line}", file=self.stream or sys.stderr, flush=True)


SILENT = Progress(enabled=False)
"""A progress reporter that prints nothing (the default of library functions)."""
