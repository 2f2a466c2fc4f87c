"""The site's own customer ids beside its pseudonyms, in memory only.

Batch outputs are keyed by pseudonym. A site that wants its own ids beside them names its
export again (``--own-ids EXPORT``): :func:`own_ids` re-reads that export locally, hashes
every id with the site key exactly as ``prepare`` did, and returns pseudonym -> the site's
own id (in canonical form, :mod:`privacy.pseudonymise`). The mapping is never written
anywhere; only the output the user asked for holds the ids.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clients.adapters import ColumnMapping
from clients.errors import IngestError
from clients.table_reader import read_table
from models import schema
from privacy.pseudonymise import canonical_ids, pseudonymise_customers

OWN_ID = "site_customer_id"
"""Column (and answer key) holding the site's own id of a customer."""


def own_ids(
    export: Path, key: bytes, mapping: ColumnMapping, encoding: str | None = None
) -> dict[str, str]:
    """Pseudonym -> the site's own id, for every customer of ``export``.

    Raises:
        IngestError: the export cannot be read, or lacks the mapping's customer column.
    """
    raw, _ = read_table(export, delimiter=mapping.delimiter, encoding=encoding)
    if mapping.customer not in raw.columns:
        raise IngestError(export, "the customer id column is missing", column=mapping.customer)
    try:
        ids = canonical_ids(raw[mapping.customer]).dropna().drop_duplicates()
        tokens = pseudonymise_customers(ids, key)
    except ValueError as error:
        raise IngestError(export, str(error), column=mapping.customer) from None
    return dict(zip(tokens.to_numpy(), ids.to_numpy(), strict=True))


def with_own_ids(table: pd.DataFrame, ids: dict[str, str]) -> pd.DataFrame:
    """``table`` with :data:`OWN_ID` after its ``customer`` column (empty where the export
    does not hold the customer)."""
    mapped = table.copy()
    position = mapped.columns.get_loc(schema.CUSTOMER) + 1
    mapped.insert(position, OWN_ID, mapped[schema.CUSTOMER].map(ids))
    return mapped
