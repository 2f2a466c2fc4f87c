"""Loopback ports for the processes a test starts (SuperLink, SuperNodes, Ray, servers).

Asking the OS for port 0 gives an *ephemeral* port, and closing the probe frees it: by the
time the test's process binds it, an outgoing connection of another process (a SuperNode
dialling its SuperLink, Ray's workers) may have been handed the same ephemeral port as its
local end, and the process under test fails to start ("Runtime HTTP API failed to start").
These ports come from below the ephemeral range instead, are checked to be free, and are
never handed out twice in one test session.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000
_handed_out: set[int] = set()
_draw = random.Random()


def free_port() -> int:
    """A free loopback port below the ephemeral range, not handed out before."""
    highest = _first_ephemeral() - 1
    for _ in range(1000):
        port = _draw.randint(_LOWEST, highest)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port in {_LOWEST}..{highest}")


def _first_ephemeral() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default
