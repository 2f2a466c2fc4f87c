"""Free loopback ports for the processes a simulation or a test starts (a local SuperLink's
APIs, SuperNodes' runtime APIs, Ray, a storefront's server).

Asking the OS for port 0 gives an *ephemeral* port, and closing the probe frees it again:
before the process it is meant for binds it, an outgoing connection of another process (a
SuperNode dialling its SuperLink, Ray's workers) may be handed the same ephemeral port as
its local end, and the process fails to start (Flower: "Runtime HTTP API failed to
start"). The ports here come from below the ephemeral range instead, are checked to be
free when handed out, and are never handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST_PORT = 20000
"""The lowest port handed out (above the well-known and most registered services')."""
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_draw = random.Random()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports below the ephemeral range, none handed out
    before by this process.

    Raises:
        ValueError: ``count`` < 1.
        RuntimeError: not enough free ports after many tries (a machine out of ports).
    """
    if count < 1:
        raise ValueError(f"ask for at least one port, got {count}")
    highest = first_ephemeral_port() - 1
    ports: list[int] = []
    for _ in range(1000 * count):
        port = _draw.randint(LOWEST_PORT, highest)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"no {count} free loopback ports in {LOWEST_PORT}..{highest}")


def free_port() -> int:
    """One port of :func:`free_ports`."""
    return free_ports(1)[0]


def first_ephemeral_port() -> int:
    """The first port of the kernel's ephemeral range (Linux's default 32768 elsewhere)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
