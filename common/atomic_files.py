"""Atomic, durable file writes: a reader sees the old file or the new one, never half.

Fail-closed output is part of the privacy model: a crash must not leave a truncated
export, ledger export, checkpoint or report that a later step mistakes for a whole one.
Every writer goes through a temporary file in the target's own directory (so the final
``os.replace`` is a same-filesystem rename), flushed and fsynced before the rename,
with the directory fsynced after it so the rename itself survives a power cut.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: Path, *, mode: int | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    Write the whole content to the yielded path (any writer: ``pq.write_table``,
    ``np.savez``, ``Path.write_text``). When the block ends without an exception the
    file is fsynced and renamed onto ``path``; otherwise it is removed and ``path`` is
    left as it was.

    Args:
        path: the final file (its directory is created if missing).
        mode: permission bits for the new file (e.g. ``0o600`` for private data);
            ``None`` keeps ``mkstemp``'s private default (0600).
        durable: fsync the file and its directory. Only a cache that can be rebuilt
            may pass False: readers still see the old file or the new one, but a power
            cut may leave a cut-short one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        if mode is not None:
            os.chmod(temp, mode)
        if durable:
            fsync_path(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    if durable:
        fsync_path(path.parent)


def atomic_write(
    path: Path, data: bytes | str, *, mode: int | None = None, durable: bool = True
) -> None:
    """Write ``data`` (bytes, or UTF-8 text) to ``path`` atomically (see :func:`atomic_output`)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path, mode=mode, durable=durable) as temp:
        temp.write_bytes(payload)


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entry to disk (a no-op where it cannot be opened)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
