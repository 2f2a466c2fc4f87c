"""The privacy policies of simulated sites, set by the researcher who runs them all.

In deployment each storefront sets its own policy: ``fedshop-site prepare`` writes the
defaults for its export (:func:`clients.site_privacy.default_policy`: δ fixed from its
size, its facts' bounds from its export's dates) and ``fedshop-site policy`` changes them.
In a simulation the researcher plays every storefront: :func:`apply_site_policy` writes
into every simulated site's ledger (``<run-dir>/sites/<slug>/``), before the run, the
policy its prepare would write — δ from that storefront's customers — with the whole
split's period as its export period (one export of the federation, so the shared cutoff
the simulation derives from it lies inside every site's window), changed by the run's
``--site-policy KEY=VALUE`` settings, recorded as set by the simulation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from clients.site_data import SIMULATED_SITES, storefront_slugs
from clients.site_privacy import changed_policy, default_policy
from models import schema
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from privacy.policy import from_settings


def apply_site_policy(
    storefronts_dir: Path, run_dir: Path, settings: Sequence[str], *, set_by: str
) -> None:
    """Write every simulated site's policy (see the module docstring) into its ledger,
    unless it already holds that policy.

    Raises:
        clients.site_privacy.PolicyCommandError: a setting is malformed or invalid.
    """
    columns = [schema.CUSTOMER, schema.TIMESTAMP]
    slugs = storefront_slugs(storefronts_dir)
    orders = {slug: _orders(storefronts_dir, slug, columns) for slug in slugs}
    period = pd.concat([frame[[schema.TIMESTAMP]] for frame in orders.values()], ignore_index=True)
    split_bounds = default_policy(period.assign(**{schema.CUSTOMER: "all"})).fact_bounds
    for slug in slugs:
        own = default_policy(orders[slug])
        policy = changed_policy(from_settings(own, {"fact_bounds": split_bounds}), list(settings))
        path = Path(run_dir) / SIMULATED_SITES / slug / LEDGER_FILE
        with PrivacyLedger(path) as ledger:
            if ledger.policy() != policy:
                reason = f"simulated site: {list(settings)}" if settings else "simulated site"
                ledger.set_policy(policy, set_by=set_by, reason=reason)


def _orders(storefronts_dir: Path, slug: str, columns: list[str]) -> pd.DataFrame:
    return pd.read_parquet(Path(storefronts_dir) / slug / schema.ORDERS_FILE, columns=columns)
