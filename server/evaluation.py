"""Pooling of per-storefront evaluation replies into overall and per-storefront estimates.

Sites reply with their noisy answers to the model's evaluation queries (exactly the
model's :attr:`models.registry.FederatedModel.evaluate_metric_keys`: released through
:mod:`privacy.release`, never an exact count or a per-customer value) and the standard
deviation of their noise. Pooling the answers gives the metric over all held-out
customers, which is what the protocols require (the churn ROC-AUC from pooled score
histograms, not averaged over storefronts); the model says how
(:meth:`models.registry.FederatedModel.summarise`).

Every metric is an estimate, so each comes with its spread: ``<metric>-sd``, the standard
deviation of the estimate under the sites' stated noise, by a parametric bootstrap
(:data:`SPREAD_DRAWS` draws of fresh noise of each reply's standard deviation added to its
answers, pooled again). It covers the noise, not the protocol's own approximations (e.g.
ties inside a histogram cell).

The result is one flat MetricRecord: overall metrics under their own names
(``roc-auc``, ``ndcg@10``, ``roc-auc-sd``, ...) and each storefront's under
``<storefront>/<name>``. The ServerApp's round log (``rounds.jsonl``) records it as the
round's ``evaluate-metrics``. A reply whose metric keys are not exactly the documented
ones is left out and logged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import MetricRecord, RecordDict
from flwr.supercore import log

from common import wire
from models.registry import FederatedModel

UNKNOWN_STOREFRONT = "unknown storefront"
SPREAD_DRAWS = 200
"""Bootstrap draws behind each ``-sd``: its own relative error is about 1/√(2·200) = 5 %."""
SPREAD_SUFFIX = "-sd"

EvaluationAggregator = Callable[[list[RecordDict], str], MetricRecord]


def evaluation_aggregator(model: FederatedModel) -> EvaluationAggregator:
    """The ``evaluate_metrics_aggr_fn`` of ``model``'s strategy."""

    def aggregate(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
        del weighted_by_key  # pooling answers, not weighting means
        pooled: list[dict[str, Any]] = []
        result: dict[str, Any] = {}
        for storefront, answers in _documented_replies(records, model):
            try:
                # Alone, and together with the first reply: values that cannot be pooled
                # (e.g. histograms of another cell count) leave this reply out, not the round.
                summary = estimates(model, [answers])
                model.summarise(pooled[:1] + [answers])
            except (ValueError, TypeError) as error:
                log(
                    WARNING,
                    "Evaluation reply of %s cannot be pooled (%s); left out",
                    storefront,
                    error,
                )
                continue
            pooled.append(answers)
            result.update(_prefixed(storefront, summary))
        if pooled:
            result.update(estimates(model, pooled))
        return MetricRecord(result)

    return aggregate


def estimates(model: FederatedModel, answers: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The model's metrics pooled over ``answers``, each with its ``-sd`` spread."""
    summary = model.summarise(answers)
    rng = np.random.default_rng(0)
    draws = [
        model.summarise([_redrawn(model, a, rng) for a in answers]) for _ in range(SPREAD_DRAWS)
    ]
    spreads = {}
    for metric, value in summary.items():
        if metric == "num-customers" or not isinstance(value, int | float):
            continue
        values = np.array([draw[metric] for draw in draws], dtype=np.float64)
        values = values[np.isfinite(values)]
        spreads[f"{metric}{SPREAD_SUFFIX}"] = float(values.std()) if values.size > 1 else math.nan
    return {**summary, **spreads}


def _redrawn(
    model: FederatedModel, answer: Mapping[str, Any], rng: np.random.Generator
) -> dict[str, Any]:
    """``answer`` with fresh noise of its stated standard deviations added."""
    noisy = dict(answer)
    sd = float(answer[wire.NOISE_SD])
    for query in model.evaluation_queries:
        value = np.asarray(answer[query.name], dtype=np.float64)
        noisy[query.name] = (value + rng.normal(0.0, sd, value.shape)).tolist()
    count_sd = float(answer[wire.NUM_EXAMPLES_NOISE_SD])
    noisy[wire.NUM_EXAMPLES] = float(answer[wire.NUM_EXAMPLES]) + rng.normal(0.0, count_sd)
    return noisy


def _documented_replies(
    records: list[RecordDict], model: FederatedModel
) -> list[tuple[str, dict[str, Any]]]:
    """(storefront, answers) of the replies that carry exactly the model's evaluate keys."""
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
