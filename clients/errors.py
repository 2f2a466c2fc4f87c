"""The one error type a bad export raises: where it is (file, column, row) and what is wrong."""

from __future__ import annotations

from pathlib import Path


class IngestError(Exception):
    """An export cannot be ingested; ``str()`` is one line naming file, column and row.

    Attributes:
        path: the file that was read (the export, or a mapping file).
        column: the source column (or mapping key) at fault, or None for the whole file.
        row: 1-based data row number (the header is not counted), or None.
        message: what is wrong, in words a site's data team can act on. Never holds a raw
            customer id.
    """

    def __init__(
        self, path: Path | str, message: str, *, column: str | None = None, row: int | None = None
    ) -> None:
        self.path = Path(path)
        self.column = column
        self.row = row
        self.message = " ".join(message.split())  # one line, whatever the caller passed
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [str(self.path)]
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.row is not None:
            where.append(f"row {self.row}")
        return f"{', '.join(where)}: {self.message}"
