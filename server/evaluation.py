"""Pooling of per-storefront evaluation replies into overall and per-storefront metrics.

Sites reply with sums and counts over their held-out customers (see
:data:`clients.messages.EVALUATE_METRIC_KEYS`), never per-customer values. Pooling sums
gives the metric over all held-out customers, which is what the protocols require: the
churn ROC-AUC is computed from the pooled score histograms (positives and negatives per
score bin), not averaged over storefronts; recommender metrics are per-customer means.

The result is one flat MetricRecord: overall metrics under their own names
(``roc-auc``, ``ndcg@10``, ...) and each storefront's under ``<storefront>/<name>``. The
ServerApp's round log (``rounds.jsonl``) records it as the round's ``evaluate-metrics``.
A reply whose metric keys are not exactly the documented ones is left out and logged.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.supercore import log

from clients import messages as wire
from models.metrics import auc_from_binned_counts

UNKNOWN_STOREFRONT = "unknown storefront"


def churn_summary(positives: np.ndarray, negatives: np.ndarray, brier_sum: float) -> dict:
    """ROC-AUC from score histograms, Brier score, customer count and churn rate."""
    count = int(positives.sum() + negatives.sum())
    return {
        "roc-auc": float(auc_from_binned_counts(positives, negatives)),
        "brier": brier_sum / count if count else float("nan"),
        "num-customers": count,
        "churn-rate": float(positives.sum()) / count if count else float("nan"),
    }


def recommender_summary(hits: float, recall: float, ndcg: float, count: float) -> dict:
    """HR@10, Recall@10 and NDCG@10 as means over test customers, and their count."""
    mean = (lambda total: total / count) if count > 0 else (lambda total: float("nan"))
    return {
        "hr@10": mean(hits),
        "recall@10": mean(recall),
        "ndcg@10": mean(ndcg),
        "num-customers": int(count),
    }


def aggregate_churn(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Overall and per-storefront churn metrics from binned score counts."""
    del weighted_by_key  # pooling sums, not weighting means
    result: dict = {}
    pooled: list[np.ndarray] = []
    brier_total = 0.0
    for storefront, metrics in _documented_replies(records, "churn"):
        site = [
            np.asarray(metrics[wire.SCORE_BINS_POSITIVE], dtype=np.int64),
            np.asarray(metrics[wire.SCORE_BINS_NEGATIVE], dtype=np.int64),
        ]
        shapes = {array.shape for array in (*site, *pooled)}
        if len(shapes) > 1 or site[0].ndim != 1:
            log(WARNING, "Evaluation reply of %s has mismatched score bins; left out", storefront)
            continue
        brier = float(metrics[wire.BRIER_SUM])
        pooled = site if not pooled else [pooled[0] + site[0], pooled[1] + site[1]]
        brier_total += brier
        result.update(_prefixed(storefront, churn_summary(*site, brier)))
    if pooled:
        result.update(churn_summary(*pooled, brier_total))
    return MetricRecord(result)


def aggregate_recommender(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Overall (per customer) and per-storefront HR/Recall/NDCG@10 from sums and counts."""
    del weighted_by_key
    result: dict = {}
    totals = np.zeros(4)
    for storefront, metrics in _documented_replies(records, "recommender"):
        site = np.array(
            [
                float(metrics[wire.HIT_SUM]),
                float(metrics[wire.RECALL_SUM]),
                float(metrics[wire.NDCG_SUM]),
                float(metrics[wire.NUM_EXAMPLES]),
            ]
        )
        totals += site
        result.update(_prefixed(storefront, recommender_summary(*site)))
    result.update(recommender_summary(*totals))
    return MetricRecord(result)


EVALUATION_AGGREGATORS: dict[str, Callable[[list[RecordDict], str], MetricRecord]] = {
    "churn": aggregate_churn,
    "recommender": aggregate_recommender,
}
"""The ``evaluate_metrics_aggr_fn`` of each model's strategy."""


def _documented_replies(records: list[RecordDict], model: str) -> list[tuple[str, MetricRecord]]:
    """(storefront, metrics) of the replies that carry exactly the model's evaluate keys."""
    expected = wire.EVALUATE_METRIC_KEYS[model]
    replies = []
    for record in records:
        site = record.config_records.get(wire.SITE)
        storefront = str(site[wire.STOREFRONT]) if site else UNKNOWN_STOREFRONT
        metrics = record.metric_records.get(wire.METRICS)
        keys = set(metrics) if metrics is not None else set()
        if keys != expected:
            log(
                WARNING,
                "Evaluation reply of %s has metric keys %s, not %s; left out",
                storefront,
                sorted(keys),
                sorted(expected),
            )
            continue
        replies.append((storefront, metrics))
    return replies


def _prefixed(storefront: str, summary: dict) -> dict:
    return {f"{storefront}/{name}": value for name, value in summary.items()}
