"""What a run directory says about a run's results: rounds, final metrics, rows by group.

A run's per-round log (``rounds.jsonl``) holds, per model and round, the server's pooled
evaluation: overall metrics under their own names and each storefront's as
``<storefront>/<metric>``. :func:`load_run` reads it with the resolved config;
:func:`final_rows` turns the final round into rows by group (overall, outside the UK,
storefronts) as the comparison tables have them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.baselines import OUTSIDE_UK, UK
from models.metrics import OVERALL
from models.registry import get_model
from server.run_files import RESOLVED_CONFIG, ROUNDS_LOG

STOREFRONT_SEPARATOR = "/"
"""Separates storefront and metric in per-storefront metric names."""


@dataclass(frozen=True)
class RunResults:
    """The evaluation history of one run, per model."""

    run_dir: Path
    config: dict[str, Any]
    rounds: dict[str, list[dict[str, Any]]]
    """model -> its round records (``rounds.jsonl``), in round order."""

    @property
    def epsilon(self) -> float:
        """The run's per-site ε budget (≤ 0: non-private)."""
        return float(self.config.get("epsilon", 0.0))

    def final(self, model: str) -> dict[str, Any]:
        """The last round's pooled evaluation metrics of ``model`` ({} if none)."""
        records = self.rounds.get(model, [])
        return records[-1].get("evaluate-metrics", {}) if records else {}


def load_run(run_dir: Path) -> RunResults:
    """The config and per-model round records of ``run_dir``."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / RESOLVED_CONFIG).read_text())
    rounds: dict[str, list[dict[str, Any]]] = {}
    log = run_dir / ROUNDS_LOG
    lines = log.read_text().splitlines() if log.is_file() else []
    for record in (json.loads(line) for line in lines if line.strip()):
        rounds.setdefault(record["model"], []).append(record)
    for records in rounds.values():
        records.sort(key=lambda record: record["round"])
    return RunResults(run_dir, config, rounds)


def overall_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The pooled metrics without the per-storefront ``<storefront>/<metric>`` entries."""
    return {k: v for k, v in metrics.items() if STOREFRONT_SEPARATOR not in k}


def storefront_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """storefront -> metric -> value, from the ``<storefront>/<metric>`` entries."""
    per_storefront: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        storefront, separator, metric = key.rpartition(STOREFRONT_SEPARATOR)
        if separator:
            per_storefront.setdefault(storefront, {})[metric] = value
    return per_storefront


def headline_metric(model: str, metrics: dict[str, Any] | None = None) -> str:
    """The metric shown for ``model``: the registered model's headline metric (its
    protocol's main number), else the first of ``metrics``."""
    try:
        preferred = get_model(model).headline_metric
    except ValueError:  # a run of a plug-in model that is not installed here
        preferred = None
    overall = overall_metrics(metrics or {})
    if preferred is not None and (metrics is None or preferred in overall):
        return preferred
    return next((k for k in sorted(overall) if k != "num-customers"), "num-customers")


_METRIC_NAMES = {"num-customers": "customers"}
"""Federated metric names that the comparison tables call otherwise."""


def final_rows(final: dict[str, Any], model: str) -> dict[str, dict[str, float | None]]:
    """Rows by group (overall, outside the UK, each storefront) from a run's final pooled
    evaluation (``<metric>`` and ``<storefront>/<metric>`` keys), named as the comparison
    tables of :mod:`simulations.compare` name theirs. Outside the UK pools the model's
    per-customer means (:attr:`models.registry.FederatedModel.customer_means`) only."""
    per_storefront = storefront_metrics(final)
    rows = {OVERALL: _renamed(overall_metrics(final))}
    means = _customer_means(model)
    if means:
        outside = [m for s, m in per_storefront.items() if s != UK and m.get("num-customers")]
        customers = sum(m["num-customers"] for m in outside)
        if customers:
            pooled = {"customers": float(customers)}
            for name in means:
                if all(name in m for m in outside):
                    pooled[name] = sum(m[name] * m["num-customers"] for m in outside) / customers
            rows[OUTSIDE_UK] = pooled
    rows.update({s: _renamed(m) for s, m in sorted(per_storefront.items())})
    return rows


def _customer_means(model: str) -> tuple[str, ...]:
    try:
        return get_model(model).customer_means
    except ValueError:  # a run of a plug-in model that is not installed here
        return ()


def _renamed(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {
        _METRIC_NAMES.get(name, name): None if math.isnan(float(value)) else float(value)
        for name, value in metrics.items()
    }
