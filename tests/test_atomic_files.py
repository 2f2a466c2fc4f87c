"""Atomic writes: the old file or the new one, never half; nothing left on failure."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from common.atomic_files import atomic_output, atomic_write


def test_atomic_write_replaces_content_and_sets_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    atomic_write(target, "first")
    atomic_write(target, b"second", mode=0o640)
    assert target.read_text() == "second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "orders.parquet"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_output(target) as temp:
            temp.write_text("half of the new")
            raise RuntimeError("writer crashed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["orders.parquet"]


def test_new_file_defaults_to_private_mode(tmp_path: Path) -> None:
    target = tmp_path / "ledger-export.json"
    atomic_write(target, "{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
