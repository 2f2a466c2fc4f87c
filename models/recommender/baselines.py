"""Reference baselines of the next-basket protocol (docs/protocols.md, "Tasks and how they
are judged"): scores over the whole catalogue for each test customer; ranked by
:func:`models.metrics.top_k_items`, which breaks exact ties by catalogue order, i.e. item
code:

- global popularity: distinct training buyers of each item;
- storefront popularity: distinct training buyers among the customers of the test
  customer's home storefront, ties and the rest of the list by global popularity;
- own history: the number of the customer's training invoices that hold the item, ties
  and the rest of the list by global popularity (``tie_break="popularity"``); leaving ties
  in item-code order (``tie_break="item-code"``) shows how much tie-breaking matters.

A tie-break is folded into one exact integer score: primary × (catalogue size + 1) +
global popularity rank score (catalogue size for the most popular item, down to 1).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

from models import metrics, schema
from models.metrics import OUTSIDE_UK, UK
from models.recommender.features import buyer_counts
from models.recommender.protocol import NextBasketSplit


def popularity_rank_scores(split: NextBasketSplit) -> np.ndarray:
    """Global popularity as distinct integers: catalogue size for the item with the most
    training buyers down to 1; equal buyer counts rank in item-code order."""
    buyers = buyer_counts(split.train, split.items)
    order = np.argsort(-buyers, kind="stable")
    scores = np.empty(order.size, dtype=np.int64)
    scores[order] = np.arange(order.size, 0, -1)
    return scores


def global_popularity_scores(split: NextBasketSplit) -> np.ndarray:
    """Test customers × catalogue: every customer gets the global popularity ranking."""
    scores = popularity_rank_scores(split)
    return np.broadcast_to(scores, (len(split.test_customers), scores.size))


def storefront_popularity_scores(split: NextBasketSplit) -> np.ndarray:
    """Test customers × catalogue: buyers in the customer's home storefront, then global."""
    stride = len(split.items) + 1
    home = split.train[schema.CUSTOMER].map(split.home_storefront)
    storefronts = pd.Index(np.unique(split.home_storefront.to_numpy(dtype=str)))
    per_storefront = np.stack(
        [buyer_counts(split.train[(home == name).to_numpy()], split.items) for name in storefronts]
    )
    rows = storefronts.get_indexer(split.test_storefronts())
    return per_storefront[rows] * stride + popularity_rank_scores(split)


def own_history_scores(
    split: NextBasketSplit, tie_break: Literal["popularity", "item-code"] = "popularity"
) -> np.ndarray:
    """Test customers × catalogue: training invoices of the customer holding each item;
    ties and the rest of the list by global popularity, or left in item-code order."""
    invoices = own_invoice_counts(split)
    if tie_break == "item-code":
        return invoices
    if tie_break != "popularity":
        raise ValueError(f"tie_break must be 'popularity' or 'item-code', got {tie_break!r}")
    return invoices * (len(split.items) + 1) + popularity_rank_scores(split)


def own_invoice_counts(split: NextBasketSplit) -> np.ndarray:
    """Test customers × catalogue: how many of the customer's training invoices hold each item."""
    lines = split.train[split.train[schema.CUSTOMER].isin(split.test_customers)]
    pairs = lines.drop_duplicates([schema.CUSTOMER, schema.ORDER, schema.ITEM])
    counts = pairs.groupby([schema.CUSTOMER, schema.ITEM]).size()
    rows = split.test_customers.get_indexer(counts.index.get_level_values(0))
    columns = split.items.get_indexer(counts.index.get_level_values(1))
    matrix = np.zeros((len(split.test_customers), len(split.items)), dtype=np.int64)
    matrix[rows, columns] = counts.to_numpy()
    return matrix


NEXT_BASKET_BASELINES = {
    "global popularity": global_popularity_scores,
    "storefront popularity": storefront_popularity_scores,
    "own history": own_history_scores,
    "own history, item-code ties": lambda split: own_history_scores(split, "item-code"),
}
"""Every next-basket baseline by its report name: split -> test customers × catalogue scores."""


def evaluate_next_basket(split: NextBasketSplit, scores: np.ndarray, k: int = 10) -> pd.DataFrame:
    """HR@k, Recall@k and NDCG@k of a score matrix: overall, over the customers outside
    the United Kingdom (:data:`OUTSIDE_UK`, the storefronts with few customers), and per
    home storefront."""
    top_k = metrics.top_k_items(scores, k)
    per_customer = metrics.ranking_metrics(top_k, split.target_matrix(), k)
    storefronts = split.test_storefronts()
    summary = metrics.summarise_by_group(per_customer, storefronts)
    outside = metrics.summarise_by_group(per_customer, np.where(storefronts == UK, UK, OUTSIDE_UK))
    return pd.concat([summary.iloc[:1], outside.loc[[OUTSIDE_UK]], summary.iloc[1:]])
