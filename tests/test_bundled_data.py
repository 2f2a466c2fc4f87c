"""The bundled UCI Online Retail copy: integrity, and what ingest makes of it.

Facts come from ``simulations/data`` provenance (the data README) and docs/protocols.md; the
cleaning counts are cross-checked against an independent plain-pandas reading.
"""

from __future__ import annotations

import gzip
import hashlib

import pandas as pd
import pytest

from models import schema

SHA256 = "540bc89d045fbdb23100c8a851b645a98b9a23d5415816a47790dda424f8a3bc"


@pytest.fixture(scope="module")
def reference(bundled_data_path) -> pd.DataFrame:
    """The raw export read the way the data README says, duplicates removed."""
    raw = pd.read_csv(
        bundled_data_path,
        dtype={"InvoiceNo": str, "StockCode": str},
        keep_default_na=False,
        na_values=[""],
    )
    assert len(raw) == 541_909
    return raw.drop_duplicates()


def test_bundled_copy_is_the_documented_file(bundled_data_path):
    data = bundled_data_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHA256
    text = gzip.decompress(data)
    assert text.startswith(
        b"InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    )
    assert text.count(b"\n") == 541_909 + 1  # data rows plus the header


def test_ingest_report_matches_the_documented_facts(bundled_orders):
    _, report = bundled_orders
    assert report.rows_read == 541_909
    assert report.duplicates_dropped == 5_268
    assert report.customers_read == 4_372
    assert report.columns_dropped == ["Description"]
    per_country = report.customers_per_country_before_cleaning
    assert {country: per_country[country] for country in list(per_country)[1:9]} == {
        "Germany": 95,
        "France": 87,
        "Spain": 31,
        "Belgium": 25,
        "Switzerland": 21,
        "Portugal": 19,
        "Italy": 15,
        "Finland": 12,
    }
    assert round(per_country["United Kingdom"] / report.customers_read, 3) == 0.903
    assert sum(per_country.values()) == 4_372 + 8  # 8 customers appear under two countries
    assert sum(count >= 5 for count in per_country.values()) == 19
    assert len(per_country) == 37  # 38 countries; Hong Kong rows have no CustomerID


def test_cleaning_counts_agree_with_an_independent_reading(bundled_orders, reference):
    frame, report = bundled_orders
    with_customer = reference[reference["CustomerID"].notna()]
    products = with_customer[with_customer["StockCode"].str.match(r"\d{5}")]
    kept = products[products["UnitPrice"] > 0]
    assert report.missing_customer_rows == len(reference) - len(with_customer)
    assert report.non_product_rows == len(with_customer) - len(products)
    assert report.non_positive_price_rows == len(products) - len(kept)
    assert report.rows_written == len(frame) == len(kept)
    assert report.customers_written == kept["CustomerID"].nunique()
    assert report.returns_flagged == kept["InvoiceNo"].str.startswith("C").sum()
    lost = report.cleaning["non-product-line"].customers
    assert lost == with_customer["CustomerID"].nunique() - products["CustomerID"].nunique()


def test_canonical_frame_invariants(bundled_orders):
    frame, _ = bundled_orders
    assert tuple(frame.columns) == schema.COLUMNS
    assert frame[schema.CUSTOMER].str.fullmatch("[0-9a-f]{64}").all()
    assert frame[schema.ITEM].str.match(r"\d{5}").all()
    assert (frame[schema.UNIT_PRICE] > 0).all()
    assert frame[schema.IS_RETURN].equals(frame[schema.ORDER].str.startswith("C"))
    assert (frame.loc[frame[schema.IS_RETURN], schema.QUANTITY] < 0).all()
    assert frame[schema.TIMESTAMP].min() == pd.Timestamp("2010-12-01 08:26", tz="UTC")
    assert frame[schema.TIMESTAMP].max() == pd.Timestamp("2011-12-09 12:50", tz="UTC")


def test_churn_population_of_the_design_is_reachable(bundled_orders):
    frame, _ = bundled_orders
    purchases = frame[~frame[schema.IS_RETURN]]
    cutoff = frame[schema.TIMESTAMP].max() - pd.Timedelta(days=90)
    population = set(purchases.loc[purchases[schema.TIMESTAMP] <= cutoff, schema.CUSTOMER])
    still_buying = set(purchases.loc[purchases[schema.TIMESTAMP] > cutoff, schema.CUSTOMER])
    assert len(population) == 3_368
    assert round(len(population - still_buying) / len(population), 3) == 0.430
