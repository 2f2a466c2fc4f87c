"""Customers across storefronts, as both protocols see them: each customer's home
storefront."""

from __future__ import annotations

import pandas as pd

from models import schema


def customer_home_storefront(frame: pd.DataFrame) -> pd.Series:
    """Each customer's home storefront: the ``storefront`` of most of their rows.

    Rows are counted as given (the caller decides which, e.g. :func:`clean_purchases`).
    A tie goes to the storefront name that sorts first, so the result does not depend on
    row order. On the bundled data the eight customers seen under two countries have no
    tie by rows (nor any in the United Kingdom), so the choice of tie-break changes no
    reference count.

    Returns:
        A Series indexed by customer token (sorted), named ``storefront``.
    """
    lines = frame.groupby([schema.CUSTOMER, schema.STOREFRONT], observed=True).size()
    lines = lines.rename("lines").reset_index()
    lines = lines.sort_values(
        [schema.CUSTOMER, "lines", schema.STOREFRONT], ascending=[True, False, True]
    )
    homes = lines.drop_duplicates(schema.CUSTOMER).set_index(schema.CUSTOMER)[schema.STOREFRONT]
    return homes.rename(schema.STOREFRONT)
