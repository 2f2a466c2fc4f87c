"""Ingest of valid exports: formats, cleaning counts, canonical output, atomic writes, CLI."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import re
import stat
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clients.cli import main
from clients.ingest import (
    IngestError,
    ingest_table,
    load_mapping,
    prepare_export,
    write_prepared,
)
from models import schema
from privacy.pseudonymise import KeyFileError, generate_key

KEY = bytes(range(32))
FEDSHOP_SITE = str(Path(sys.executable).with_name("fedshop-site"))

# one row per cleaning rule, plus a duplicate and a cancellation
CLEANING_ROWS = (
    "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850,United Kingdom",
    "536366,22633,HAND WARMER,6,2011-06-01 10:00:00,1.85,12583,France",
    "C536379,22633,HAND WARMER,-1,2011-06-02 10:00:00,1.85,12583,France",
    "536370,POST,POSTAGE,3,2011-06-03 10:00:00,18.00,12583,France",
    "536371,22633,HAND WARMER,2,2011-06-04 10:00:00,1.85,,Hong Kong",
    "536372,22633,HAND WARMER,1,2011-06-05 10:00:00,0.00,13748,Germany",
    "536373,POST,POSTAGE,1,2011-06-05 10:00:00,5.00,14000,Spain",
)


def token(raw_id: str, key: bytes = KEY) -> str:
    return hmac.new(key, raw_id.encode(), hashlib.sha256).hexdigest()


def test_cleaning_counts_rows_and_customers_per_rule(retail_csv):
    frame, report = ingest_table(retail_csv(CLEANING_ROWS), KEY)
    assert report.rows_read == 9
    assert report.duplicates_dropped == 1
    assert report.missing_customer_rows == 1
    assert report.non_product_rows == 2
    assert report.non_positive_price_rows == 1
    assert report.returns_flagged == 1
    assert (report.rows_written, report.customers_read, report.customers_written) == (4, 4, 2)
    assert {rule: (c.rows, c.customers) for rule, c in report.cleaning.items()} == {
        "exact-duplicate": (1, 0),
        "missing-customer": (1, 0),
        "non-product-line": (2, 1),  # customer 14000 only bought postage
        "non-positive-price": (1, 1),  # customer 13748 only had a free line
    }
    assert report.customers_per_country_before_cleaning == {
        "France": 1,
        "Germany": 1,
        "Spain": 1,
        "United Kingdom": 1,
    }
    assert report.columns_dropped == ["Description"]
    assert report.personal_columns_dropped == []
    assert frame[schema.CUSTOMER].tolist() == [token("17850")] * 2 + [token("12583")] * 2


def test_canonical_frame_has_the_schema_columns_dtypes_and_values(retail_csv):
    frame, _ = ingest_table(retail_csv(CLEANING_ROWS), KEY)
    assert tuple(frame.columns) == schema.COLUMNS
    assert isinstance(frame.index, pd.RangeIndex)
    roundtrip = pa.Table.from_pandas(frame, schema=schema.ARROW_SCHEMA, preserve_index=False)
    pd.testing.assert_frame_equal(roundtrip.to_pandas(), frame)
    assert frame[schema.ORDER].tolist() == ["536365", "536365", "536366", "C536379"]
    assert frame[schema.ITEM].tolist() == ["85123A", "71053", "22633", "22633"]
    assert frame[schema.QUANTITY].tolist() == [6, 6, 6, -1]
    assert frame[schema.UNIT_PRICE].tolist() == [2.55, 3.39, 1.85, 1.85]
    assert frame[schema.IS_RETURN].tolist() == [False, False, False, True]
    assert frame[schema.STOREFRONT].tolist() == ["United Kingdom"] * 2 + ["France"] * 2


def test_london_wall_times_become_utc_in_winter_and_summer(retail_csv):
    frame, report = ingest_table(retail_csv(CLEANING_ROWS), KEY)
    assert frame[schema.TIMESTAMP].tolist() == [
        pd.Timestamp("2010-12-01 08:26", tz="UTC"),  # GMT = UTC
        pd.Timestamp("2010-12-01 08:26", tz="UTC"),
        pd.Timestamp("2011-06-01 09:00", tz="UTC"),  # BST = UTC+1
        pd.Timestamp("2011-06-02 09:00", tz="UTC"),
    ]
    assert report.first_timestamp == "2010-12-01T08:26:00+00:00"
    assert report.last_timestamp == "2011-06-02T09:00:00+00:00"


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiter_is_sniffed(retail_csv, delimiter):
    rows = [row.replace(",", delimiter) for row in CLEANING_ROWS]
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
    path = retail_csv(rows, header=header.replace(",", delimiter))
    frame, report = ingest_table(path, KEY)
    expected, _ = ingest_table(retail_csv(CLEANING_ROWS, name="comma.csv"), KEY)
    pd.testing.assert_frame_equal(frame, expected)
    assert report.rows_read == 9


def test_quoted_fields_with_delimiters_and_newlines_are_one_cell(retail_csv):
    rows = ['536365,85123A,"HEART, WHITE\nHANGING",6,2010-12-01 08:26:00,2.55,17850,United Kingdom']
    frame, report = ingest_table(retail_csv(rows), KEY)
    assert (report.rows_read, len(frame)) == (1, 1)


def test_utf8_bom_crlf_and_gzip_named_csv_are_read(retail_csv, tmp_path):
    plain = retail_csv()
    expected, _ = ingest_table(plain, KEY)
    with_bom = tmp_path / "bom.csv"
    with_bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes().replace(b"\n", b"\r\n"))
    gzipped = tmp_path / "looks-plain.csv"  # gzip is recognised by its bytes, not its name
    gzipped.write_bytes(gzip.compress(plain.read_bytes()))
    for path, source_format in ((with_bom, "csv"), (gzipped, "csv+gzip")):
        frame, report = ingest_table(path, KEY)
        pd.testing.assert_frame_equal(frame, expected)
        assert report.source_format == source_format


def test_parquet_is_recognised_by_its_bytes_and_float_ids_match_csv_tokens(retail_csv, tmp_path):
    expected, _ = ingest_table(retail_csv(), KEY)
    table = pd.read_csv(retail_csv(), dtype={"InvoiceNo": str, "StockCode": str})
    table["CustomerID"] = table["CustomerID"].astype("float64")  # as spreadsheets export it
    path = tmp_path / "export.dat"
    table.to_parquet(path)
    frame, report = ingest_table(path, KEY)
    pd.testing.assert_frame_equal(frame, expected)
    assert report.source_format == "parquet"


def test_parquet_with_native_timestamps(retail_csv, tmp_path):
    expected, _ = ingest_table(retail_csv(), KEY)
    table = pd.read_csv(retail_csv(), dtype=str)
    table["InvoiceDate"] = pd.to_datetime(table["InvoiceDate"])  # naive: London wall time
    path = tmp_path / "export.parquet"
    table.to_parquet(path)
    frame, _ = ingest_table(path, KEY)
    pd.testing.assert_frame_equal(frame, expected)


MAPPING_TOML = """\
customer = "client"
order = "order-ref"
item = "sku"
quantity = "qty"
price = "price"
timestamp = "created"
timestamp-format = "%d.%m.%Y %H:%M"
timezone = "Europe/Berlin"
storefront = "Germany"
decimal = ","
negative-quantity-is-return = true
product-code-regex = "SKU-"
"""
MAPPED_EXPORT = """\
client;order-ref;sku;qty;price;created;email
501;A-1;SKU-7;2;3,50;01.07.2011 12:00;anna@example.org
501;A-2;FEE;1;1,00;02.07.2011 12:00;anna@example.org
502;A-3;SKU-7;-1;3,50;15.01.2011 09:30;ben@example.org
"""


@pytest.mark.parametrize("mapping_format", ["toml", "json"])
def test_declared_mapping_reads_another_export_format(tmp_path, mapping_format):
    mapping_path = tmp_path / f"shop.{mapping_format}"
    if mapping_format == "toml":
        mapping_path.write_text(MAPPING_TOML)
    else:
        mapping_path.write_text(json.dumps(tomllib.loads(MAPPING_TOML)))
    export = tmp_path / "shop.csv"
    export.write_text(MAPPED_EXPORT)
    mapping = load_mapping(mapping_path)
    frame, report = ingest_table(export, KEY, mapping=mapping)
    assert report.mapping == mapping_path.name
    assert report.non_product_rows == 1
    assert report.columns_dropped == ["email"]
    assert report.personal_columns_dropped == ["email"]
    assert frame[schema.CUSTOMER].tolist() == [token("501"), token("502")]
    assert frame[schema.UNIT_PRICE].tolist() == [3.5, 3.5]
    assert frame[schema.IS_RETURN].tolist() == [False, True]
    assert frame[schema.STOREFRONT].tolist() == ["Germany", "Germany"]
    assert frame[schema.TIMESTAMP].tolist() == [
        pd.Timestamp("2011-07-01 10:00", tz="UTC"),  # CEST = UTC+2
        pd.Timestamp("2011-01-15 08:30", tz="UTC"),  # CET = UTC+1
    ]


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ('customer = "c"\ncolour = "red"\n', "colour"),
        ('customer = "c"\norder = "o"\n', "item"),
        (MAPPING_TOML.replace('"%d.%m.%Y %H:%M"', "5"), "timestamp-format"),
    ],
)
def test_bad_mapping_file_names_the_key(tmp_path, content, key):
    path = tmp_path / "shop.toml"
    path.write_text(content)
    with pytest.raises(IngestError) as caught:
        load_mapping(path)
    assert caught.value.column == key
    assert str(path) in str(caught.value)


def test_mapping_with_invalid_values_is_refused(tmp_path):
    path = tmp_path / "shop.toml"
    path.write_text(MAPPING_TOML.replace('"Europe/Berlin"', '"Mars/Olympus"'))
    with pytest.raises(IngestError, match="unknown time zone"):
        load_mapping(path)


def test_unmapped_personal_columns_are_reported_and_never_written(tmp_path, retail_csv):
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
    extra = ",E-Mail,PhoneNumber,customerName,ShippingMethod"
    rows = [
        "536365,85123A,HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom,"
        "zoe.quinn@example.org,+44 7700 900123,Zoe Quinn,courier",
    ]
    frame, report = ingest_table(retail_csv(rows, header=header + extra), KEY)
    assert report.columns_dropped == [
        "Description",
        "E-Mail",
        "PhoneNumber",
        "customerName",
        "ShippingMethod",
    ]
    assert report.personal_columns_dropped == ["E-Mail", "PhoneNumber", "customerName"]
    write_prepared(frame, report, tmp_path / "out")
    for written in (tmp_path / "out").iterdir():
        content = written.read_bytes()
        for secret in (b"zoe.quinn", b"example.org", b"7700 900123", b"Zoe Quinn", b"17850"):
            assert secret not in content, (written.name, secret)


def test_write_prepared_writes_schema_parquet_and_report(retail_csv, tmp_path):
    frame, report = ingest_table(retail_csv(CLEANING_ROWS), KEY)
    out = tmp_path / "deep" / "out"
    write_prepared(frame, report, out)
    assert sorted(p.name for p in out.iterdir()) == ["ingest_report.json", "orders.parquet"]
    table = pq.read_table(out / "orders.parquet")
    assert table.schema.equals(schema.ARROW_SCHEMA)
    pd.testing.assert_frame_equal(table.to_pandas(), frame)
    assert json.loads((out / "ingest_report.json").read_text()) == report.to_dict()
    assert stat.S_IMODE((out / "orders.parquet").stat().st_mode) == 0o600


def test_failed_write_leaves_no_new_directory_or_temp_file(retail_csv, tmp_path):
    frame, report = ingest_table(retail_csv(), KEY)
    broken = frame.assign(quantity=["six"] * len(frame))  # not int64: conversion fails
    out = tmp_path / "new" / "out"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_prepared(broken, report, out)
    assert list(tmp_path.iterdir()) == [retail_csv().parent / "export.csv"]


def test_failed_write_keeps_the_previous_output(retail_csv, tmp_path):
    frame, report = ingest_table(retail_csv(), KEY)
    out = tmp_path / "out"
    write_prepared(frame, report, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_prepared(frame.assign(quantity=["six"] * len(frame)), report, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_prepare_export_checks_the_key_before_reading(retail_csv, tmp_path):
    key_path = tmp_path / "site.key"
    key_path.write_bytes(KEY)
    key_path.chmod(0o644)
    with pytest.raises(KeyFileError):
        prepare_export(retail_csv(), tmp_path / "out", key_path)
    assert not (tmp_path / "out").exists()


def test_same_key_links_monthly_exports_and_a_new_key_does_not(retail_csv, tmp_path):
    generate_key(tmp_path / "site.key")
    generate_key(tmp_path / "other.key")
    first = prepare_export(retail_csv(), tmp_path / "m1", tmp_path / "site.key")
    prepare_export(retail_csv(), tmp_path / "m2", tmp_path / "site.key")
    prepare_export(retail_csv(), tmp_path / "x", tmp_path / "other.key")
    tokens = {
        run: set(pq.read_table(tmp_path / run / "orders.parquet")["customer"].to_pylist())
        for run in ("m1", "m2", "x")
    }
    assert tokens["m1"] == tokens["m2"]
    assert len(tokens["m1"]) == first.customers_written == 2
    assert tokens["m1"].isdisjoint(tokens["x"])


def test_future_check_uses_the_given_now(retail_csv):
    _, report = ingest_table(retail_csv(), KEY, now=datetime(2011, 6, 1, 9, 0, tzinfo=UTC))
    assert report.rows_written == 3  # 2011-06-01 10:00 London = 09:00 UTC, not after now


def test_cli_prepare_in_process_prints_a_summary(retail_csv, tmp_path, capsys):
    assert main(["keygen", "--key", str(tmp_path / "site.key")]) == 0
    code = main(
        [
            "prepare",
            str(retail_csv(CLEANING_ROWS)),
            "--key",
            str(tmp_path / "site.key"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "read 9 rows" in out
    assert "dropped 2 rows: non-product-line (1 customers lost)" in out
    assert "wrote 4 rows of 2 customers" in out


def test_cli_keygen_refuses_to_overwrite_with_one_line(tmp_path, capsys):
    key_path = tmp_path / "site.key"
    assert main(["keygen", "--key", str(key_path)]) == 0
    before = key_path.read_bytes()
    assert main(["keygen", "--key", str(key_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedshop-site: error: key file") and err.count("\n") == 1
    assert key_path.read_bytes() == before


@pytest.mark.slow
def test_cli_prepare_of_bundled_data_leaks_no_raw_customer_id(bundled_data_path, tmp_path):
    """Every output of ``fedshop-site prepare`` is searched for every raw CustomerID."""
    key_path, out = tmp_path / "site.key", tmp_path / "out"
    runs = [
        subprocess.run([FEDSHOP_SITE, *args], capture_output=True, check=True)
        for args in (
            ["keygen", "--key", str(key_path)],
            ["prepare", str(bundled_data_path), "--key", str(key_path), "--out", str(out)],
        )
    ]
    raw = pd.read_csv(bundled_data_path, dtype=str, keep_default_na=False, na_values=[""])
    raw_ids = set(raw["CustomerID"].dropna())
    assert len(raw_ids) == 4372
    written = pq.read_table(out / "orders.parquet").to_pandas()
    assert written["customer"].str.fullmatch("[0-9a-f]{64}").all()
    assert raw_ids.isdisjoint(written["customer"])
    # 27 written stock codes (e.g. 15030) happen to equal customer ids: as item ids they
    # are product codes, not customers, so they are left out of the byte search below
    shared_with_items = raw_ids & set(written["item_id"])
    assert len(shared_with_items) == 27
    searched = {i.encode() for i in raw_ids - shared_with_items}

    def ids_in(content: bytes) -> set[bytes]:
        # a number standing alone: no digit, letter or "." glued before, none after
        numbers = re.findall(rb"(?<![0-9A-Za-z.])([0-9]+)(?:\.0+)?(?![0-9A-Za-z])", content)
        return searched.intersection(numbers)

    outputs = {p.name: p.read_bytes() for p in out.iterdir()}
    outputs |= {f"stdout/stderr {i}": r.stdout + r.stderr for i, r in enumerate(runs)}
    assert sorted(outputs)[:2] == ["ingest_report.json", "orders.parquet"]
    assert b"wrote 399,656 rows" in outputs["stdout/stderr 1"]
    for name, content in outputs.items():
        assert ids_in(content) == set(), name
    # the search does find ids where they are: in the raw export, as "17850" or "17850.0"
    assert len(ids_in(gzip.decompress(bundled_data_path.read_bytes())[:2_000_000])) > 100
    assert ids_in(b"id 17850.0,x\n" + token("17850").encode()) == {b"17850"}


def test_cli_withholds_the_message_of_an_unexpected_error(tmp_path, capsys, monkeypatch):
    def failing_generate_key(path):
        raise ValueError("could not convert '17850' in row 3")

    monkeypatch.setattr("clients.cli.generate_key", failing_generate_key)
    assert main(["keygen", "--key", str(tmp_path / "site.key")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedshop-site: error: internal error ValueError at test_ingest.py:")
    assert "17850" not in err and err.count("\n") == 1
