"""Pooling of per-storefront evaluation replies into overall and per-storefront metrics.

Sites reply with sums and counts over their held-out customers (exactly the model's
:attr:`models.registry.FederatedModel.evaluate_metric_keys`), never per-customer values.
Pooling sums gives the metric over all held-out customers, which is what the protocols
require (the churn ROC-AUC from pooled score histograms, not averaged over storefronts);
the model says how (:meth:`models.registry.FederatedModel.summarise`).

The result is one flat MetricRecord: overall metrics under their own names
(``roc-auc``, ``ndcg@10``, ...) and each storefront's under ``<storefront>/<name>``. The
ServerApp's round log (``rounds.jsonl``) records it as the round's ``evaluate-metrics``.
A reply whose metric keys are not exactly the documented ones is left out and logged.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.supercore import log

from models.registry import FederatedModel
from privacy import wire

UNKNOWN_STOREFRONT = "unknown storefront"

EvaluationAggregator = Callable[[list[RecordDict], str], MetricRecord]


def evaluation_aggregator(model: FederatedModel) -> EvaluationAggregator:
    """The ``evaluate_metrics_aggr_fn`` of ``model``'s strategy."""

    def aggregate(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        del weighted_by_key  # pooling sums, not weighting means
        pooled: list[dict[str, Any]] = []
        result: dict[str, Any] = {}
        for storefront, sums in _documented_replies(records, model):
            try:
                # Alone, and together with the first reply: values that cannot be pooled
                # (e.g. histograms of another bin count) leave this reply out, not the round.
                summary = model.summarise([sums])
                model.summarise(pooled[:1] + [sums])
            except (ValueError, TypeError) as error:
                log(
                    WARNING,
                    "Evaluation reply of %s cannot be pooled (%s); left out",
                    storefront,
                    error,
                )
                continue
            pooled.append(sums)
            result.update(_prefixed(storefront, summary))
        if pooled:
            result.update(model.summarise(pooled))
        return MetricRecord(result)

    return aggregate


def _documented_replies(
    records: list[RecordDict], model: FederatedModel
) -> list[tuple[str, dict[str, Any]]]:
    """(storefront, sums) of the replies that carry exactly the model's evaluate keys."""
    expected = model.evaluate_metric_keys
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
        replies.append((storefront, dict(metrics)))
    return replies


def _prefixed(storefront: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {f"{storefront}/{name}": value for name, value in summary.items()}
