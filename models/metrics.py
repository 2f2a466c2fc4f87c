"""Evaluation metrics of the two fixed protocols in docs/protocols.md.

Next-basket ranking, per test customer, from a ranked top-k item matrix and the target
baskets as a boolean customers × catalogue matrix:

- HR@k: 1 if at least one of the top k items is in the basket;
- Recall@k: hits / min(|basket|, k);
- NDCG@k: binary gains, DCG = Σ_r hit_r / log2(r + 1) over ranks r = 1..k, divided by the
  ideal DCG of min(|basket|, k) hits at the top (Järvelin & Kekäläinen, 2002).

Results are means over customers, overall and per storefront (:func:`summarise_by_group`).

Churn: ROC-AUC, PR-AUC (average precision) and the Brier score over all held-out
customers. A federated server never sees per-customer scores, so a site sends a
histogram of its scores per label (:func:`binned_score_counts`) and the server computes
the pooled AUC from the summed histograms (:func:`auc_from_binned_counts`); two scores in
the same bin count as a tie, so the error is at most half the share of positive-negative
pairs that share a bin.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

OVERALL = "overall"
"""Label of the all-customers row of :func:`summarise_by_group`."""
UK = "United Kingdom"
OUTSIDE_UK = "outside United Kingdom"
"""The group the protocols report beside the overall row on the bundled data: every
customer outside the United Kingdom (the storefronts with few customers)."""
CUSTOMERS = "customers"
"""The column of a metrics table counting each group's test customers."""

DEFAULT_SCORE_BINS = 1000
"""Equal-width score bins on [0, 1] a site reports for the pooled churn AUC."""


def top_k_items(scores: np.ndarray, k: int) -> np.ndarray:
    """The k highest-scoring item columns of each row, best first.

    Ties go to the lower column index, so a ranking is reproducible for any scores.

    Args:
        scores: customers × catalogue matrix of item scores.
        k: list length.

    Returns:
        customers × k int64 matrix of column indices.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2 or not 0 < k <= scores.shape[1]:
        raise ValueError(f"need a 2-D score matrix with at least k={k} columns, got {scores.shape}")
    return np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int64)


def hit_matrix(top_k: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Boolean customers × k matrix: is the item at each rank in the customer's basket?"""
    top_k = np.asarray(top_k, dtype=np.int64)
    targets = np.asarray(targets, dtype=bool)
    if top_k.ndim != 2 or targets.ndim != 2 or top_k.shape[0] != targets.shape[0]:
        raise ValueError(
            f"top_k {top_k.shape} and targets {targets.shape} must be 2-D with one row per customer"
        )
    if top_k.size and (top_k.min() < 0 or top_k.max() >= targets.shape[1]):
        raise ValueError(f"top_k holds item indices outside the catalogue of {targets.shape[1]}")
    return np.take_along_axis(targets, top_k, axis=1)


def hit_rate_at_k(top_k: np.ndarray, targets: np.ndarray, k: int = 10) -> np.ndarray:
    """Per customer: 1.0 if any of the first k ranked items is in the basket, else 0.0."""
    return hit_matrix(_first(top_k, k), targets).any(axis=1).astype(np.float64)


def recall_at_k(top_k: np.ndarray, targets: np.ndarray, k: int = 10) -> np.ndarray:
    """Per customer: hits among the first k ranked items / min(|basket|, k)."""
    hits = hit_matrix(_first(top_k, k), targets).sum(axis=1)
    return hits / _relevant(targets, k)


def ndcg_at_k(top_k: np.ndarray, targets: np.ndarray, k: int = 10) -> np.ndarray:
    """Per customer: DCG of the first k ranked items with binary gains / ideal DCG, where
    the ideal puts min(|basket|, k) hits at the top."""
    hits = hit_matrix(_first(top_k, k), targets)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.cumsum(discounts)[_relevant(targets, k) - 1]
    return (hits * discounts).sum(axis=1) / ideal


def ranking_metrics(top_k: np.ndarray, targets: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """``hr@k``, ``recall@k`` and ``ndcg@k`` per customer (the names federated reports use)."""
    return {
        f"hr@{k}": hit_rate_at_k(top_k, targets, k),
        f"recall@{k}": recall_at_k(top_k, targets, k),
        f"ndcg@{k}": ndcg_at_k(top_k, targets, k),
    }


def summarise_by_group(per_customer: Mapping[str, np.ndarray], groups: np.ndarray) -> pd.DataFrame:
    """Means of per-customer metrics overall and per group (storefront).

    Args:
        per_customer: metric name -> one value per customer (e.g. :func:`ranking_metrics`).
        groups: each customer's group, same order.

    Returns:
        One row per group (most customers first, then by name) after the
        :data:`OVERALL` row, columns ``customers`` and the metric names.
    """
    frame = pd.DataFrame(dict(per_customer))
    frame.insert(0, "group", np.asarray(groups, dtype=object))
    by_group = frame.groupby("group").mean()
    by_group.insert(0, "customers", frame.groupby("group").size())
    overall = frame.drop(columns="group").mean().to_frame(OVERALL).T
    overall.insert(0, "customers", len(frame))
    by_group = by_group.sort_index().sort_values("customers", ascending=False, kind="stable")
    result = pd.concat([overall, by_group])
    result.index.name = "storefront"
    return result


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve: probability a random positive outscores a random negative."""
    scores, labels = _labelled(scores, labels)
    return float(roc_auc_score(labels, scores))


def pr_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation)."""
    scores, labels = _labelled(scores, labels)
    return float(average_precision_score(labels, scores))


def brier(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Brier score: mean squared difference between predicted probability and label."""
    probabilities, labels = _labelled(probabilities, labels)
    return float(np.mean((probabilities - labels) ** 2))


def binned_score_counts(
    scores: np.ndarray, labels: np.ndarray, bins: int | np.ndarray = DEFAULT_SCORE_BINS
) -> tuple[np.ndarray, np.ndarray]:
    """Histograms of the scores of positives and of negatives, for a pooled AUC.

    Args:
        scores: probabilities in [0, 1].
        labels: 0/1 (or bool) per score.
        bins: number of equal-width bins on [0, 1], or increasing bin edges covering
            every score (the last bin includes its right edge).

    Returns:
        ``(positive_counts, negative_counts)``, int64 arrays of one count per bin.
    """
    scores, labels = _labelled(scores, labels)
    edges = np.linspace(0.0, 1.0, bins + 1) if np.isscalar(bins) else np.asarray(bins, float)
    if scores.size and (scores.min() < edges[0] or scores.max() > edges[-1]):
        raise ValueError(f"scores must lie in [{edges[0]}, {edges[-1]}] to be binned")
    positive = labels == 1
    return (
        np.histogram(scores[positive], bins=edges)[0].astype(np.int64),
        np.histogram(scores[~positive], bins=edges)[0].astype(np.int64),
    )


def auc_from_binned_counts(positive_counts: np.ndarray, negative_counts: np.ndarray) -> float:
    """ROC-AUC from per-bin counts of positives and negatives (bins in increasing score).

    AUC = (Σ_b P_b · N_{<b} + ½ Σ_b P_b · N_b) / (P · N): a positive beats every negative
    in a lower bin and ties with those in its own bin. NaN when either class is empty.
    """
    pairs = np.sum(positive_counts) * np.sum(negative_counts)
    if pairs == 0:
        return float("nan")
    return concordant_pairs_from_binned_counts(positive_counts, negative_counts) / pairs


def concordant_pairs_from_binned_counts(
    positive_counts: np.ndarray, negative_counts: np.ndarray
) -> float:
    """The Mann–Whitney count of (positive, negative) pairs a histogram implies: pairs with
    the positive in a higher bin, plus half of those in one bin (:func:`auc_from_binned_counts`
    times P · N)."""
    positive = np.asarray(positive_counts, dtype=np.float64)
    negative = np.asarray(negative_counts, dtype=np.float64)
    if positive.shape != negative.shape or positive.ndim != 1:
        raise ValueError(f"count arrays differ in shape: {positive.shape} vs {negative.shape}")
    negatives_below = np.cumsum(negative) - negative
    return float(positive @ negatives_below + 0.5 * positive @ negative)


def _first(top_k: np.ndarray, k: int) -> np.ndarray:
    top_k = np.asarray(top_k)
    if top_k.ndim != 2 or top_k.shape[1] < k:
        raise ValueError(f"need at least k={k} ranked items per customer, got {top_k.shape}")
    return top_k[:, :k]


def _relevant(targets: np.ndarray, k: int) -> np.ndarray:
    """min(|basket|, k) per customer; an empty basket cannot be scored."""
    sizes = np.asarray(targets, dtype=bool).sum(axis=1)
    if (sizes == 0).any():
        raise ValueError(f"{int((sizes == 0).sum())} target baskets are empty")
    return np.minimum(sizes, k)


def _labelled(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores but {labels.size} labels")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    return scores, labels.astype(np.int64)


def pooled_rows(
    rows: Mapping[str, Mapping[str, float]], customer_means: Sequence[str]
) -> dict[str, dict[str, float]]:
    """The :data:`OVERALL` and :data:`OUTSIDE_UK` rows of per-storefront ``rows`` (each
    with :data:`CUSTOMERS`): the ``customer_means`` metrics weighted by customers (the
    others cannot be pooled from storefront rows)."""

    def pool(groups: Iterable[Mapping[str, float]]) -> dict[str, float]:
        groups = [row for row in groups if row.get(CUSTOMERS)]
        total = sum(row[CUSTOMERS] for row in groups)
        pooled = {CUSTOMERS: float(total)}
        for name in customer_means:
            if total and all(row.get(name) is not None for row in groups):
                pooled[name] = sum(row[name] * row[CUSTOMERS] for row in groups) / total
        return pooled

    return {
        OVERALL: pool(rows.values()),
        OUTSIDE_UK: pool(row for storefront, row in rows.items() if storefront != UK),
    }
