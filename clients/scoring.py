"""A site's answers from its installed global models: what ``recommend``, ``churn-risk``
and ``serve`` all read.

:func:`load_answers` takes the run in use (:mod:`clients.model_store`: its models allowed
by the site's policy, checksums checked, each model's torch module rebuilt from the bundle
through the registry, :meth:`~models.registry.FederatedModel.facts_from_artefacts` and
``build``, with the weights loaded) and the site's prepared orders, and computes every
customer's answer once (:meth:`~models.registry.FederatedModel.site_scores`). The command
line and the API answer from the same object, so a customer gets the same answer from both.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.model_store import InstalledModels, ModelStoreError, load_installed
from clients.site_data import DATA_PATH, load_orders, locate_site
from common import wire
from models import schema
from models.registry import get_model
from models.site_use import SiteScores, SiteUse


@dataclass(frozen=True)
class SiteAnswers:
    """Every customer's answer of each served model of one installed run."""

    installed: InstalledModels
    scores: dict[str, SiteScores]
    """By the use's resource (``recommendations``, ...)."""
    uses: dict[str, SiteUse]
    """By resource."""
    customers: int
    """Customers in the site's orders."""
    data_end: str
    """The orders' last timestamp (ISO 8601)."""

    def for_use(self, use: SiteUse) -> SiteScores:
        """The answers of ``use``.

        Raises:
            ModelStoreError: the installed run has no model for it.
        """
        if use.resource not in self.scores:
            raise ModelStoreError(
                f"the installed run {self.installed.run!r} has no {use.model} model "
                f"(models: {', '.join(self.installed.weights)})"
            )
        return self.scores[use.resource]

    def model_info(self) -> dict[str, Any]:
        """The run, when the server made it, the site's data, and per model the rounds it
        was trained and the ε (at δ) this site itself spent on it."""
        models = {}
        for name in self.installed.weights:
            spent = self.installed.site_privacy.get(name, {})
            use = get_model(name).site_use
            models[name] = {
                "resource": use.resource if use is not None and use.resource in self.uses else None,
                "rounds": self.installed.entry(name).get(wire.ROUNDS_DONE),
                "epsilon": spent.get(wire.EPSILON),
                "delta": spent.get(wire.DELTA),
                "dp_steps": spent.get(wire.DP_STEPS),
            }
        return {
            "run": self.installed.run,
            "created_at": self.installed.manifest.get(wire.CREATED_AT),
            "customers": self.customers,
            "data_end": self.data_end,
            "models": models,
        }


def load_answers(data_dir: Path, models: Collection[str] | None = None) -> SiteAnswers:
    """Score every customer of the prepared directory ``data_dir`` with its installed run.

    Args:
        data_dir: the site's prepared directory (``orders.parquet``, ``models/``, ledger).
        models: score only these models of the run (default: every one with a site use).

    Raises:
        ModelStoreError: no model installed, its files do not check out, or it cannot
            score these orders.
        clients.site_data.SiteDataError: the prepared orders are missing or unreadable.
    """
    installed = load_installed(data_dir)  # its models allowed by the site's policy, verified
    orders = load_orders(locate_site({DATA_PATH: str(data_dir)}, {}))
    scores, uses = {}, {}
    for name, module in installed.modules.items():
        model = get_model(name)  # imported by load_installed, once allowed
        if model.site_use is None or (models is not None and name not in models):
            continue
        facts = installed.facts[name]
        try:
            scores[model.site_use.resource] = model.site_scores(module, orders, facts)
        except ValueError as error:
            raise ModelStoreError(f"{name}: cannot score {data_dir}'s orders ({error})") from None
        uses[model.site_use.resource] = model.site_use
    data_end = orders[schema.TIMESTAMP].max().isoformat() if len(orders) else ""
    return SiteAnswers(installed, scores, uses, orders[schema.CUSTOMER].nunique(), data_end)
