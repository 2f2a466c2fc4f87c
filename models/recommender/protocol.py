"""The fixed next-basket protocol: cleaning, home storefronts, test baskets, training rows.

docs/protocols.md fixes the protocol so every number compares:

1. clean: keep product lines (item id starting with five digits) that are not
   cancellations/returns, with quantity > 0 and unit price > 0;
2. a customer's storefront is their home storefront (:func:`customer_home_storefront`);
3. invoices are ordered per customer by their first timestamp, then invoice number; for
   every customer with at least two invoices, the distinct items of the last invoice are
   the test basket;
4. every other cleaned row (all invoices of one-invoice customers included) is training
   data.

On the bundled UCI Online Retail data this gives 2,829 test customers, 266 of them with
a home storefront other than the United Kingdom. Ingest stores timestamps in UTC while
the export is in UK local time; the conversion is monotone, so invoice order (and every
count) is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models import schema
from models.customers import customer_home_storefront

PRODUCT_CODE = r"^\d{5}"
"""Item ids of real products start with five digits (postage, fees, adjustments do not)."""


@dataclass(frozen=True)
class NextBasketSplit:
    """The protocol's training data and test baskets.

    Attributes:
        train: cleaned order lines (canonical schema) the models may learn from.
        test_baskets: test customer -> sorted array of the distinct item ids of their last
            invoice; indexed by customer token in sorted order.
        home_storefront: every cleaned customer -> home storefront.
        items: the catalogue to rank: sorted distinct item ids of all cleaned rows.
    """

    train: pd.DataFrame
    test_baskets: pd.Series
    home_storefront: pd.Series
    items: pd.Index

    @property
    def test_customers(self) -> pd.Index:
        """Tokens of the test customers, in the row order of :meth:`target_matrix`."""
        return self.test_baskets.index

    def test_storefronts(self) -> np.ndarray:
        """Home storefront of each test customer, in the row order of :meth:`target_matrix`."""
        return self.home_storefront.loc[self.test_customers].to_numpy(dtype=object)

    def target_matrix(self) -> np.ndarray:
        """Boolean test customers × catalogue matrix: which items are in each test basket."""
        sizes = self.test_baskets.map(len).to_numpy()
        rows = np.repeat(np.arange(sizes.size), sizes)
        columns = self.items.get_indexer(np.concatenate(self.test_baskets.to_numpy()))
        targets = np.zeros((sizes.size, len(self.items)), dtype=bool)
        targets[rows, columns] = True
        return targets


CATALOGUE_COLUMNS: tuple[str, ...] = (
    schema.ITEM,
    schema.IS_RETURN,
    schema.QUANTITY,
    schema.UNIT_PRICE,
)
"""The columns :func:`clean_purchases`, hence :func:`catalogue_of`, reads."""


def clean_purchases(frame: pd.DataFrame) -> pd.DataFrame:
    """Product purchase lines: item id starts with five digits, not a return, quantity > 0
    and unit price > 0 (fresh index)."""
    keep = (
        frame[schema.ITEM].str.match(PRODUCT_CODE).to_numpy(dtype=bool)
        & ~frame[schema.IS_RETURN].to_numpy(dtype=bool)
        & (frame[schema.QUANTITY].to_numpy() > 0)
        & (frame[schema.UNIT_PRICE].to_numpy() > 0)
    )
    return frame[keep].reset_index(drop=True)


def last_invoices(purchases: pd.DataFrame) -> pd.DataFrame:
    """Per customer with at least two invoices, the (customer, order id) of the last one.

    Invoices are ordered by their first timestamp, then invoice number.
    """
    invoices = (
        purchases.groupby([schema.CUSTOMER, schema.ORDER], observed=True)[schema.TIMESTAMP]
        .min()
        .reset_index()
        .sort_values([schema.CUSTOMER, schema.TIMESTAMP, schema.ORDER])
    )
    repeat = invoices[schema.CUSTOMER].duplicated(keep=False)
    last = invoices[repeat].drop_duplicates(schema.CUSTOMER, keep="last")
    return last[[schema.CUSTOMER, schema.ORDER]].reset_index(drop=True)


def split_next_basket(frame: pd.DataFrame) -> NextBasketSplit:
    """Apply the protocol (module docstring) to order lines in the canonical schema."""
    purchases = clean_purchases(frame)
    if purchases.empty:
        raise schema.NoCustomers("no product purchase lines left after cleaning")
    last = last_invoices(purchases)
    is_test = pd.MultiIndex.from_frame(purchases[[schema.CUSTOMER, schema.ORDER]]).isin(
        pd.MultiIndex.from_frame(last)
    )
    return NextBasketSplit(
        train=purchases[~is_test].reset_index(drop=True),
        test_baskets=distinct_items_per_customer(purchases[is_test]),
        home_storefront=customer_home_storefront(purchases),
        items=pd.Index(np.unique(purchases[schema.ITEM].to_numpy(dtype=str)), name=schema.ITEM),
    )


def distinct_items_per_customer(lines: pd.DataFrame) -> pd.Series:
    """Customer token (sorted) -> sorted array of the distinct item ids in ``lines``,
    named ``basket``: one sort of all lines, then a slice per customer (a grouped
    ``np.unique`` per customer takes minutes at 200k customers)."""
    pairs = lines[[schema.CUSTOMER, schema.ITEM]].drop_duplicates()
    pairs = pairs.sort_values([schema.CUSTOMER, schema.ITEM])
    customers = pairs[schema.CUSTOMER].to_numpy()
    starts = np.flatnonzero(np.r_[True, customers[1:] != customers[:-1]])[: len(pairs)]
    baskets = np.split(pairs[schema.ITEM].to_numpy(dtype=str), starts[1:])[: len(starts)]
    index = pd.Index(customers[starts], name=schema.CUSTOMER)
    return pd.Series(baskets, index=index, dtype=object, name="basket")


def catalogue_of(frame: pd.DataFrame) -> list[str]:
    """The protocol's catalogue of some order lines: the sorted distinct item ids of their
    clean purchase lines (what the centralized protocol ranks). Distinct values first,
    then text: a catalogue is thousands of items, a split millions of lines."""
    return sorted(str(item) for item in pd.unique(clean_purchases(frame)[schema.ITEM]))


def read_catalogue(path: str | Path) -> list[str]:
    """A catalogue file: one item id per line (blank lines ignored), position = item index.

    Raises:
        ValueError: the file cannot be read, lists an item twice, or is empty.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the item catalogue ({error})") from None
    items = [line.strip() for line in lines if line.strip()]
    if len(set(items)) != len(items):
        raise ValueError(f"{path}: the catalogue lists an item id twice")
    if not items:
        raise ValueError(f"{path}: the item catalogue is empty")
    return items


TARGET_WINDOW = "target-window"
"""Run-config spelling of :class:`TrainingExamples`' ``target_window`` (a setting of the
recommender's table, and one of its shared facts): a whole number ``>= 1``, or
:data:`ALL_INVOICES` for ``None``."""
ALL_INVOICES = "all"
DEFAULT_TARGET_WINDOW = 1


def parse_target_window(value: object) -> int | None:
    """A target window in run-config spelling as ``TrainingExamples`` takes it: empty
    means :data:`DEFAULT_TARGET_WINDOW`, :data:`ALL_INVOICES` means ``None``.

    Raises:
        ValueError: anything else than a whole number ``>= 1``, ``"all"`` or empty.
    """
    text = str(value).strip()
    if text == "":
        return DEFAULT_TARGET_WINDOW
    if text == ALL_INVOICES:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(
            f"{TARGET_WINDOW}: {value!r} is neither a whole number >= 1 nor {ALL_INVOICES!r}"
        )
    return int(text)


def spell_target_window(window: int | None) -> int | str:
    """The run-config spelling of a ``target_window`` (``None`` -> :data:`ALL_INVOICES`)."""
    return ALL_INVOICES if window is None else window
