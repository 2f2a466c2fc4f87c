"""Bad exports stop with one line naming file, column and row, and leave no output behind."""

from __future__ import annotations

import dataclasses
import gzip
import os
import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from clients.ingest import ADAPTERS, IngestError, ingest_table, prepare_export
from clients.table_reader import read_table
from privacy.pseudonymise import generate_key
from tests.conftest import RETAIL_HEADER, RETAIL_ROWS

KEY = bytes(range(32))
FEDSHOP_SITE = str(Path(sys.executable).with_name("fedshop-site"))
ROW_1, ROW_2, ROW_3 = RETAIL_ROWS  # customers 17850, 17850, 12583
PNG_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def with_field(row: str, index: int, value: str) -> str:
    fields = row.split(",")
    fields[index] = value
    return ",".join(fields)


def text_file(content: str | bytes):
    def build(tmp_path: Path, retail_csv) -> Path:
        path = tmp_path / "export.csv"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return build


def rows_file(*rows: str, header: str = RETAIL_HEADER):
    return lambda tmp_path, retail_csv: retail_csv(list(rows), header=header)


def binary_garbage(tmp_path: Path, retail_csv) -> Path:
    path = tmp_path / "export.csv"
    path.write_bytes(random.Random(7).randbytes(4096))
    return path


def non_utf8_file(tmp_path: Path, retail_csv) -> Path:
    latin1_row = with_field(ROW_2, 2, "CAFÉ AU LAIT BOWL")
    path = tmp_path / "export.csv"
    path.write_bytes("\n".join([RETAIL_HEADER, ROW_1, latin1_row]).encode("latin-1") + b"\n")
    return path


def truncated_gzip(tmp_path: Path, retail_csv) -> Path:
    path = tmp_path / "export.csv.gz"
    data = gzip.compress(retail_csv().read_bytes() * 50)
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_gzip(tmp_path: Path, retail_csv) -> Path:
    path = tmp_path / "export.csv.gz"
    data = bytearray(gzip.compress(retail_csv().read_bytes()))
    data[-6] ^= 0xFF  # breaks the CRC/length trailer
    path.write_bytes(bytes(data))
    return path


def symlink_to(target: Path | None):
    def build(tmp_path: Path, retail_csv) -> Path:
        real = target
        if real is None:
            real = tmp_path / "logo.png"
            real.write_bytes(PNG_BYTES)
        link = tmp_path / "export.csv"
        link.symlink_to(real)
        return link

    return build


def huge_field(tmp_path: Path, retail_csv) -> Path:
    return retail_csv([ROW_1, with_field(ROW_2, 2, "x" * 10_000_000), ROW_3])


def fifo(tmp_path: Path, retail_csv) -> Path:
    path = tmp_path / "export.csv"
    os.mkfifo(path)  # reading it would block forever
    return path


def directory(tmp_path: Path, retail_csv) -> Path:
    path = tmp_path / "export.csv"
    path.mkdir()
    return path


def missing_file(tmp_path: Path, retail_csv) -> Path:
    return tmp_path / "export.csv"


def broken_parquet(tmp_path: Path, retail_csv) -> Path:
    path = tmp_path / "export.parquet"
    path.write_bytes(b"PAR1" + bytes(200) + b"PAR1")
    return path


HEADER_WITHOUT_CUSTOMER = RETAIL_HEADER.replace(",CustomerID", "")
ROW_WITHOUT_CUSTOMER = ROW_1.replace(",17850", "")

# (case id, file builder, column, row, message fragment)
CASES = [
    ("empty-file", text_file(""), None, None, "the file is empty"),
    ("blank-lines-only", text_file("\n \n\n"), None, None, "the file is empty"),
    ("bom-only", text_file(b"\xef\xbb\xbf\n"), None, None, "the file is empty"),
    ("header-only", text_file(RETAIL_HEADER + "\n"), None, None, "no data rows"),
    (
        "missing-required-column",
        rows_file(ROW_WITHOUT_CUSTOMER, header=HEADER_WITHOUT_CUSTOMER),
        "CustomerID",
        None,
        "required column (the customer) is missing",
    ),
    (
        "non-numeric-quantity",
        rows_file(ROW_1, with_field(ROW_2, 3, "six"), ROW_3),
        "Quantity",
        2,
        "not a number",
    ),
    (
        "fractional-quantity",
        rows_file(ROW_1, ROW_2, with_field(ROW_3, 3, "1.5")),
        "Quantity",
        3,
        "not a whole number",
    ),
    (
        "unparseable-date",
        rows_file(ROW_1, ROW_2, with_field(ROW_3, 4, "2011-13-01 10:00:00")),
        "InvoiceDate",
        3,
        "not a timestamp in the format '%Y-%m-%d %H:%M:%S'",
    ),
    (
        "missing-date",
        rows_file(with_field(ROW_1, 4, ""), ROW_2),
        "InvoiceDate",
        1,
        "the timestamp is missing",
    ),
    ("missing-order", rows_file(ROW_1, with_field(ROW_2, 0, "")), "InvoiceNo", 2, "missing"),
    ("binary-garbage", binary_garbage, None, None, "binary data"),
    (
        "nul-byte-in-a-row",
        rows_file(ROW_1, ROW_2.replace("WHITE", "WH\0ITE")),
        "Description",
        2,
        "binary data (a NUL byte)",
    ),
    (
        "utf16-without-encoding",
        text_file(f"{RETAIL_HEADER}\n{ROW_1}\n".encode("utf-16")),
        None,
        None,
        "if it is UTF-16 text, pass --encoding utf-16",
    ),
    ("non-utf8-bytes", non_utf8_file, "Description", 2, "not UTF-8 text; pass --encoding"),
    (
        "wrong-delimiter",
        text_file("\n".join(r.replace(",", ":") for r in (RETAIL_HEADER, ROW_1)) + "\n"),
        None,
        None,
        "yields a single column",
    ),
    (
        "duplicate-column-names",
        rows_file(ROW_1 + ",7", header=RETAIL_HEADER + ",Quantity"),
        "Quantity",
        None,
        "names this column twice",
    ),
    ("truncated-gzip", truncated_gzip, None, None, "gzip data is truncated"),
    ("corrupt-gzip", corrupt_gzip, None, None, "gzip data is corrupt"),
    (
        "row-with-extra-field",
        rows_file(ROW_1, ROW_2 + ",extra", ROW_3),
        None,
        2,
        "the row has 9 fields but the header has 8",
    ),
    (
        "row-with-missing-field",
        rows_file(ROW_1, ROW_2, ROW_3.rsplit(",", 1)[0]),
        "Country",
        3,
        "the row has 7 fields but the header has 8",
    ),
    (
        "unbalanced-quote",
        rows_file(ROW_1, ROW_2.replace("WHITE", '"WHITE'), ROW_3),
        "Quantity",
        2,
        "the row has 3 fields but the header has 8",
    ),
    (
        "unbalanced-quote-swallowing-megabytes",
        rows_file(ROW_1, ROW_2.replace("WHITE", '"WHITE'), *[ROW_3] * 100_000),
        None,
        None,
        "a quoted value runs past 1 MiB (unbalanced quote?)",
    ),
    ("infinite-price", rows_file(ROW_1, with_field(ROW_2, 5, "inf")), "UnitPrice", 2, "finite"),
    ("nan-price", rows_file(with_field(ROW_1, 5, "NaN"), ROW_2), "UnitPrice", 1, "finite"),
    ("missing-price", rows_file(ROW_1, ROW_2, with_field(ROW_3, 5, "")), "UnitPrice", 3, "missing"),
    (
        "decimal-comma-price",
        text_file(
            "\n".join(
                r.replace(",", ";") for r in (RETAIL_HEADER, ROW_1, with_field(ROW_2, 5, "3|39"))
            ).replace("3|39", "3,39")
        ),
        "UnitPrice",
        2,
        "not a number (the decimal separator is '.')",
    ),
    ("symlink-to-passwd", symlink_to(Path("/etc/passwd")), None, None, "single column"),
    ("symlink-to-png", symlink_to(None), None, None, "the file is a PNG image"),
    ("huge-field", huge_field, "Description", 2, "longer than 1 MiB"),
    ("fifo", fifo, None, None, "not a regular file"),
    ("directory", directory, None, None, "not a regular file"),
    ("missing-file", missing_file, None, None, "no such file"),
    ("broken-parquet", broken_parquet, None, None, "not a readable Parquet file"),
    (
        "excel-workbook",
        text_file(b"PK\x03\x04" + bytes(100)),
        None,
        None,
        "a ZIP archive (an .xlsx workbook? export it as CSV)",
    ),
]


@pytest.mark.parametrize(
    ("build", "column", "row", "fragment"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_export_stops_with_one_line_and_leaves_no_output(
    tmp_path, retail_csv, build, column, row, fragment
):
    source = build(tmp_path, retail_csv)
    generate_key(tmp_path / "site.key")
    out = tmp_path / "prepared"
    with pytest.raises(IngestError) as caught:
        prepare_export(source, out, tmp_path / "site.key")
    error = caught.value
    message = str(error)
    assert (error.path, error.column, error.row) == (source, column, row)
    assert fragment in message
    assert "\n" not in message
    assert message.startswith(str(source))
    if column is not None:
        assert f"column {column!r}" in message
    if row is not None:
        assert f"row {row}" in message
    assert "17850" not in message and "12583" not in message  # no raw customer id
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_declared_delimiter_that_yields_one_column_is_refused(retail_csv):
    mapping = dataclasses.replace(ADAPTERS["online-retail"], delimiter=";")
    with pytest.raises(IngestError, match="semicolon delimiter yields a single column"):
        ingest_table(retail_csv(), KEY, mapping=mapping)


def test_non_utf8_export_is_accepted_with_its_encoding(tmp_path, retail_csv):
    frame, report = ingest_table(non_utf8_file(tmp_path, retail_csv), KEY, encoding="latin-1")
    assert (report.rows_read, len(frame)) == (2, 2)


def test_utf16_export_is_accepted_with_its_encoding(tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes("\n".join([RETAIL_HEADER, *RETAIL_ROWS]).encode("utf-16"))
    frame, _ = ingest_table(path, KEY, encoding="utf-16")
    assert len(frame) == 3


def test_unknown_encoding_is_refused(retail_csv):
    with pytest.raises(IngestError, match="unknown text encoding 'klingon'"):
        ingest_table(retail_csv(), KEY, encoding="klingon")


def test_dates_after_now_are_refused(retail_csv):
    now = datetime(2011, 1, 1, tzinfo=UTC)
    with pytest.raises(IngestError) as caught:
        ingest_table(retail_csv(), KEY, now=now)
    assert (caught.value.column, caught.value.row) == ("InvoiceDate", 3)
    assert "in the future (after 2011-01-01T00:00:00+00:00)" in str(caught.value)


def test_customer_id_column_of_infinities_is_refused_without_echo(tmp_path, retail_csv):
    table = pd.read_csv(retail_csv(), dtype={"InvoiceNo": str, "StockCode": str})
    table["CustomerID"] = [17850.0, float("inf"), 12583.0]
    path = tmp_path / "export.parquet"
    table.to_parquet(path)
    with pytest.raises(IngestError) as caught:
        ingest_table(path, KEY)
    assert caught.value.column == "CustomerID"
    assert "17850" not in str(caught.value)


def run_site(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDSHOP_SITE, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("case_id", "expected"),
    [
        ("empty-file", "the file is empty"),
        ("non-numeric-quantity", "column 'Quantity', row 2: not a number"),
        ("symlink-to-passwd", "yields a single column"),
        ("huge-field", "column 'Description', row 2: a row is longer than 1 MiB"),
        ("non-utf8-bytes", "column 'Description', row 2: bytes that are not UTF-8"),
    ],
)
def test_cli_reports_bad_input_in_one_line_without_traceback(
    tmp_path, retail_csv, case_id, expected
):
    build = next(case[1] for case in CASES if case[0] == case_id)
    source = build(tmp_path, retail_csv)
    generate_key(tmp_path / "site.key")
    out = tmp_path / "prepared"
    result = run_site(
        "prepare", str(source), "--key", str(tmp_path / "site.key"), "--out", str(out)
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"fedshop-site: error: {source}")
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()


def test_cli_accepts_non_utf8_with_encoding_and_refuses_a_bad_key(tmp_path, retail_csv):
    source = non_utf8_file(tmp_path, retail_csv)
    key = tmp_path / "site.key"
    key.write_bytes(KEY)
    key.chmod(0o644)
    refused = run_site("prepare", str(source), "--key", str(key), "--out", str(tmp_path / "o"))
    assert refused.returncode == 2
    assert refused.stderr == (
        f"fedshop-site: error: key file {key} is accessible by group or others (mode 0644);"
        f" run `chmod 600 {key}`\n"
    )
    key.chmod(0o600)
    args = ["prepare", str(source), "--key", str(key), "--out", str(tmp_path / "o")]
    accepted = run_site(*args, "--encoding", "latin-1")
    assert accepted.returncode == 0, accepted.stderr
    assert "wrote 2 rows of 1 customers" in accepted.stdout
    assert (tmp_path / "o" / "orders.parquet").is_file()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("with_nul", [True, False], ids=["any-bytes", "no-nul-byte"])
def test_random_bytes_are_named_binary_data_without_a_made_up_row_or_column(
    tmp_path, seed, with_nul
):
    rng = random.Random(seed)
    data = rng.randbytes(3000) if with_nul else bytes(rng.randrange(1, 256) for _ in range(3000))
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    with pytest.raises(IngestError) as raised:
        read_table(path)
    assert "not a CSV or Parquet table" in str(raised.value)
    assert str(raised.value).startswith(f"{path}: ")  # the file, and no garbage "column"
    assert raised.value.row is None and raised.value.column is None
