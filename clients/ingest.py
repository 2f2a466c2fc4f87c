"""Ingest a storefront export: validate, pseudonymise, clean, and write the prepared file.

The steps, in order (each count lands in :class:`IngestReport`):

1. read the file (:mod:`clients.table_reader`): CSV or Parquet, gzip, any delimiter;
2. drop exact duplicate rows, compared on the raw rows as read;
3. replace customer ids by HMAC tokens (:mod:`privacy.pseudonymise`); from here on no
   raw id exists in memory that could reach an output, a log or a message;
4. validate every mapped value (quantity integral, price finite, timestamp parseable and
   not in the future, ids and storefront present) and stop at the first bad one with an
   :class:`IngestError` naming file, column and row;
5. clean: drop rows without a customer id (guest checkouts), non-product lines and
   non-positive prices; flag cancellations/returns and keep them;
6. keep only the canonical columns (``models.schema``): free text and every unmapped
   column are dropped, and unmapped columns that look personal (e-mail, phone, name,
   address, ...) are flagged in the report.

Values are parsed once per distinct value and mapped back, so the 541,909-row bundled
export ingests in a few seconds.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clients.adapters import ADAPTERS, ColumnMapping, load_mapping
from clients.errors import IngestError
from clients.table_reader import read_table
from common.atomic_files import atomic_output
from models import schema
from models.schema import ORDERS_FILE
from privacy.pseudonymise import canonical_ids, load_key, pseudonymise_customers

__all__ = [
    "ADAPTERS",
    "ColumnMapping",
    "IngestError",
    "IngestReport",
    "RuleCount",
    "ingest_table",
    "load_mapping",
    "prepare_export",
    "write_prepared",
]

REPORT_FILE = "ingest_report.json"

_PERSONAL_FRAGMENTS = (
    "mail",
    "phone",
    "mobile",
    "name",
    "address",
    "street",
    "postcode",
    "postalcode",
    "zipcode",
    "birth",
    "passport",
    "iban",
    "creditcard",
    "cardnumber",
    "socialsecurity",
    "ipaddress",
)
_NAN_WORDS = ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity")
_PERSONAL_WORDS = {"ip", "tel", "fax", "dob", "zip", "ssn", "city", "gender", "age"}


@dataclass
class RuleCount:
    """What one cleaning rule removed: rows, and customers left with no row at all."""

    rows: int
    customers: int


@dataclass
class IngestReport:
    """Every count of one ingest; holds no raw id (only counts and column names).

    Attributes:
        source: file name of the export.
        source_format: ``csv``, ``csv+gzip``, ``parquet`` or ``parquet+gzip``.
        mapping: adapter name or mapping file name.
        rows_read: data rows in the file.
        duplicates_dropped: exact duplicate rows dropped (compared on raw rows, first step).
        missing_customer_rows: rows without a customer id (guest checkouts), dropped.
        non_product_rows: non-product lines (postage, fees, adjustments), dropped.
        non_positive_price_rows: rows with price <= 0, dropped.
        returns_flagged: cancellation/return rows kept with ``is_return`` set.
        rows_written: rows in the prepared file.
        customers_read: distinct customers in the export.
        customers_written: distinct customers in the prepared file.
        columns_dropped: source columns not written (free text and unmapped columns).
        personal_columns_dropped: the dropped columns that look like personal data.
        customers_per_country_before_cleaning: distinct customers per storefront after
            duplicate removal and before any other rule (a customer under two countries
            counts in both).
        cleaning: per rule (``exact-duplicate``, ``missing-customer``,
            ``non-product-line``, ``non-positive-price``), rows and customers removed.
        first_timestamp, last_timestamp: UTC ISO-8601 range of the prepared rows.
    """

    source: str
    source_format: str
    mapping: str
    rows_read: int
    duplicates_dropped: int
    missing_customer_rows: int
    non_product_rows: int
    non_positive_price_rows: int
    returns_flagged: int
    rows_written: int
    customers_read: int
    customers_written: int
    columns_dropped: list[str]
    personal_columns_dropped: list[str]
    customers_per_country_before_cleaning: dict[str, int]
    cleaning: dict[str, RuleCount] = field(default_factory=dict)
    first_timestamp: str | None = None
    last_timestamp: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the report as plain JSON-ready values."""
        return dataclasses.asdict(self)


def ingest_table(
    source: Path,
    key: bytes,
    *,
    mapping: ColumnMapping = ADAPTERS["online-retail"],
    encoding: str | None = None,
    now: datetime | None = None,
) -> tuple[pd.DataFrame, IngestReport]:
    """Read, validate, pseudonymise and clean one export.

    Args:
        source: the export file (CSV or Parquet, optionally gzipped).
        key: the site's 32-byte pseudonymisation key (:func:`privacy.pseudonymise.load_key`).
        mapping: the export's format (an entry of ``ADAPTERS`` or :func:`load_mapping`).
        encoding: CSV text encoding; None accepts UTF-8 only.
        now: timestamps after this instant are refused as "in the future"; default is
            the current time. A naive datetime is taken as UTC.

    Returns:
        The canonical frame (columns and dtypes of ``models.schema``, row order of the
        file, fresh RangeIndex) and the report.

    Raises:
        IngestError: the file is not a valid export for ``mapping``.
    """
    source = Path(source)
    raw, source_format = read_table(source, delimiter=mapping.delimiter, encoding=encoding)
    columns = mapping.source_columns()
    for field_name, column in columns.items():
        if column not in raw.columns:
            found = ", ".join(map(repr, raw.columns[:20]))
            raise IngestError(
                source,
                f"required column (the {field_name}) is missing; the header has {found}",
                column=column,
            )
    rows_read = len(raw)
    raw = raw[~raw.duplicated(keep="first")]

    try:
        customer = pseudonymise_customers(raw[mapping.customer], key)
    except ValueError as error:
        raise IngestError(source, str(error), column=mapping.customer) from None
    dropped = [name for name in raw.columns if name not in set(columns.values())]
    frame = pd.DataFrame(
        {
            schema.CUSTOMER: customer,
            schema.ORDER: _identifiers(source, raw[mapping.order]),
            schema.ITEM: _identifiers(source, raw[mapping.item]),
            schema.QUANTITY: _quantities(source, raw[mapping.quantity]),
            schema.UNIT_PRICE: _prices(source, raw[mapping.price], mapping.decimal),
            schema.TIMESTAMP: _timestamps(source, raw[mapping.timestamp], mapping, now),
            schema.STOREFRONT: (
                _identifiers(source, raw[mapping.country])
                if mapping.country
                else pd.Series(mapping.storefront, index=raw.index, dtype="str")
            ),
        }
    )
    del raw  # the raw customer ids go with it
    frame[schema.IS_RETURN] = _return_flags(frame, mapping)

    per_country = frame.groupby(schema.STOREFRONT)[schema.CUSTOMER].nunique()
    per_country = per_country[per_country > 0]
    per_country = per_country.sort_index().sort_values(ascending=False, kind="stable")
    customers_read = frame[schema.CUSTOMER].nunique()

    cleaning = {"exact-duplicate": RuleCount(rows_read - len(frame), 0)}
    rules = {
        "missing-customer": frame[schema.CUSTOMER].isna(),
        "non-product-line": _non_products(frame[schema.ITEM], mapping.product_code_regex),
        "non-positive-price": frame[schema.UNIT_PRICE] <= 0,
    }
    for rule, drop in rules.items():
        keep = ~drop.loc[frame.index]
        customers_before = frame[schema.CUSTOMER].nunique()
        frame = frame[keep]
        cleaning[rule] = RuleCount(
            rows=int((~keep).sum()), customers=customers_before - frame[schema.CUSTOMER].nunique()
        )
    frame = frame.reset_index(drop=True)

    report = IngestReport(
        source=source.name,
        source_format=source_format,
        mapping=mapping.name,
        rows_read=rows_read,
        duplicates_dropped=cleaning["exact-duplicate"].rows,
        missing_customer_rows=cleaning["missing-customer"].rows,
        non_product_rows=cleaning["non-product-line"].rows,
        non_positive_price_rows=cleaning["non-positive-price"].rows,
        returns_flagged=int(frame[schema.IS_RETURN].sum()),
        rows_written=len(frame),
        customers_read=customers_read,
        customers_written=frame[schema.CUSTOMER].nunique(),
        columns_dropped=dropped,
        personal_columns_dropped=[name for name in dropped if _looks_personal(name)],
        customers_per_country_before_cleaning={k: int(v) for k, v in per_country.items()},
        cleaning=cleaning,
        first_timestamp=_iso(frame[schema.TIMESTAMP].min()),
        last_timestamp=_iso(frame[schema.TIMESTAMP].max()),
    )
    return frame, report


def write_prepared(frame: pd.DataFrame, report: IngestReport, out_dir: Path) -> None:
    """Write ``out_dir/orders.parquet`` and ``out_dir/ingest_report.json`` atomically.

    Both files are written to temporary files in ``out_dir`` and renamed into place
    only when both are complete; on any failure the temporary files (and any
    directory this call created) are removed, so no new partial output is left. The
    Parquet file is uncompressed (about 1.4x the size of zstd on the bundled data) so
    that an auditor can search its bytes for raw ids; files are private (mode 0600).
    """
    out_dir = Path(out_dir)
    with _created_directory(out_dir):
        table = pa.Table.from_pandas(
            frame[list(schema.COLUMNS)], schema=schema.ARROW_SCHEMA, preserve_index=False
        )
        report_bytes = (json.dumps(report.to_dict(), indent=2) + "\n").encode("utf-8")
        # both files are complete before either is renamed into place
        with (
            atomic_output(out_dir / ORDERS_FILE, mode=0o600) as orders_tmp,
            atomic_output(out_dir / REPORT_FILE, mode=0o600) as report_tmp,
        ):
            # uncompressed, so a plain byte search (grep) of the file audits what it holds
            pq.write_table(table, orders_tmp, compression="none")
            report_tmp.write_bytes(report_bytes)


def prepare_export(
    source: Path,
    out_dir: Path,
    key_path: Path,
    *,
    mapping: ColumnMapping = ADAPTERS["online-retail"],
    encoding: str | None = None,
) -> IngestReport:
    """Load the site key, ingest ``source`` and write the prepared files to ``out_dir``.

    Raises:
        KeyFileError: the key is missing or unsafe (checked before the export is read).
        IngestError: the export is invalid; nothing is written.
    """
    key = load_key(key_path)
    frame, report = ingest_table(source, key, mapping=mapping, encoding=encoding)
    write_prepared(frame, report, out_dir)
    return report


def _identifiers(source: Path, values: pd.Series) -> pd.Series:
    """Canonical id strings (trimmed, ``"536365.0"`` -> ``"536365"``); none may be missing."""
    try:
        identifiers = canonical_ids(values)
    except ValueError as error:
        raise IngestError(source, str(error), column=str(values.name)) from None
    _refuse_first(source, values, identifiers.isna().to_numpy(), "the value is missing")
    return identifiers


def _quantities(source: Path, values: pd.Series) -> pd.Series:
    numbers = _numbers(source, values, decimal=".")
    _refuse_first(
        source,
        values,
        (numbers != np.round(numbers)) | (np.abs(numbers) > 2**53),
        "the quantity is not a whole number",
    )
    return pd.Series(numbers.astype(np.int64), index=values.index)


def _prices(source: Path, values: pd.Series, decimal: str) -> pd.Series:
    return pd.Series(_numbers(source, values, decimal), index=values.index)


def _numbers(source: Path, values: pd.Series, decimal: str) -> np.ndarray:
    """Parse a column as finite float64, once per distinct value."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        codes, distinct = pd.factorize(values, use_na_sentinel=True)
        text = pd.Series(distinct, dtype="str").str.strip()
        if decimal == ",":
            text = text.str.replace(",", ".", regex=False)
        parsed = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        numbers = np.append(parsed, np.nan)[codes]  # code -1 (missing) picks the NaN
        _refuse_first(source, values, codes == -1, "the value is missing")
        unparsed = np.append(np.isnan(parsed) & ~text.str.lower().isin(_NAN_WORDS), False)
        _refuse_first(
            source,
            values,
            unparsed[codes],
            f"not a number (the decimal separator is {decimal!r})",
        )
    _refuse_first(source, values, ~np.isfinite(numbers), "not a finite number (NaN or infinity)")
    return numbers


def _timestamps(
    source: Path, values: pd.Series, mapping: ColumnMapping, now: datetime | None
) -> pd.Series:
    """Parse to UTC (local wall times are read in ``mapping.timezone``); none in the future."""
    if pd.api.types.is_datetime64_any_dtype(values):
        codes, distinct = pd.factorize(values, use_na_sentinel=True)
        parsed = pd.DatetimeIndex(distinct)
    else:
        codes, distinct = pd.factorize(values, use_na_sentinel=True)
        text = pd.Series(distinct, dtype="str").str.strip()
        try:
            parsed = pd.DatetimeIndex(
                pd.to_datetime(text, format=mapping.timestamp_format, errors="coerce")
            )
        except (ValueError, TypeError):
            # mixed offsets or a format pandas rejects outright
            parsed = pd.DatetimeIndex([pd.NaT] * len(text))
    _refuse_first(source, values, codes == -1, "the timestamp is missing")
    _refuse_first(
        source,
        values,
        parsed.isna()[codes],
        f"not a timestamp in the format {mapping.timestamp_format!r}",
    )
    if parsed.tz is None:
        # a wall time repeated when clocks go back is read as the first (summer-time) one;
        # a wall time skipped when clocks go forward is moved to the first valid instant
        parsed = parsed.tz_localize(
            mapping.timezone,
            ambiguous=np.ones(len(parsed), dtype=bool),
            nonexistent="shift_forward",
        )
    parsed = parsed.tz_convert("UTC").as_unit("us")
    now_utc = pd.Timestamp(now if now is not None else datetime.now(UTC))
    now_utc = now_utc.tz_localize("UTC") if now_utc.tz is None else now_utc.tz_convert("UTC")
    timestamps = pd.Series(parsed.take(codes), index=values.index)
    _refuse_first(
        source,
        values,
        (timestamps > now_utc).to_numpy(),
        f"the timestamp is in the future (after {now_utc.isoformat()})",
    )
    return timestamps


def _refuse_first(source: Path, values: pd.Series, bad: np.ndarray, message: str) -> None:
    """Raise for the first row where ``bad`` holds (rows are the file's data rows)."""
    if bad.any():
        row = int(values.index[int(np.argmax(bad))]) + 1
        raise IngestError(source, message, column=str(values.name), row=row)


def _return_flags(frame: pd.DataFrame, mapping: ColumnMapping) -> pd.Series:
    flags = pd.Series(False, index=frame.index)
    if mapping.return_order_prefix:
        flags |= frame[schema.ORDER].str.startswith(mapping.return_order_prefix)
    if mapping.negative_quantity_is_return:
        flags |= frame[schema.QUANTITY] < 0
    return flags


def _non_products(items: pd.Series, product_code_regex: str | None) -> pd.Series:
    if product_code_regex is None:
        return pd.Series(False, index=items.index)
    codes, distinct = pd.factorize(items)
    is_product = pd.Series(distinct, dtype="str").str.match(product_code_regex).to_numpy()
    return pd.Series(~is_product[codes], index=items.index)


def _looks_personal(column: str) -> bool:
    """Whether a column name suggests personal data (e-mail, phone, name, address, ...)."""
    words = re.findall(r"[a-z]+|[0-9]+", re.sub(r"([a-z])([A-Z])", r"\1 \2", column).lower())
    compact = "".join(words)
    return any(fragment in compact for fragment in _PERSONAL_FRAGMENTS) or bool(
        _PERSONAL_WORDS.intersection(words)
    )


def _iso(timestamp: pd.Timestamp) -> str | None:
    return None if pd.isna(timestamp) else timestamp.isoformat()


@contextmanager
def _created_directory(directory: Path) -> Iterator[None]:
    """Create ``directory`` (and missing parents); remove what was created on failure."""
    missing = [path for path in (directory, *directory.parents) if not path.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in missing:  # deepest first; rmdir refuses anything not empty
            try:
                path.rmdir()
            except OSError:
                break
        raise
