"""Ingest throughput: rows per second through read + validate + pseudonymise + write.

Runs ``clients.ingest`` on the bundled export and on a larger export made of several
copies of it (each copy with its own invoice and customer ids, so nothing collapses as a
duplicate), and compares pseudonymising once per distinct id with one HMAC per row.
Prints a Markdown section for BENCHMARKS.md. Run::

    python -m lab.benchmarks.ingest [--copies 4]
"""

from __future__ import annotations

import argparse
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from cryptography.hazmat.primitives import hashes, hmac

from clients.ingest import ingest_table, write_prepared
from privacy.pseudonymise import canonical_ids, pseudonymise_customers
from simulations.storefronts import BUNDLED_DATA


def main(argv: list[str] | None = None) -> int:
    """Measure and print the Markdown section; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m lab.benchmarks.ingest")
    parser.add_argument("--copies", type=int, default=4, help="copies in the larger export")
    args = parser.parse_args(argv)
    key = secrets.token_bytes(32)

    with tempfile.TemporaryDirectory() as tmp:
        larger = Path(tmp) / "larger.csv"
        _write_copies(BUNDLED_DATA, larger, args.copies)
        results = [
            _measure(
                f"bundled ({BUNDLED_DATA.name}, gzip CSV)", BUNDLED_DATA, key, Path(tmp) / "a"
            ),
            _measure(
                f"bundled x{args.copies}, distinct ids (plain CSV)", larger, key, Path(tmp) / "b"
            ),
        ]
    per_distinct, per_row = _pseudonymisation_times(BUNDLED_DATA, key)

    command = " ".join(["python -m lab.benchmarks.ingest", *(argv or sys.argv[1:])])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "## Ingest throughput",
        "",
        f"Command: `{command}` (2 shared cores; other jobs were running, so compare ratios).",
        "",
        "| input | rows read | rows written | ingest s | write s | total s | rows/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows_read, rows_written, ingest_s, write_s in results:
        total = ingest_s + write_s
        lines.append(
            f"| {name} | {rows_read:,} | {rows_written:,} | {ingest_s:.2f} | {write_s:.2f}"
            f" | {total:.2f} | {rows_read / total:,.0f} |"
        )
    lines += [
        "",
        "Ingest = read, decompress, duplicate removal, HMAC pseudonymisation, validation of",
        "every mapped value, cleaning; write = uncompressed `orders.parquet` + report, fsynced.",
        "",
        f"Pseudonymising the bundled CustomerID column (541,909 rows): once per distinct id"
        f" {per_distinct:.3f} s, one HMAC per row {per_row:.3f} s"
        f" ({per_row / per_distinct:.0f}x slower).",
        "",
        f"Peak resident memory of the benchmark process: {peak_mib:,.0f} MiB.",
    ]
    print("\n".join(lines))
    return 0


def _measure(
    name: str, source: Path, key: bytes, out_dir: Path
) -> tuple[str, int, int, float, float]:
    start = time.perf_counter()
    frame, report = ingest_table(source, key)
    ingested = time.perf_counter()
    write_prepared(frame, report, out_dir)
    written = time.perf_counter()
    return name, report.rows_read, report.rows_written, ingested - start, written - ingested


def _write_copies(source: Path, target: Path, copies: int) -> None:
    """Write ``copies`` copies of ``source`` as one CSV; copy k suffixes its invoice
    numbers with ``-k`` and shifts customer ids by ``k * 100000``."""
    table = pa_csv.read_csv(
        source,
        convert_options=pa_csv.ConvertOptions(
            column_types={"InvoiceNo": pa.string(), "StockCode": pa.string()}
        ),
    ).to_pandas()
    parts = []
    for copy in range(copies):
        part = table.copy()
        part["InvoiceNo"] = part["InvoiceNo"] + f"-{copy}"
        part["CustomerID"] = part["CustomerID"] + copy * 100_000
        parts.append(part)
    pd.concat(parts).to_csv(target, index=False, date_format="%Y-%m-%d %H:%M:%S")


def _pseudonymisation_times(source: Path, key: bytes) -> tuple[float, float]:
    ids = pd.read_csv(source, usecols=["CustomerID"], dtype=str)["CustomerID"]
    start = time.perf_counter()
    pseudonymise_customers(ids, key)
    per_distinct = time.perf_counter() - start

    start = time.perf_counter()
    keyed = hmac.HMAC(key, hashes.SHA256())
    for canonical in canonical_ids(ids).dropna():
        mac = keyed.copy()
        mac.update(canonical.encode())
        mac.finalize()
    per_row = time.perf_counter() - start
    return per_distinct, per_row


if __name__ == "__main__":
    sys.exit(main())
