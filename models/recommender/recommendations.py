"""The recommender at a site: every customer's next-basket list, computed once.

A customer with a purchase history over the catalogue gets the global model's best items
for that history (``source`` :data:`PERSONAL`); a customer the site knows who has no
such history — only returns, or only items outside the catalogue — gets the storefront's
popular items (:data:`STOREFRONT_POPULAR`: most distinct buyers among the site's
customers first, ties in catalogue order, scored by their share of buyers), flagged as
such. Lists are kept :data:`models.site_use.MAX_ITEMS` long (at most the catalogue) and
cut to the ``k`` asked for; the table holds every known customer, by pseudonym.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from models import schema
from models.recommender import SITE_USE
from models.site_use import UNKNOWN_CUSTOMER, NoAnswer, SiteScores

PERSONAL = "personal"
STOREFRONT_POPULAR = "storefront-popular"


class Recommendations(SiteScores):
    """Every known customer's ranked items (see the module docstring).

    Args:
        vocabulary: the catalogue; item index -> item id.
        customers: the customers with a history, in the row order of ``ranked``.
        ranked: ``(customers, L)`` item indices, best first; ``scores`` their scores.
        popular: ``(L,)`` the storefront's most popular item indices; ``popular_scores``
            each one's share of buyers.
        known: every customer of the site's orders (with a history or not).
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        customers: Sequence[str],
        ranked: np.ndarray,
        scores: np.ndarray,
        popular: np.ndarray,
        popular_scores: np.ndarray,
        known: Iterable[str],
    ) -> None:
        self._items = np.asarray(vocabulary, dtype=object)
        # the popular list is the last row: every known customer without a history points there
        self._lists = np.vstack([ranked, popular[None, :]])
        self._scores = np.vstack([scores, popular_scores[None, :]]).astype(np.float64)
        self._personal = len(customers)
        rows = dict.fromkeys(known, self._personal)
        rows.update({customer: row for row, customer in enumerate(customers)})
        self._row = rows

    def answer(self, customer: str, items: int | None = None) -> dict[str, Any]:
        """``{"customer", "source", "items": [{"rank", "item_id", "score"}, ...]}``, the
        first ``items`` (default ``k`` = 10) of the customer's list."""
        row = self._row.get(customer)
        if row is None:
            raise NoAnswer(UNKNOWN_CUSTOMER)
        length = SITE_USE.default_items if items is None else items
        ranked, scores = self._lists[row, :length], self._scores[row, :length]
        return {
            schema.CUSTOMER: customer,
            "source": PERSONAL if row < self._personal else STOREFRONT_POPULAR,
            "items": [
                {"rank": rank, schema.ITEM: self._items[item], "score": float(score)}
                for rank, (item, score) in enumerate(zip(ranked, scores, strict=True), start=1)
            ],
        }

    def table(self, items: int | None = None) -> pd.DataFrame:
        """Rows ``(customer, rank, item_id, score, source)`` for every known customer,
        by customer then rank."""
        length = min(SITE_USE.default_items if items is None else items, self._lists.shape[1])
        customers = sorted(self._row)
        rows = np.array([self._row[customer] for customer in customers], dtype=np.int64)
        ranked = self._lists[rows, :length]
        return pd.DataFrame(
            {
                schema.CUSTOMER: np.repeat(np.asarray(customers, dtype=object), length),
                "rank": np.tile(np.arange(1, length + 1), len(customers)),
                schema.ITEM: self._items[ranked.reshape(-1)],
                "score": self._scores[rows, :length].reshape(-1),
                "source": np.repeat(
                    np.where(rows < self._personal, PERSONAL, STOREFRONT_POPULAR), length
                ),
            }
        )
