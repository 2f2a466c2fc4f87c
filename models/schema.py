"""The canonical order-line schema that ingest produces and every model reads.

One row per order line. Customer ids are already pseudonymous tokens here; raw ids
never reach this schema. Timestamps are timezone-aware (UTC).
"""

from __future__ import annotations

import pyarrow as pa

CUSTOMER = "customer"
ORDER = "order_id"
ITEM = "item_id"
QUANTITY = "quantity"
UNIT_PRICE = "unit_price"
TIMESTAMP = "timestamp"
STOREFRONT = "storefront"
IS_RETURN = "is_return"

COLUMNS: tuple[str, ...] = (
    CUSTOMER,
    ORDER,
    ITEM,
    QUANTITY,
    UNIT_PRICE,
    TIMESTAMP,
    STOREFRONT,
    IS_RETURN,
)

ARROW_SCHEMA = pa.schema(
    [
        pa.field(CUSTOMER, pa.string(), nullable=False),
        pa.field(ORDER, pa.string(), nullable=False),
        pa.field(ITEM, pa.string(), nullable=False),
        pa.field(QUANTITY, pa.int64(), nullable=False),
        pa.field(UNIT_PRICE, pa.float64(), nullable=False),
        pa.field(TIMESTAMP, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(STOREFRONT, pa.string(), nullable=False),
        pa.field(IS_RETURN, pa.bool_(), nullable=False),
    ]
)
"""Parquet schema of a prepared storefront file (:data:`ORDERS_FILE`)."""


class NoCustomers(ValueError):
    """A protocol finds no customer in the order lines it is given (e.g. none before a
    churn cutoff). At a site this is a cohort of zero, not an error: what the site does
    with it must not differ from a cohort of one (:mod:`privacy.release`)."""


SUMMARY_FILE = "summary.csv"
"""A storefront split's summary table (customers, orders, lines, items, dates per storefront)."""

ORDERS_FILE = "orders.parquet"
"""The prepared order lines of one storefront, in a site's prepared directory or a
simulation's storefront split."""
