"""Errors of the server's reports that the command lines show as one line, defined apart
from the modules that raise them so that a command line can name them without importing
torch, Flower or matplotlib."""

from __future__ import annotations


class ReportError(Exception):
    """The report cannot be built from what it was given; ``str()`` is one line."""
