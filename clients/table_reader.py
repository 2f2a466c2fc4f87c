"""Read an export file into a raw table, refusing anything that is not one.

Formats are recognised by their bytes, never by the file name: gzip (``1f 8b``, of CSV
or Parquet), Parquet (``PAR1``), else CSV text. CSV is UTF-8 with or without a BOM
unless an encoding is given; its delimiter is one of ``, ; tab |`` (declared, or
sniffed from the header). Every CSV cell is read as text, so the ingest step decides
what each value means and can name the row of a bad one.

Every failure raises :class:`~clients.errors.IngestError` with the file, column and
1-based data row where they are known. Messages never echo cell contents (a cell may be
a raw customer id).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import re
import stat
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from clients.adapters import DELIMITERS
from clients.errors import IngestError

MAX_ROW_BYTES = 1 << 20
"""Longest CSV row accepted (1 MiB). An order line is a few hundred bytes; a longer row
is a broken export (unbalanced quote, embedded blob) and is refused before parsing."""

_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"
_NOT_TABLES = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (an .xlsx workbook? export it as CSV)",
    b"\xd0\xcf\x11\xe0": "an Office document (an .xls workbook? export it as CSV)",
    b"\x7fELF": "an executable",
    b"BZh": "a bzip2 archive",
    b"\xfd7zXZ\x00": "an xz archive",
}
_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def read_table(
    path: Path, *, delimiter: str | None = None, encoding: str | None = None
) -> tuple[pd.DataFrame, str]:
    """Read ``path`` (CSV or Parquet, optionally gzipped) as found.

    Returns:
        The rows (every CSV cell as text, header order kept; index ``i`` is data row
        ``i + 1`` of the file) and the format: ``"csv"`` or ``"parquet"``, with
        ``"+gzip"`` when compressed.

    Args:
        path: the export; symlinks are followed, but the target must be a regular file.
        delimiter: the CSV delimiter, or None to sniff it from the header.
        encoding: the CSV text encoding; None means UTF-8 (a BOM is allowed), and any
            byte that is not UTF-8 is refused.

    Raises:
        IngestError: the file is missing, empty, not a table, or not parseable.
    """
    path = Path(path)
    data = _read_regular_file(path)
    source_format = ""
    if data.startswith(_GZIP_MAGIC):
        data = _gunzip(path, data)
        source_format = "+gzip"
    if not data or data.isspace():
        raise IngestError(path, "the file is empty")
    if data.startswith(_PARQUET_MAGIC):
        return _read_parquet(path, data), "parquet" + source_format
    for magic, kind in _NOT_TABLES.items():
        if data.startswith(magic):
            raise IngestError(path, f"not a CSV or Parquet table: the file is {kind}")
    return _read_csv(path, data, delimiter, encoding), "csv" + source_format


def _read_regular_file(path: Path) -> bytes:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise IngestError(path, "no such file") from None
    except OSError as error:
        raise IngestError(path, f"cannot read the file ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        # a FIFO or device would block or never end; a directory is not an export
        raise IngestError(path, "not a regular file")
    try:
        return path.read_bytes()
    except OSError as error:
        raise IngestError(path, f"cannot read the file ({error.strerror})") from None


def _gunzip(path: Path, data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except EOFError:
        raise IngestError(
            path, "the gzip data is truncated (incomplete download or copy?)"
        ) from None
    except (gzip.BadGzipFile, zlib.error):
        raise IngestError(path, "the gzip data is corrupt") from None


def _read_parquet(path: Path, data: bytes) -> pd.DataFrame:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError):
        raise IngestError(path, "not a readable Parquet file (corrupt or truncated)") from None
    _refuse_duplicate_names(path, table.column_names)
    if table.num_rows == 0:
        raise IngestError(path, "the table has columns but no data rows")
    return table.to_pandas()


def _read_csv(path: Path, data: bytes, delimiter: str | None, encoding: str | None) -> pd.DataFrame:
    if encoding is not None:
        data = _transcode_to_utf8(path, data, encoding)
    nul = data.find(b"\x00")
    if nul >= 0:
        # a row and column only where the file starts as a text table: in binary data
        # neither means anything, and its "header" is no column name
        row, column = _locate_byte(data, nul) if _text_header(data) else (None, None)
        raise IngestError(
            path,
            "not a CSV or Parquet table: the file holds binary data (a NUL byte);"
            " if it is UTF-16 text, pass --encoding utf-16",
            column=column,
            row=row,
        )
    if encoding is None:
        _check_utf8(path, data)
    data = data.removeprefix(codecs.BOM_UTF8)
    if not data or data.isspace():
        raise IngestError(path, "the file is empty")
    _check_row_lengths(path, data, delimiter)

    header_line = _first_line(data)
    delimiter = delimiter or _sniff_delimiter(header_line)
    names = _header_names(path, header_line, delimiter)
    if len(names) < 2:
        raise IngestError(
            path,
            f"the {_DELIMITER_NAMES[delimiter]} delimiter yields a single column; expected a"
            " table delimited by comma, semicolon, tab or pipe",
        )
    _refuse_duplicate_names(path, names)

    invalid_rows = []

    def remember_invalid_row(row: pa_csv.InvalidRow) -> str:
        invalid_rows.append(row)
        return "error"

    try:
        table = pa_csv.read_csv(
            pa.py_buffer(data),
            read_options=pa_csv.ReadOptions(
                column_names=names,
                skip_rows=1,
                # single-threaded parsing numbers the rows, so errors can name them
                use_threads=False,
                block_size=2 * MAX_ROW_BYTES,
            ),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter,
                newlines_in_values=True,
                invalid_row_handler=remember_invalid_row,
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except pa.ArrowInvalid as error:
        if invalid_rows:
            raise _ragged_row_error(path, invalid_rows[0], names) from None
        if "straddling" in str(error):
            raise IngestError(
                path,
                f"a quoted value runs past {MAX_ROW_BYTES >> 20} MiB (unbalanced quote?)",
            ) from None
        raise IngestError(path, "not a readable CSV table") from None
    if table.num_rows == 0:
        raise IngestError(path, "the file has a header but no data rows")
    return table.to_pandas()


def _check_utf8(path: Path, data: bytes) -> None:
    try:
        codecs.decode(data, "utf-8")
    except UnicodeDecodeError as error:
        if not _text_header(data):
            raise IngestError(
                path,
                "not a CSV or Parquet table: the file starts with binary data, not a text "
                "header; if it is text in another encoding, pass --encoding (e.g. cp1252)",
            ) from None
        row, column = _locate_byte(data, error.start)
        raise IngestError(
            path,
            "bytes that are not UTF-8 text; pass --encoding (e.g. cp1252 or latin-1)"
            " if the export uses another encoding",
            column=column,
            row=row,
        ) from None


def _transcode_to_utf8(path: Path, data: bytes, encoding: str) -> bytes:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise IngestError(path, f"unknown text encoding {encoding!r}") from None
    try:
        return data.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as error:
        row, column = _locate_byte(data, error.start)
        raise IngestError(
            path, f"bytes that are not {encoding} text", column=column, row=row
        ) from None


def _check_row_lengths(path: Path, data: bytes, delimiter: str | None) -> None:
    line_ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    bounds = np.concatenate(([-1], line_ends, [len(data)]))
    too_long = np.flatnonzero(np.diff(bounds) - 1 > MAX_ROW_BYTES)
    if too_long.size:
        line = int(too_long[0])
        # the column is the one holding the byte where the row crosses the limit
        row, column = _locate_byte(data, int(bounds[line]) + 1 + MAX_ROW_BYTES, delimiter)
        raise IngestError(
            path,
            f"a row is longer than {MAX_ROW_BYTES >> 20} MiB; an order line is never that long",
            column=column,
            row=row,
        )


def _locate_byte(
    data: bytes, offset: int, delimiter: str | None = None
) -> tuple[int | None, str | None]:
    """Return (1-based data row, column name) holding byte ``offset``, counting lines."""
    line = data.count(b"\n", 0, offset)
    if line == 0:
        return None, None
    header = _first_line(data).removeprefix("\ufeff")
    delimiter = delimiter or _sniff_delimiter(header)
    line_start = data.rfind(b"\n", 0, offset) + 1
    before = data[line_start:offset].decode("utf-8", errors="replace")
    # delimiters inside closed quotes do not count; an open quote runs to ``offset``
    before = re.sub(r'"[^"]*"', "", before).split('"', 1)[0]
    position = before.count(delimiter)
    names = _fields(header, delimiter)
    column = names[position].strip() if position < len(names) else None
    return line, column


def _text_header(data: bytes) -> bool:
    """Whether the first line is printable UTF-8 text (a header, not binary data)."""
    end = data.find(b"\n")
    try:
        line = data[: end if end >= 0 else len(data)].rstrip(b"\r").decode("utf-8")
    except UnicodeDecodeError:
        return False
    return line.removeprefix("\ufeff").isprintable()


def _first_line(data: bytes) -> str:
    end = data.find(b"\n")
    return data[: end if end >= 0 else len(data)].rstrip(b"\r").decode("utf-8", errors="replace")


def _sniff_delimiter(header_line: str) -> str:
    """Pick the delimiter that splits the header into the most fields (ties: list order)."""
    counts = {delimiter: len(_fields(header_line, delimiter)) for delimiter in DELIMITERS}
    return max(DELIMITERS, key=lambda delimiter: counts[delimiter])


def _fields(line: str, delimiter: str) -> list[str]:
    """The CSV fields of one line; none if the line is not CSV at all (binary data)."""
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return []


def _header_names(path: Path, header_line: str, delimiter: str) -> list[str]:
    try:
        fields = next(csv.reader([header_line], delimiter=delimiter, strict=True), [])
    except csv.Error:
        raise IngestError(path, "the header line is not valid CSV") from None
    return [name.strip() or f"unnamed-{i + 1}" for i, name in enumerate(fields)]


def _refuse_duplicate_names(path: Path, names: list[str]) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise IngestError(path, "the header names this column twice", column=name)
        seen.add(name)


def _ragged_row_error(path: Path, row: pa_csv.InvalidRow, names: list[str]) -> IngestError:
    data_row = row.number - 1 if row.number is not None else None  # pyarrow counts the header
    column = names[row.actual_columns] if row.actual_columns < len(names) else None
    return IngestError(
        path,
        f"the row has {row.actual_columns} fields but the header has {row.expected_columns}",
        column=column,
        row=data_row,
    )
