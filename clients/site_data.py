"""Where a site's data and privacy ledger live, and loading its prepared order lines.

Deployment: the SuperNode is started with ``--node-config "data-path='<dir>'"`` (see
:mod:`clients.join`); ``<dir>/orders.parquet`` is the site's prepared export and the
privacy ledger lives next to it, so it outlives runs and restarts: the budget is the
site's, not the run's.

Simulation (``partition-id`` in the node config, set by Flower): partition ``i`` is the
``i``-th storefront directory, in sorted name order, of the run config's
``storefronts-dir`` (a split written by :mod:`simulations.storefronts`). A simulated
site's ledger lives in ``<run-dir>/sites/<slug>/``: it survives a server restart that
resumes the run, and a new run (say, another ε of a sweep) starts with a fresh budget
instead of inheriting the spent budget of the previous one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from models import schema
from models.schema import ORDERS_FILE

DATA_PATH = "data-path"
STOREFRONT_NAME = "storefront"
AUDIT_DIR = "audit-dir"
"""Node-config key (deployment) or run-config key (simulation) of the site's audit copy
of everything it sends (:mod:`clients.audit`)."""
PARTITION_ID = "partition-id"
STOREFRONTS_DIR = "storefronts-dir"
RUN_DIR = "run-dir"
SIMULATED_SITES = "sites"


class SiteDataError(RuntimeError):
    """The site's data cannot be found or read; ``str()`` names the path."""

    def __init__(self, message: str, storefront: str = "unknown storefront") -> None:
        super().__init__(message)
        self.storefront = storefront
        """The storefront, as far as it is known without the data."""


@dataclass(frozen=True)
class SiteLocation:
    """Where one site reads its orders and keeps its privacy ledger."""

    orders_file: Path
    ledger_dir: Path
    storefront: str | None
    """The storefront name from the node config, if given (else taken from the data)."""
    simulated: bool


def locate_site(node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> SiteLocation:
    """Find this node's data from its node config (deployment) or partition id (simulation).

    Raises:
        SiteDataError: no ``data-path`` nor ``partition-id``, or the partition has no
            storefront directory.
    """
    if DATA_PATH in node_config:
        data_path = Path(str(node_config[DATA_PATH]))
        storefront = node_config.get(STOREFRONT_NAME)
        return SiteLocation(
            data_path / ORDERS_FILE, data_path, str(storefront) if storefront else None, False
        )
    if PARTITION_ID not in node_config:
        raise SiteDataError(
            f"node config has neither '{DATA_PATH}' (deployment) nor '{PARTITION_ID}' "
            f"(simulation): start the SuperNode with --node-config \"{DATA_PATH}='<dir>'\""
        )
    storefronts_dir = Path(str(run_config.get(STOREFRONTS_DIR, "")))
    if not str(run_config.get(STOREFRONTS_DIR, "")) or not storefronts_dir.is_dir():
        raise SiteDataError(
            f"simulation needs run config '{STOREFRONTS_DIR}' to name a storefront split "
            f"directory, got {str(storefronts_dir)!r}"
        )
    slugs = storefront_slugs(storefronts_dir)
    partition = int(node_config[PARTITION_ID])
    if not 0 <= partition < len(slugs):
        raise SiteDataError(
            f"partition {partition} has no storefront: {storefronts_dir} holds {len(slugs)} "
            "storefront directories; run the simulation with at most that many SuperNodes"
        )
    slug = slugs[partition]
    run_dir = Path(str(run_config.get(RUN_DIR, "runs/latest")))
    return SiteLocation(
        storefronts_dir / slug / ORDERS_FILE, run_dir / SIMULATED_SITES / slug, None, True
    )


def storefront_slugs(storefronts_dir: Path) -> list[str]:
    """The storefront directories of a split, in the order simulated partitions use."""
    return sorted(p.name for p in Path(storefronts_dir).iterdir() if (p / ORDERS_FILE).is_file())


def load_orders(location: SiteLocation, columns: Sequence[str] = schema.COLUMNS) -> pd.DataFrame:
    """The site's prepared order lines in the canonical schema (or only ``columns``).

    Raises:
        SiteDataError: the file is missing, unreadable or lacks canonical columns.
    """
    path = location.orders_file
    known = location.storefront or path.parent.name
    if not path.is_file():
        raise SiteDataError(f"{path}: prepared orders not found; run 'fedshop-site prepare'", known)
    try:
        frame = pq.read_table(path, columns=list(columns)).to_pandas()
    except (OSError, KeyError, ValueError) as err:
        raise SiteDataError(f"{path}: cannot read prepared orders ({err})", known) from err
    return frame


def storefront_of(location: SiteLocation, orders: pd.DataFrame) -> str:
    """The site's storefront name: node config first, else the data's most common value."""
    if location.storefront:
        return location.storefront
    if orders.empty:
        return location.orders_file.parent.name
    return str(orders[schema.STOREFRONT].mode().iloc[0])
