"""Storefront splits: which storefront (federated client) each customer belongs to, and
the on-disk split that simulations read.

A customer belongs to exactly one storefront, their *home country* (the country of most
of their rows, as the evaluation protocol defines it:
:func:`models.customers.customer_home_storefront`), and all their rows go
there. Countries with at least ``min_customers`` home customers are storefronts of
their own; the others are merged into one ``"Other"`` storefront. A split on disk is a directory::

    <out>/storefronts.json         index: storefronts, their slugs, files and counts
    <out>/summary.csv              :func:`storefront_summary`
    <out>/<slug>/orders.parquet    one storefront's rows in the canonical schema
    <out>/ingest_report.json       (bundled data only) counts of the ingest
    <out>/simulation.key           (bundled data only) the run's pseudonymisation key

The directory is built under a temporary name next to ``<out>`` and renamed into place
when complete, so a failed run leaves no partial split; an existing split at ``<out>``
is replaced, any other non-empty directory is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clients.ingest import ORDERS_FILE, REPORT_FILE, ingest_table
from models import schema
from models.customers import customer_home_storefront
from models.schema import SUMMARY_FILE
from privacy.pseudonymise import generate_key, load_key
from simulations.progress import SILENT, Progress

BUNDLED_DATA = Path(__file__).resolve().parent / "data" / "online_retail.csv.gz"
"""The bundled UCI Online Retail export (see its README in the shared data folder)."""

DEFAULT_MIN_CUSTOMERS = 20
OTHER = "Other"
"""Name of the storefront that collects countries with too few customers."""

TOTAL = "Total"
"""Label of the all-storefronts row of :func:`storefront_summary`."""

INDEX_FILE = "storefronts.json"
KEY_FILE = "simulation.key"


class StorefrontError(Exception):
    """A split cannot be written where asked; ``str()`` is one line for the user."""


def country_storefronts(homes: pd.Series, min_customers: int) -> pd.Series:
    """Map each home country to its storefront: itself, or ``OTHER`` if it has fewer than
    ``min_customers`` home customers."""
    if min_customers < 1:
        raise ValueError(f"min_customers must be at least 1, got {min_customers}")
    customers = homes.value_counts()
    storefront = customers.index.where(customers >= min_customers, OTHER)
    return pd.Series(storefront, index=customers.index, name=schema.STOREFRONT, dtype="str")


def assign_storefronts(
    frame: pd.DataFrame, min_customers: int = DEFAULT_MIN_CUSTOMERS
) -> pd.DataFrame:
    """Move every customer's rows to their storefront (see module docstring).

    Args:
        frame: order lines in the canonical schema; ``storefront`` holds the country.
        min_customers: fewest home customers a country needs to be its own storefront.

    Returns:
        A copy of ``frame`` whose ``storefront`` column is the customer's storefront.
    """
    return _assign(frame, min_customers)[0]


def _assign(frame: pd.DataFrame, min_customers: int) -> tuple[pd.DataFrame, pd.Series]:
    """:func:`assign_storefronts` and the country -> storefront map it used."""
    homes = customer_home_storefront(frame)
    storefronts = country_storefronts(homes, min_customers)
    assigned = frame.copy()
    assigned[schema.STOREFRONT] = frame[schema.CUSTOMER].map(homes.map(storefronts)).astype("str")
    return assigned, storefronts


def storefront_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per storefront (largest first) and in total: customers, orders, order lines,
    distinct items, and the first and last order date (UTC).

    The ``Total`` row counts distinct values over all storefronts, so its customers equal
    the sum over storefronts when each customer is in one storefront.
    """
    if frame.empty:
        raise ValueError("no order lines to summarise")
    if (frame[schema.STOREFRONT] == TOTAL).any():
        raise ValueError(f"a storefront may not be called {TOTAL!r} (the summary's total row)")
    per_storefront = frame.groupby(schema.STOREFRONT).agg(
        customers=(schema.CUSTOMER, "nunique"),
        orders=(schema.ORDER, "nunique"),
        order_lines=(schema.CUSTOMER, "size"),
        items=(schema.ITEM, "nunique"),
        first=(schema.TIMESTAMP, "min"),
        last=(schema.TIMESTAMP, "max"),
    )
    per_storefront = per_storefront.sort_values("customers", ascending=False, kind="stable")
    total = {
        "customers": frame[schema.CUSTOMER].nunique(),
        "orders": frame[schema.ORDER].nunique(),
        "order_lines": len(frame),
        "items": frame[schema.ITEM].nunique(),
        "first": frame[schema.TIMESTAMP].min(),
        "last": frame[schema.TIMESTAMP].max(),
    }
    summary = pd.concat([per_storefront, pd.DataFrame(total, index=[TOTAL])])
    summary = summary.rename_axis(schema.STOREFRONT).reset_index()
    for end in ("first", "last"):
        summary[f"{end}_date"] = summary.pop(end).dt.strftime("%Y-%m-%d")
    return summary.astype({schema.STOREFRONT: "str"})


def format_summary(summary: pd.DataFrame) -> str:
    """The summary as an aligned plain-text table with thousands separators."""
    shown = summary.copy()
    for column in ("customers", "orders", "order_lines", "items"):
        shown[column] = shown[column].map("{:,}".format)
    return shown.to_string(index=False)


def slugify(name: str) -> str:
    """A directory name for a storefront: ASCII lowercase words joined by ``-``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-") or "storefront"


def prepare_storefronts(
    frame: pd.DataFrame, out_dir: Path, *, metadata: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Write ``frame`` split by its ``storefront`` column as a split directory.

    Args:
        frame: order lines in the canonical schema, storefronts already assigned
            (:func:`assign_storefronts`, or synthetic storefronts).
        out_dir: the split directory (replaced if it holds a previous split).
        metadata: extra JSON-ready entries for ``storefronts.json`` (source, threshold).

    Returns:
        :func:`storefront_summary` of ``frame``.

    Raises:
        StorefrontError: ``out_dir`` exists and is neither empty nor a previous split.
        ValueError: ``frame`` lacks a canonical column or has no rows; nothing is written.
    """
    with _staged_directory(out_dir) as staging:
        return _write_split(frame, staging, metadata or {})


def prepare_bundled_storefronts(
    out_dir: Path,
    *,
    min_customers: int = DEFAULT_MIN_CUSTOMERS,
    key_path: Path | None = None,
    progress: Progress = SILENT,
) -> pd.DataFrame:
    """Ingest the bundled export and write its storefront split to ``out_dir``.

    Args:
        out_dir: the split directory (see module docstring).
        min_customers: fewest home customers a country needs to be its own storefront.
        key_path: pseudonymisation key to use; default: a new key for this run, written
            to ``out_dir/simulation.key`` (mode 0600).
        progress: reports ingest, split and write as steps.

    Returns:
        :func:`storefront_summary` of the split.
    """
    with _staged_directory(out_dir) as staging:
        if key_path is None:
            generate_key(staging / KEY_FILE)
            key = load_key(staging / KEY_FILE)
        else:
            key = load_key(key_path)
        with progress.step(f"ingest {BUNDLED_DATA.name}"):
            frame, report = ingest_table(BUNDLED_DATA, key)
        with progress.step(f"split into storefronts (at least {min_customers} customers)"):
            frame, storefronts = _assign(frame, min_customers)
        (staging / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        metadata = {
            "source": BUNDLED_DATA.name,
            "min_customers": min_customers,
            "countries": storefronts.sort_index().to_dict(),
        }
        with progress.step(f"write the split to {out_dir}"):
            return _write_split(frame, staging, metadata)


def read_split(directory: Path) -> pd.DataFrame:
    """All order lines of a split directory, every storefront's rows under its name.

    Raises:
        StorefrontError: ``directory`` holds no split index.
    """
    index_file = Path(directory) / INDEX_FILE
    if not index_file.is_file():
        raise StorefrontError(f"{directory} is not a storefront split (no {INDEX_FILE})")
    entries = json.loads(index_file.read_text())["storefronts"]
    frames = [pd.read_parquet(Path(directory) / entry["file"]) for entry in entries]
    return pd.concat(frames, ignore_index=True)


def _write_split(frame: pd.DataFrame, directory: Path, metadata: dict[str, Any]) -> pd.DataFrame:
    missing = [column for column in schema.COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"order lines lack canonical column(s) {', '.join(missing)}")
    summary = storefront_summary(frame)
    rows_of = frame.groupby(schema.STOREFRONT).indices
    entries = []
    used: set[str] = set()
    for name in summary[schema.STOREFRONT][summary[schema.STOREFRONT] != TOTAL]:
        slug = base = slugify(name)
        copy = 1
        while slug in used:  # two names with one slug ("EIRE", "Eire") stay apart
            copy += 1
            slug = f"{base}-{copy}"
        used.add(slug)
        rows = frame[list(schema.COLUMNS)].take(rows_of[name])
        table = pa.Table.from_pandas(rows, schema=schema.ARROW_SCHEMA, preserve_index=False)
        (directory / slug).mkdir()
        # Uncompressed like a site's prepared file, so a byte search audits its content.
        pq.write_table(table, directory / slug / ORDERS_FILE, compression="none")
        entries.append({"name": name, "slug": slug, "file": f"{slug}/{ORDERS_FILE}"})
    summary.to_csv(directory / SUMMARY_FILE, index=False)
    records = summary.set_index(schema.STOREFRONT).to_dict(orient="index")
    index = {
        **metadata,
        "storefronts": [{**entry, **records[entry["name"]]} for entry in entries],
        "total": records[TOTAL],
    }
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2, default=int) + "\n")
    return summary


@contextmanager
def _staged_directory(out_dir: Path) -> Iterator[Path]:
    """A fresh directory that replaces ``out_dir`` when the ``with`` block succeeds and
    is removed when it fails."""
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".new"))
    try:
        yield staging
        _check_replaceable(out_dir)
        if out_dir.exists():
            previous = staging.with_suffix(".old")
            os.rename(out_dir, previous)
            os.rename(staging, out_dir)
            shutil.rmtree(previous)
        else:
            os.rename(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_replaceable(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise StorefrontError(f"{out_dir} exists and is not a directory")
    if any(out_dir.iterdir()) and not (out_dir / INDEX_FILE).is_file():
        raise StorefrontError(
            f"{out_dir} is not empty and holds no {INDEX_FILE}; refusing to replace it"
            " (choose a new or empty directory)"
        )
