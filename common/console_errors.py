"""How every fedshop console script reports failure: one line, a fixed exit code.

``fedshop-site``, ``fedshop-server`` and ``fedshop-sim`` all run a subcommand handler
the same way: bad input or an unusable file becomes one line ``<prog>: error: ...`` with
exit code 2, never a traceback. The site's script also withholds the details of an
unexpected exception (a bug), because a library's message may quote a raw cell such as
a customer id; it shows only the exception's type and place, with exit code 1.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

EXIT_USAGE = 2
"""Bad input, bad usage or an unusable file."""
EXIT_INTERNAL = 1
"""A bug, reported without details (see the module docstring)."""


def run_handler(
    prog: str,
    args: argparse.Namespace,
    user_errors: tuple[type[Exception], ...],
    *,
    withhold_internal_errors: bool = False,
) -> int:
    """Run ``args.handler(args)`` and turn failures into one line on stderr.

    Args:
        prog: the console script's name, first word of the error line.
        args: parsed arguments carrying ``handler``.
        user_errors: exceptions that mean bad input (exit code 2, message shown).
        withhold_internal_errors: report any other exception by type and place only
            (exit code 1) instead of letting its traceback through.
    """
    try:
        return args.handler(args)
    except user_errors as error:
        return fail(prog, str(error))
    except OSError as error:
        target = f"{error.filename}: " if error.filename else ""
        return fail(prog, f"{target}{error.strerror or type(error).__name__}")
    except Exception as error:
        if not withhold_internal_errors:
            raise
        return fail(prog, f"internal error {withheld(error)}", EXIT_INTERNAL)


def withheld(error: BaseException) -> str:
    """An unexpected error by its type and the place it was raised, without its message,
    which may quote raw data: ``KeyError at ingest.py:120 (details withheld: ...)``."""
    frames = traceback.extract_tb(error.__traceback__)
    place = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(error).__name__}{place} (details withheld: they may quote raw data)"


def fail(prog: str, message: str, code: int = EXIT_USAGE) -> int:
    """Print ``<prog>: error: <message>`` on one line to stderr and return ``code``."""
    print(f"{prog}: error: {' '.join(message.split())}", file=sys.stderr)
    return code
