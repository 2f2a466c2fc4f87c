"""The item catalogue the recommender ranks, as the server decides and sends it.

The catalogue is product data, not customer data: the central team publishes it and every
site builds its recommender over the same item positions. It comes from the run config:

- ``catalogue``: a text file on the server, one item id per line (deployment);
- otherwise, in simulation, the next-basket protocol's catalogue over the whole storefront
  split under ``storefronts-dir``: the sorted distinct item ids of all cleaned purchase
  lines (:func:`models.nextbasket_protocol.clean_purchases`), as the centralized
  protocol ranks them.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from clients.ingest import ORDERS_FILE
from models import schema
from models.nextbasket_protocol import clean_purchases

CATALOGUE_FILE_KEY = "catalogue"
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


@lru_cache(maxsize=4)
def _catalogue(catalogue_file: str, storefronts_dir: str) -> tuple[str, ...]:
    if catalogue_file:
        lines = Path(catalogue_file).read_text(encoding="utf-8").splitlines()
        items = [line.strip() for line in lines if line.strip()]
        if len(set(items)) != len(items):
            raise ValueError(f"{catalogue_file}: the catalogue lists an item id twice")
    elif storefronts_dir and Path(storefronts_dir).is_dir():
        found: set[str] = set()
        for path in sorted(Path(storefronts_dir).glob(f"*/{ORDERS_FILE}")):
            orders = pq.read_table(path, columns=list(schema.COLUMNS)).to_pandas()
            found.update(np.unique(clean_purchases(orders)[schema.ITEM].to_numpy(dtype=str)))
        items = sorted(found)
    else:
        raise ValueError(
            f"the recommender needs an item catalogue: set run config '{CATALOGUE_FILE_KEY}' "
            f"(one item id per line) or '{STOREFRONTS_DIR_KEY}' (simulation)"
        )
    if not items:
        raise ValueError("the item catalogue is empty")
    return tuple(items)
