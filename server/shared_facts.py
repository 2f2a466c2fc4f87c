"""Shared, non-private facts the server decides and sends to every site, per model.

Each model declares the facts its sites must agree on
(:meth:`models.registry.FederatedModel.shared_facts`: the recommender's item catalogue,
the churn cutoff) and where they come from: a value in
the model's run-config table (deployment: ``recommender.catalogue`` names the central
team's catalogue file, ``churn.cutoff`` is a timestamp), or, where that is empty (in
simulation), a derivation from the whole storefront split under ``storefronts-dir``.
This module supplies the model with both: its table's values, and the split's order
lines, read only if the model asks for them, only the columns it asks for, and not kept
(:class:`models.registry.WholeSplit`: at a million customers the whole split is 20M
lines, ~4.5 GiB as one frame, that the ServerApp held for the whole run). Neither is
customer data leaving a site: in simulation every storefront's data is on the
researcher's machine already.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models import schema
from models.registry import FederatedModel
from models.schema import ORDERS_FILE

STOREFRONTS_DIR_KEY = "storefronts-dir"


def shared_facts(run_config: dict[str, Any], model: FederatedModel) -> dict[str, Any]:
    """The facts of ``model`` for this run (see the module docstring).

    Raises:
        ValueError: a declared value is invalid, or a fact is neither declared nor
            derivable (no storefront split in the run config).
    """
    declared = {key: run_config.get(f"{model.name}.{key}", "") for key in model.shared_fact_keys}
    directory = str(run_config.get(STOREFRONTS_DIR_KEY, ""))

    def whole_split(columns: Sequence[str] = schema.COLUMNS) -> pd.DataFrame:
        missing = [f"{model.name}.{key}" for key, value in declared.items() if not value]
        if not directory or not Path(directory).is_dir():
            raise ValueError(
                f"no {', '.join(missing)} in the run config and no storefront split to derive "
                f"it from: set it (deployment) or '{STOREFRONTS_DIR_KEY}' (simulation)"
            )
        return split_columns(directory, columns)

    return model.shared_facts(declared, whole_split)


def split_columns(storefronts_dir: str, columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` of every storefront's order lines of a split, in one frame; string
    columns as categoricals (see :class:`models.registry.WholeSplit`).

    Raises:
        ValueError: a column outside the canonical schema, or no storefront in the split.
    """
    unknown = [column for column in columns if column not in schema.COLUMNS]
    if unknown:
        raise ValueError(f"no column(s) {', '.join(unknown)} in the canonical schema")
    paths = sorted(Path(storefronts_dir).glob(f"*/{ORDERS_FILE}"))
    if not paths:
        raise ValueError(f"{storefronts_dir} holds no storefront ({ORDERS_FILE})")
    strings = [c for c in columns if schema.ARROW_SCHEMA.field(c).type == pa.string()]
    tables = [pq.read_table(path, columns=list(columns), read_dictionary=strings) for path in paths]
    return pa.concat_tables(tables).unify_dictionaries().to_pandas()
