"""The next-basket protocol on hand-made order lines and on the bundled data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import schema
from models.recommender.protocol import (
    NextBasketSplit,
    clean_purchases,
    customer_home_storefront,
    distinct_items_per_customer,
    split_next_basket,
)


def order_lines(rows: list[tuple]) -> pd.DataFrame:
    """Canonical frame from (customer, order, item, quantity, price, time, storefront, return)."""
    frame = pd.DataFrame(rows, columns=list(schema.COLUMNS))
    frame[schema.TIMESTAMP] = pd.to_datetime(frame[schema.TIMESTAMP], utc=True)
    return frame.astype({schema.QUANTITY: "int64", schema.UNIT_PRICE: "float64"})


HAND_MADE = order_lines(
    [
        # a: three invoices; 103 has the lowest number but the latest time, so it is last.
        ("a", "103", "20000", 1, 1.0, "2011-03-01 10:00", "France", False),
        ("a", "103", "20001", 2, 1.0, "2011-03-01 10:05", "France", False),
        ("a", "103", "20001", 1, 1.0, "2011-03-01 10:05", "France", False),
        ("a", "101", "20002", 1, 1.0, "2011-01-01 10:00", "France", False),
        ("a", "102", "20000", 1, 1.0, "2011-02-01 10:00", "Germany", False),
        # a later cancellation, a non-product line and a zero quantity are not purchases.
        ("a", "C104", "20003", -1, 1.0, "2011-04-01 10:00", "France", True),
        ("a", "105", "POST", 1, 18.0, "2011-05-01 10:00", "France", False),
        ("a", "106", "20004", 0, 1.0, "2011-06-01 10:00", "France", False),
        # b: two invoices starting at the same time; the higher number is last.
        ("b", "202", "20005", 1, 2.0, "2011-01-05 09:00", "Spain", False),
        ("b", "201", "20006", 1, 2.0, "2011-01-05 09:00", "Spain", False),
        ("b", "201", "20007", 1, 2.0, "2011-01-05 09:30", "Spain", False),
        # c: one invoice, all training; lines split evenly over two countries.
        ("c", "301", "20008", 1, 3.0, "2011-02-02 12:00", "Sweden", False),
        ("c", "301", "20009", 1, 3.0, "2011-02-02 12:00", "Austria", False),
    ]
)


@pytest.fixture(scope="module")
def hand_split() -> NextBasketSplit:
    return split_next_basket(HAND_MADE)


def test_test_basket_is_the_distinct_items_of_the_last_invoice(hand_split) -> None:
    assert hand_split.test_customers.tolist() == ["a", "b"]
    assert hand_split.test_baskets["a"].tolist() == ["20000", "20001"]
    assert hand_split.test_baskets["b"].tolist() == ["20005"]


def test_everything_else_cleaned_is_training_data(hand_split) -> None:
    train = hand_split.train
    assert sorted(zip(train[schema.CUSTOMER], train[schema.ORDER], strict=True)) == [
        ("a", "101"),
        ("a", "102"),
        ("b", "201"),
        ("b", "201"),
        ("c", "301"),
        ("c", "301"),
    ]


def test_cleaning_keeps_only_product_purchases() -> None:
    kept = clean_purchases(HAND_MADE)
    assert len(kept) == len(HAND_MADE) - 3
    assert not kept[schema.ORDER].isin(["C104", "105", "106"]).any()


def test_home_storefront_is_the_most_frequent_then_first_by_name(hand_split) -> None:
    homes = customer_home_storefront(HAND_MADE)
    assert homes.to_dict() == {"a": "France", "b": "Spain", "c": "Austria"}
    assert homes.equals(customer_home_storefront(HAND_MADE.iloc[::-1]))
    assert hand_split.test_storefronts().tolist() == ["France", "Spain"]


def test_catalogue_and_target_matrix(hand_split) -> None:
    assert hand_split.items.tolist() == [f"2000{i}" for i in (0, 1, 2, 5, 6, 7, 8, 9)]
    targets = hand_split.target_matrix()
    assert targets.shape == (2, 8)
    assert np.flatnonzero(targets[0]).tolist() == [0, 1]
    assert np.flatnonzero(targets[1]).tolist() == [3]


def test_no_purchases_is_refused() -> None:
    with pytest.raises(ValueError, match="no product purchase lines"):
        split_next_basket(HAND_MADE[HAND_MADE[schema.IS_RETURN]])


@pytest.fixture(scope="module")
def bundled_split(bundled_orders) -> NextBasketSplit:
    return split_next_basket(bundled_orders[0])


def test_bundled_data_gives_the_reference_test_customers(bundled_split) -> None:
    storefronts = bundled_split.test_storefronts()
    assert len(storefronts) == 2829
    assert (storefronts != "United Kingdom").sum() == 266
    assert bundled_split.test_baskets.map(len).min() >= 1


def test_bundled_split_partitions_the_cleaned_rows(bundled_orders, bundled_split) -> None:
    cleaned = clean_purchases(bundled_orders[0])
    train_keys = set(
        zip(bundled_split.train[schema.CUSTOMER], bundled_split.train[schema.ORDER], strict=True)
    )
    test_customer_orders = cleaned[cleaned[schema.CUSTOMER].isin(bundled_split.test_customers)]
    last = (
        test_customer_orders.groupby([schema.CUSTOMER, schema.ORDER])[schema.TIMESTAMP]
        .min()
        .reset_index()
        .sort_values([schema.CUSTOMER, schema.TIMESTAMP, schema.ORDER])
        .groupby(schema.CUSTOMER)
        .tail(1)
    )
    assert not train_keys & set(zip(last[schema.CUSTOMER], last[schema.ORDER], strict=True))
    test_rows = cleaned.merge(last[[schema.CUSTOMER, schema.ORDER]])
    assert len(test_rows) + len(bundled_split.train) == len(cleaned)
    baskets = test_rows.groupby(schema.CUSTOMER)[schema.ITEM].agg(lambda i: sorted(set(i)))
    assert baskets.map(list).equals(bundled_split.test_baskets.map(list).rename(schema.ITEM))


def test_uk_local_time_gives_the_same_split(bundled_orders, bundled_split) -> None:
    local = bundled_orders[0].copy()
    local[schema.TIMESTAMP] = local[schema.TIMESTAMP].dt.tz_convert("Europe/London")
    split = split_next_basket(local)
    assert split.test_baskets.index.equals(bundled_split.test_baskets.index)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(split.test_baskets, bundled_split.test_baskets, strict=True)
    )
    assert len(split.train) == len(bundled_split.train)


def test_distinct_items_per_customer_sorts_customers_and_items_and_handles_no_lines() -> None:
    lines = pd.DataFrame(
        {schema.CUSTOMER: ["b", "a", "b", "b", "a"], schema.ITEM: ["2", "9", "1", "2", "3"]}
    )
    baskets = distinct_items_per_customer(lines)
    assert list(baskets.index) == ["a", "b"]
    assert [list(basket) for basket in baskets] == [["3", "9"], ["1", "2"]]
    assert baskets.name == "basket"
    empty = distinct_items_per_customer(lines.iloc[:0])
    assert empty.empty and empty.index.name == schema.CUSTOMER
