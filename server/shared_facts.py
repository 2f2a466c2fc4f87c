"""Shared, non-private facts the server decides and sends to every site, per model.

Each model declares the facts its sites must agree on
(:meth:`models.registry.FederatedModel.shared_facts`: the recommender's item catalogue,
the churn cutoff) and where they come from: a value in
the model's run-config table (deployment: ``recommender.catalogue`` names the central
team's catalogue file, ``churn.cutoff`` is a timestamp), or, where that is empty (in
simulation), a derivation from the whole storefront split under ``storefronts-dir``.
This module supplies the model with both: its table's values, and the split's order
lines, read only if the model asks for them. Neither is customer data leaving a site: in
simulation every storefront's data is on the researcher's machine already.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
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

    def whole_split() -> pd.DataFrame:
        missing = [f"{model.name}.{key}" for key, value in declared.items() if not value]
        if not directory or not Path(directory).is_dir():
            raise ValueError(
                f"no {', '.join(missing)} in the run config and no storefront split to derive "
                f"it from: set it (deployment) or '{STOREFRONTS_DIR_KEY}' (simulation)"
            )
        return _split_orders(directory)

    return model.shared_facts(declared, whole_split)


@lru_cache(maxsize=2)
def _split_orders(storefronts_dir: str) -> pd.DataFrame:
    """Every storefront's order lines of a split, in one frame (read once per process)."""
    paths = sorted(Path(storefronts_dir).glob(f"*/{ORDERS_FILE}"))
    frames = [pq.read_table(path, columns=list(schema.COLUMNS)).to_pandas() for path in paths]
    if not frames:
        raise ValueError(f"{storefronts_dir} holds no storefront ({ORDERS_FILE})")
    return pd.concat(frames, ignore_index=True)
