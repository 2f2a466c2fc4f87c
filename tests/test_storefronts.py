"""Storefront splits: home countries, the threshold, the summary, and the split on disk,
on the bundled data and on synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from clients.ingest import ORDERS_FILE, REPORT_FILE, IngestReport
from models import schema
from models.customers import customer_home_storefront
from privacy.pseudonymise import generate_key, load_key, pseudonymise_customers
from simulations.storefronts import (
    INDEX_FILE,
    KEY_FILE,
    OTHER,
    SUMMARY_FILE,
    TOTAL,
    StorefrontError,
    assign_storefronts,
    country_storefronts,
    prepare_bundled_storefronts,
    prepare_storefronts,
    slugify,
    storefront_summary,
)
from simulations.synthetic import generate_orders


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return generate_orders(n_storefronts=6, n_customers=400, n_items=150, seed=11)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    columns = [schema.ORDER, schema.ITEM, schema.IS_RETURN]
    return frame.sort_values(columns, kind="stable").reset_index(drop=True)


def _frame(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """A canonical frame of (customer, country) rows, one order line each."""
    n = len(rows)
    return pd.DataFrame(
        {
            schema.CUSTOMER: pd.Series([c for c, _ in rows], dtype="str"),
            schema.ORDER: pd.Series([str(i) for i in range(n)], dtype="str"),
            schema.ITEM: pd.Series(["10001"] * n, dtype="str"),
            schema.QUANTITY: np.ones(n, dtype=np.int64),
            schema.UNIT_PRICE: np.ones(n),
            schema.TIMESTAMP: pd.date_range("2011-01-01", periods=n, freq="D", tz="UTC"),
            schema.STOREFRONT: pd.Series([s for _, s in rows], dtype="str"),
            schema.IS_RETURN: np.zeros(n, dtype=bool),
        }
    )


def test_home_country_is_the_most_frequent_and_ties_go_to_the_first_name() -> None:
    frame = _frame(
        [("a", "Spain"), ("a", "Spain"), ("a", "Belgium")]
        + [("b", "France"), ("b", "Austria"), ("b", "France"), ("b", "Austria")]
        + [("c", "Germany")]
    )
    homes = customer_home_storefront(frame)
    assert homes.to_dict() == {"a": "Spain", "b": "Austria", "c": "Germany"}
    assert customer_home_storefront(frame.iloc[::-1]).to_dict() == homes.to_dict()


def test_small_countries_merge_into_other() -> None:
    rows = [(f"u{i}", "Big") for i in range(3)] + [("s1", "Small"), ("t1", "Tiny")]
    assigned = assign_storefronts(_frame(rows + [("s1", "Big")]), min_customers=2)
    assert assigned.groupby(schema.CUSTOMER)[schema.STOREFRONT].unique().map(list).to_dict() == {
        "u0": ["Big"],
        "u1": ["Big"],
        "u2": ["Big"],
        "s1": ["Big"],  # one row in Small, one in Big: the tie goes to Big
        "t1": [OTHER],
    }
    assert set(assign_storefronts(_frame(rows), min_customers=1)[schema.STOREFRONT]) == {
        "Big",
        "Small",
        "Tiny",
    }
    with pytest.raises(ValueError, match="min_customers"):
        assign_storefronts(_frame(rows), min_customers=0)


def test_bundled_data_storefronts_at_threshold_20(
    bundled_orders: tuple[pd.DataFrame, IngestReport],
) -> None:
    frame, _ = bundled_orders
    assigned = assign_storefronts(frame, min_customers=20)
    customers = assigned.groupby(schema.STOREFRONT)[schema.CUSTOMER].nunique()
    # The data README counts raw customers per country (Spain 31, Belgium 25,
    # Switzerland 21); ingest drops one Spanish customer with no product line, and
    # three customers shopping in two countries have their home elsewhere.
    assert customers.to_dict() == {
        "United Kingdom": 3942,
        "Germany": 95,
        "France": 87,
        "Spain": 29,
        "Belgium": 24,
        "Switzerland": 20,
        OTHER: 165,
    }
    assert customers.sum() == frame[schema.CUSTOMER].nunique()


@pytest.mark.parametrize("min_customers", [1, 12, 20, 5000])
def test_threshold_is_respected_and_rows_are_conserved(
    bundled_orders: tuple[pd.DataFrame, IngestReport], min_customers: int
) -> None:
    frame, _ = bundled_orders
    assigned = assign_storefronts(frame, min_customers=min_customers)
    homes = customer_home_storefront(frame)
    home_customers = homes.value_counts()
    pairs = assigned[[schema.CUSTOMER, schema.STOREFRONT]].drop_duplicates()
    assert pairs[schema.CUSTOMER].is_unique  # every customer in exactly one storefront
    storefront = pairs.set_index(schema.CUSTOMER)[schema.STOREFRONT]
    own = storefront[storefront != OTHER]
    assert (own == homes[own.index]).all()
    assert (home_customers[own.unique()] >= min_customers).all()
    merged = homes[storefront[storefront == OTHER].index].unique()
    assert (home_customers[merged] < min_customers).all()
    assert (OTHER in set(storefront)) == (home_customers < min_customers).any()
    # Rows conserved: only the storefront column changed.
    pd.testing.assert_frame_equal(
        assigned.drop(columns=schema.STOREFRONT), frame.drop(columns=schema.STOREFRONT)
    )


def test_summary_totals_are_consistent(synthetic: pd.DataFrame) -> None:
    summary = storefront_summary(synthetic).set_index(schema.STOREFRONT)
    total, per_storefront = summary.loc[TOTAL], summary.drop(index=TOTAL)
    assert list(per_storefront["customers"]) == sorted(per_storefront["customers"], reverse=True)
    for column in ("customers", "orders", "order_lines"):
        assert per_storefront[column].sum() == total[column]
    assert total["order_lines"] == len(synthetic)
    assert total["customers"] == synthetic[schema.CUSTOMER].nunique()
    assert per_storefront["items"].max() <= total["items"] <= per_storefront["items"].sum()
    assert total["items"] == synthetic[schema.ITEM].nunique()
    assert total["first_date"] == per_storefront["first_date"].min()
    assert total["last_date"] == per_storefront["last_date"].max()
    assert total["first_date"] == synthetic[schema.TIMESTAMP].min().strftime("%Y-%m-%d")


def test_prepared_split_holds_every_row_once(synthetic: pd.DataFrame, tmp_path: Path) -> None:
    out = tmp_path / "split"
    summary = prepare_storefronts(synthetic, out, metadata={"source": "synthetic"})
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["source"] == "synthetic"
    names = [entry["name"] for entry in index["storefronts"]]
    assert sorted(names) == sorted(synthetic[schema.STOREFRONT].unique())
    parts = []
    for entry in index["storefronts"]:
        table = pq.read_table(out / entry["file"])
        assert table.schema.equals(schema.ARROW_SCHEMA)
        part = table.to_pandas()
        assert set(part[schema.STOREFRONT]) == {entry["name"]}
        assert len(part) == entry["order_lines"]
        parts.append(part)
    pd.testing.assert_frame_equal(_sorted(pd.concat(parts)), _sorted(synthetic))
    assert index["total"]["order_lines"] == len(synthetic)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / SUMMARY_FILE, dtype={"storefront": "str"}), summary
    )


def test_a_new_split_replaces_an_old_one_and_nothing_else(
    synthetic: pd.DataFrame, tmp_path: Path
) -> None:
    out = tmp_path / "split"
    prepare_storefronts(synthetic, out)
    smaller = generate_orders(n_storefronts=2, n_customers=20, n_items=30, seed=1)
    prepare_storefronts(smaller, out)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "storefront-0",
        "storefront-1",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["split"]

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    with pytest.raises(StorefrontError, match="refusing to replace"):
        prepare_storefronts(smaller, occupied)
    assert [p.name for p in occupied.iterdir()] == ["notes.txt"]


def test_a_failed_split_leaves_no_output(synthetic: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is_return"):
        prepare_storefronts(synthetic.drop(columns=schema.IS_RETURN), tmp_path / "split")
    assert list(tmp_path.iterdir()) == []


def test_storefronts_whose_names_share_a_slug_get_distinct_directories(tmp_path: Path) -> None:
    frame = _frame([("a", "EIRE"), ("b", "Eire"), ("c", "eire")])
    prepare_storefronts(frame, tmp_path / "split")
    index = json.loads((tmp_path / "split" / INDEX_FILE).read_text())
    slugs = {entry["name"]: entry["slug"] for entry in index["storefronts"]}
    assert slugs == {"EIRE": "eire", "Eire": "eire-2", "eire": "eire-3"}
    with pytest.raises(ValueError, match="Total"):
        storefront_summary(_frame([("a", TOTAL)]))


def test_slugs_are_readable_directory_names() -> None:
    assert slugify("United Kingdom") == "united-kingdom"
    assert slugify("Côte d'Ivoire") == "cote-d-ivoire"
    assert slugify("RSA") == "rsa"
    assert slugify("???") == "storefront"


def test_country_storefronts_lists_every_country() -> None:
    homes = pd.Series(["A", "A", "B"], index=["x", "y", "z"])
    assert country_storefronts(homes, 2).to_dict() == {"A": "A", "B": OTHER}


@pytest.mark.slow
def test_bundled_split_with_a_given_key(tmp_path: Path) -> None:
    key_path = tmp_path / "site.key"
    generate_key(key_path)
    out = tmp_path / "split"
    summary = prepare_bundled_storefronts(out, key_path=key_path)
    assert not (out / KEY_FILE).exists()
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["min_customers"] == 20
    assert index["countries"]["Portugal"] == OTHER
    assert index["countries"]["Switzerland"] == "Switzerland"
    report = json.loads((out / REPORT_FILE).read_text())
    total = summary.set_index(schema.STOREFRONT).loc[TOTAL]
    assert report["rows_written"] == total["order_lines"]
    assert report["customers_written"] == total["customers"]
    # Customer 17850 (a UK customer in the raw file) appears under the given key's token.
    token = pseudonymise_customers(pd.Series(["17850"]), load_key(key_path)).iloc[0]
    uk = pq.read_table(out / "united-kingdom" / ORDERS_FILE).to_pandas()
    assert token in set(uk[schema.CUSTOMER])
