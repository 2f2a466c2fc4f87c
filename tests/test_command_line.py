"""Every console script fails the same way: one line, exit 2 for bad input."""

from __future__ import annotations

import argparse

import pytest

from common.console_errors import EXIT_INTERNAL, EXIT_USAGE, run_handler


class BadInput(Exception):
    pass


def _args(error: Exception) -> argparse.Namespace:
    def handler(args: argparse.Namespace) -> int:
        raise error

    return argparse.Namespace(handler=handler)


def test_user_error_and_unusable_file_become_one_line_exit_2(capsys) -> None:
    assert (
        run_handler("prog", _args(BadInput("orders.csv, column 'Quantity',\nrow 3")), (BadInput,))
        == EXIT_USAGE
    )
    assert capsys.readouterr().err == "prog: error: orders.csv, column 'Quantity', row 3\n"
    missing = FileNotFoundError(2, "No such file or directory", "export.csv")
    assert run_handler("prog", _args(missing), (BadInput,)) == EXIT_USAGE
    assert capsys.readouterr().err == "prog: error: export.csv: No such file or directory\n"


def test_a_bug_is_withheld_only_where_asked(capsys) -> None:
    bug = ValueError("raw cell 17850 leaked into a message")
    assert run_handler("prog", _args(bug), (), withhold_internal_errors=True) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.startswith("prog: error: internal error ValueError at test_command_line.py:")
    assert "17850" not in err
    with pytest.raises(ValueError, match="raw cell"):
        run_handler("prog", _args(bug), ())
