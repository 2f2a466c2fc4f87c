"""Loopback ports for started processes: below the ephemeral range, free, never twice."""

from __future__ import annotations

import socket

import pytest

from simulations import loopback_ports
from simulations.loopback_ports import LOWEST_PORT, first_ephemeral_port, free_port, free_ports


def test_ports_are_free_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    first = first_ephemeral_port()
    ports = free_ports(40) + [free_port() for _ in range(20)]
    assert len(set(ports)) == 60
    assert all(LOWEST_PORT <= port < first for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: binds


class _Draws:
    """Stands in for the port draw: yields the given ports in order."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = iter(ports)

    def randint(self, low: int, high: int) -> int:
        return next(self.ports)


def test_a_port_in_use_or_handed_out_before_is_skipped(monkeypatch) -> None:
    busy, given, fresh = free_ports(3)
    monkeypatch.setattr(loopback_ports, "_draw", _Draws([busy, given, fresh]))
    loopback_ports._handed_out -= {busy, fresh}  # as if never handed out; only `given` was
    with socket.socket() as held:
        held.bind(("127.0.0.1", busy))
        held.listen()
        assert free_port() == fresh  # busy is in use, given was handed out already
    with pytest.raises(ValueError, match="at least one port"):
        free_ports(0)
