"""Format adapters: which source column means what, and how to read its values.

A :class:`ColumnMapping` names the source columns behind the canonical order-line
fields (``models.schema``) and the conventions of one export format: timestamp format
and time zone, decimal separator, delimiter, how returns are marked and which item codes
are products. ``ADAPTERS`` holds the named formats shipped with fedshop; a site with
another export declares its mapping in a small TOML or JSON file (kebab-case keys, the
field names below with ``_`` written as ``-``), for example::

    customer = "client_ref"
    order = "order_no"
    item = "sku"
    quantity = "qty"
    price = "price_eur"
    timestamp = "created"
    timestamp-format = "%d.%m.%Y %H:%M"
    timezone = "Europe/Berlin"
    storefront = "Germany"          # or: country = "<column>"
    decimal = ","
    delimiter = ";"                 # optional; sniffed from the header otherwise
    return-order-prefix = "R"       # optional
    product-code-regex = "[0-9]{5}" # optional; matched at the start of the item code
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from clients.errors import IngestError

DELIMITERS = (",", ";", "\t", "|")
"""Delimiters a CSV export may use; the one that splits the header best wins."""


@dataclass(frozen=True)
class ColumnMapping:
    """How one export format maps onto the canonical order-line schema.

    Attributes:
        customer, order, item, quantity, price, timestamp: source column names.
        timestamp_format: ``strptime`` format of the timestamp column, or ``"ISO8601"``.
        timezone: IANA zone of timestamps that carry no offset (converted to UTC).
        country: source column naming each row's storefront (country) ...
        storefront: ... or one fixed storefront name for the whole file (exactly one).
        decimal: decimal separator of prices, ``"."`` or ``","``.
        delimiter: CSV delimiter, or None to sniff it from the header.
        return_order_prefix: order ids starting with this mark a cancellation/return.
        negative_quantity_is_return: a negative quantity also marks a return.
        product_code_regex: item codes not matching this (at their start) are not
            products (postage, fees, adjustments) and are dropped; None keeps all.
        name: adapter or mapping-file name, shown in the ingest report.
    """

    customer: str
    order: str
    item: str
    quantity: str
    price: str
    timestamp: str
    timestamp_format: str = "%Y-%m-%d %H:%M:%S"
    timezone: str = "UTC"
    country: str | None = None
    storefront: str | None = None
    decimal: str = "."
    delimiter: str | None = None
    return_order_prefix: str | None = None
    negative_quantity_is_return: bool = False
    product_code_regex: str | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if (self.country is None) == (self.storefront is None):
            raise ValueError("give exactly one of 'country' (a column) or 'storefront' (a name)")
        if self.decimal not in (".", ","):
            raise ValueError(f"decimal separator must be '.' or ',', not {self.decimal!r}")
        if self.delimiter is not None and self.delimiter not in DELIMITERS:
            raise ValueError(f"delimiter must be one of {DELIMITERS!r}, not {self.delimiter!r}")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {self.timezone!r}") from None
        if self.product_code_regex is not None:
            try:
                re.compile(self.product_code_regex)
            except re.error as error:
                raise ValueError(f"product-code-regex does not compile: {error}") from None
        columns = self.source_columns()
        if len(set(columns.values())) != len(columns):
            raise ValueError("two fields are mapped to the same source column")

    def source_columns(self) -> dict[str, str]:
        """Map each canonical field this format reads to its source column name."""
        fields = ("customer", "order", "item", "quantity", "price", "timestamp", "country")
        return {field: getattr(self, field) for field in fields if getattr(self, field)}


ADAPTERS: dict[str, ColumnMapping] = {
    "online-retail": ColumnMapping(
        customer="CustomerID",
        order="InvoiceNo",
        item="StockCode",
        quantity="Quantity",
        price="UnitPrice",
        timestamp="InvoiceDate",
        timestamp_format="%Y-%m-%d %H:%M:%S",
        timezone="Europe/London",
        country="Country",
        return_order_prefix="C",
        product_code_regex=r"\d{5}",
        name="online-retail",
    ),
}
"""Named export formats. ``online-retail``: the UCI Online Retail export (UK local time,
cancellations are invoices starting with "C", products have five-digit stock codes)."""


def load_mapping(path: Path) -> ColumnMapping:
    """Read a declared column mapping from a ``.toml`` or ``.json`` file.

    Raises:
        IngestError: the file is unreadable, not TOML/JSON, has unknown or missing keys,
            or declares invalid values; the error names the offending key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise IngestError(path, f"cannot read mapping file ({_reason(error)})") from None
    try:
        if path.suffix.lower() == ".json":
            raw = json.loads(text)
        else:
            raw = tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        raise IngestError(path, f"not a valid mapping file: {error}") from None
    if not isinstance(raw, dict):
        raise IngestError(path, "a mapping file holds one table of key = value pairs")

    known = {field.name.replace("_", "-"): field for field in dataclasses.fields(ColumnMapping)}
    values = {}
    for key, value in raw.items():
        if key not in known or key == "name":
            raise IngestError(path, "unknown mapping key", column=key)
        field = known[key]
        expected = bool if field.name == "negative_quantity_is_return" else str
        if not isinstance(value, expected):
            raise IngestError(path, f"must be a {expected.__name__}", column=key)
        values[field.name] = value
    required = [
        f.name for f in dataclasses.fields(ColumnMapping) if f.default is dataclasses.MISSING
    ]
    for name in required:
        if name not in values:
            raise IngestError(path, "required mapping key is missing", column=name)
    try:
        return ColumnMapping(**values, name=path.name)
    except ValueError as error:
        raise IngestError(path, str(error)) from None


def _reason(error: Exception) -> str:
    return error.strerror if isinstance(error, OSError) and error.strerror else type(error).__name__


def add_format_options(parser: argparse.ArgumentParser) -> None:
    """Declare how a command reads an export: ``[--adapter A | --mapping F] [--encoding E]``
    (read back by :func:`mapping_from_args`)."""
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument(
        "--adapter",
        choices=sorted(ADAPTERS),
        default="online-retail",
        help="a named export format (default: online-retail)",
    )
    fmt.add_argument("--mapping", type=Path, help="a TOML or JSON column mapping instead")
    parser.add_argument(
        "--encoding", help="text encoding of a CSV export that is not UTF-8 (e.g. cp1252)"
    )


def mapping_from_args(args: argparse.Namespace) -> ColumnMapping:
    """The export format the options of :func:`add_format_options` name.

    Raises:
        IngestError: the mapping file is invalid.
    """
    return load_mapping(args.mapping) if args.mapping else ADAPTERS[args.adapter]
