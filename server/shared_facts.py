"""Shared, non-private facts the server decides and sends to every site.

Two facts make sites' work comparable and their models compatible; neither is customer
data, and both come from the run config:

- the **item catalogue** the recommender ranks (every site builds its network over the
  same item positions): ``catalogue``, a text file on the server with one item id per
  line (deployment); otherwise, in simulation, the next-basket protocol's catalogue over
  the whole storefront split under ``storefronts-dir``: the sorted distinct item ids of
  all cleaned purchase lines (:func:`models.nextbasket_protocol.clean_purchases`), as
  the centralized protocol ranks them;
- the **churn cutoff** (DESIGN.md: last timestamp − 90 days, one date for all sites, so
  labels mean the same everywhere): ``churn-cutoff``, an ISO-8601 timestamp
  (deployment); otherwise, in simulation, the last timestamp over the whole split minus
  the protocol's horizon (:func:`models.churn_protocol.churn_cutoff`). A site's own last
  timestamp would move the cutoff at small storefronts and change their labels.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from clients.ingest import ORDERS_FILE
from models import schema
from models.churn_protocol import churn_cutoff
from models.nextbasket_protocol import clean_purchases

CATALOGUE_FILE_KEY = "catalogue"
CHURN_CUTOFF_KEY = "churn-cutoff"
STOREFRONTS_DIR_KEY = "storefronts-dir"


def catalogue_items(run_config: dict[str, Any]) -> list[str]:
    """The catalogue named by the run config (see the module docstring).

    Raises:
        ValueError: neither key names a readable catalogue, or it is empty.
    """
    return list(
        _catalogue(
            str(run_config.get(CATALOGUE_FILE_KEY, "")),
            str(run_config.get(STOREFRONTS_DIR_KEY, "")),
        )
    )


def churn_cutoff_for(run_config: dict[str, Any]) -> str:
    """The churn cutoff (ISO-8601, UTC) named by the run config (see the module docstring).

    Raises:
        ValueError: the timestamp does not parse, or neither key gives a cutoff.
    """
    declared = str(run_config.get(CHURN_CUTOFF_KEY, "")).strip()
    if declared:
        try:
            cutoff = pd.Timestamp(declared)
        except ValueError:
            raise ValueError(
                f"run config '{CHURN_CUTOFF_KEY}': {declared!r} is not an ISO-8601 timestamp"
            ) from None
        cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
        return cutoff.isoformat()
    return _simulated_churn_cutoff(_storefronts_dir(run_config, CHURN_CUTOFF_KEY))


@lru_cache(maxsize=4)
def _catalogue(catalogue_file: str, storefronts_dir: str) -> tuple[str, ...]:
    if catalogue_file:
        lines = Path(catalogue_file).read_text(encoding="utf-8").splitlines()
        items = [line.strip() for line in lines if line.strip()]
        if len(set(items)) != len(items):
            raise ValueError(f"{catalogue_file}: the catalogue lists an item id twice")
    else:
        directory = _storefronts_dir({STOREFRONTS_DIR_KEY: storefronts_dir}, CATALOGUE_FILE_KEY)
        found: set[str] = set()
        for orders in _split_orders(directory):
            found.update(np.unique(clean_purchases(orders)[schema.ITEM].to_numpy(dtype=str)))
        items = sorted(found)
    if not items:
        raise ValueError("the item catalogue is empty")
    return tuple(items)


@lru_cache(maxsize=4)
def _simulated_churn_cutoff(storefronts_dir: str) -> str:
    whole_split = pd.concat(list(_split_orders(storefronts_dir)), ignore_index=True)
    return churn_cutoff(whole_split).isoformat()


def _storefronts_dir(run_config: dict[str, Any], fact_key: str) -> str:
    directory = str(run_config.get(STOREFRONTS_DIR_KEY, ""))
    if not directory or not Path(directory).is_dir():
        raise ValueError(
            f"no '{fact_key}' in the run config and no storefront split to derive it from: "
            f"set '{fact_key}' (deployment) or '{STOREFRONTS_DIR_KEY}' (simulation)"
        )
    return directory


def _split_orders(storefronts_dir: str) -> list[pd.DataFrame]:
    paths = sorted(Path(storefronts_dir).glob(f"*/{ORDERS_FILE}"))
    return [pq.read_table(path, columns=list(schema.COLUMNS)).to_pandas() for path in paths]
