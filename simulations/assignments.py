"""``KEY=VALUE`` assignments of the command line (``--set``), values read as TOML scalars."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from typing import Any


def parse_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """``["a.b=0.5", "c='x'"]`` -> ``{"a.b": 0.5, "c": "x"}``; a later key wins.

    Raises:
        ValueError: an assignment has no ``=`` or an empty key.
    """
    parsed: dict[str, Any] = {}
    for assignment in assignments:
        key, separator, value = assignment.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
        parsed[key.strip()] = toml_scalar(value.strip())
    return parsed


def toml_scalar(text: str) -> Any:
    """A ``--set`` value: a TOML scalar if it parses as one, else the text itself."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text
