"""The privacy policies of simulated sites, set by the researcher who runs them all.

In deployment each storefront sets its own policy (``fedshop-site policy``). In a
simulation the researcher plays every storefront: ``fedshop-sim run --site-policy
KEY=VALUE`` writes the same policy, the defaults changed by those settings, into every
simulated site's ledger (``<run-dir>/sites/<slug>/``) before the run, recorded as set by
the simulation. Without settings the simulated sites keep the defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from clients.site_data import SIMULATED_SITES, storefront_slugs
from clients.site_privacy import changed_policy
from privacy.ledger import LEDGER_FILE, PrivacyLedger
from privacy.policy import SitePolicy


def apply_site_policy(
    storefronts_dir: Path, run_dir: Path, settings: Sequence[str], *, set_by: str
) -> SitePolicy | None:
    """Write the default policy changed by ``settings`` (``KEY=VALUE``, as for
    ``fedshop-site policy --set``) into every simulated site's ledger; the policy, or
    ``None`` when there are no settings (nothing is written).

    Raises:
        clients.site_privacy.PolicyCommandError: a setting is malformed or invalid.
    """
    if not settings:
        return None
    policy = changed_policy(SitePolicy(), list(settings))
    for slug in storefront_slugs(storefronts_dir):
        path = Path(run_dir) / SIMULATED_SITES / slug / LEDGER_FILE
        with PrivacyLedger(path) as ledger:
            if ledger.policy() != policy:
                ledger.set_policy(policy, set_by=set_by, reason=f"simulated site: {settings}")
    return policy
