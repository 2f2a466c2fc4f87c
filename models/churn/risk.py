"""The churn model at a site: every active customer's churn probability, ranked, with the
features behind it and what each one contributed.

Active customers are the churn protocol's population as of the site's data end date (its
last timestamp): every customer with a purchase invoice up to then; the features are the
protocol's nine (:data:`models.churn.protocol.FEATURES`) at that date. Each feature's
contribution is its share of the customer's churn logit against a typical customer
(:func:`models.churn.feature_contributions`, exact); ``top_features`` names the
:data:`TOP_FEATURES` largest in absolute value, with their signs. The table is ranked by
probability, highest first (ties by pseudonym); an answer is the customer's row.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from models import schema
from models.churn.protocol import FEATURES
from models.site_use import UNKNOWN_CUSTOMER, NoAnswer, SiteScores

TOP_FEATURES = 3
PROBABILITY = "churn_probability"
CONTRIBUTION = "contribution_"
"""Prefix of the column holding a feature's contribution to the churn logit."""
NO_PURCHASE = "no churn risk: the customer has no purchase to score"


def risk_table(
    features: pd.DataFrame,
    probability: np.ndarray,
    contributions: np.ndarray,
    as_of: pd.Timestamp,
) -> pd.DataFrame:
    """The ranked table: ``rank``, ``customer``, ``churn_probability``, ``as_of``, the nine
    features, their contributions (``contribution_<feature>``) and ``top_features``.

    Args:
        features: the protocol's features, indexed by customer token.
        probability: each customer's churn probability, in the order of ``features``.
        contributions: ``(customers, 9)`` contributions to the logit, same order.
        as_of: the date the features are computed at.
    """
    strongest = np.argsort(-np.abs(contributions), axis=1, kind="stable")[:, :TOP_FEATURES]
    top = [
        ", ".join(f"{FEATURES[j]} {contributions[i, j]:+.2f}" for j in row)
        for i, row in enumerate(strongest)
    ]
    table = pd.DataFrame(
        {
            schema.CUSTOMER: features.index.to_numpy(dtype=object),
            PROBABILITY: probability,
            "as_of": as_of.isoformat(),
            **{name: features[name].to_numpy() for name in FEATURES},
            **{CONTRIBUTION + name: contributions[:, j] for j, name in enumerate(FEATURES)},
            "top_features": top,
        }
    )
    table = table.sort_values([PROBABILITY, schema.CUSTOMER], ascending=[False, True])
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)


class ChurnRisk(SiteScores):
    """Every active customer's churn risk (see the module docstring).

    Args:
        table: :func:`risk_table`.
        known: every customer of the site's orders (active or not).
    """

    def __init__(self, table: pd.DataFrame, known: Iterable[str]) -> None:
        self._table = table
        self._rows = {row[schema.CUSTOMER]: row for row in table.to_dict("records")}
        self._known = frozenset(known)

    def answer(self, customer: str, items: int | None = None) -> dict[str, Any]:
        """The customer's row of the table."""
        del items  # one record per customer
        row = self._rows.get(customer)
        if row is None:
            raise NoAnswer(NO_PURCHASE if customer in self._known else UNKNOWN_CUSTOMER)
        return dict(row)

    def table(self, items: int | None = None) -> pd.DataFrame:
        """The ranked table, highest churn probability first."""
        del items
        return self._table
