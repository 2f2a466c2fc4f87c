"""Errors of a simulation job that ``fedshop-sim`` reports as one line, defined apart from
the modules that raise them so the command line can name them without importing torch or
Flower (see :mod:`simulations.cli`)."""

from __future__ import annotations

PROG = "fedshop-sim"
"""The researcher's command, which starts every one-line error and progress line."""


class CommandError(Exception):
    """A subcommand cannot proceed; the message is shown to the user as one line."""


class PrivacyReportError(Exception):
    """The ledgers contradict what the sites reported; ``str()`` names the sites."""


class ComparisonError(Exception):
    """A reference comparison cannot be read; ``str()`` names the file."""
