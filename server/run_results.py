"""What a run directory says about a run's results: rounds, final metrics, rows by group.

A run's per-round log (``rounds.jsonl``) holds, per model and round, the server's pooled
evaluation — estimates from the sites' noisy answers, each metric with its ``-sd`` spread:
overall metrics under their own names and each storefront's as ``<storefront>/<metric>``.
A simulation adds the final models' exact metrics in the same naming
(``exact-evaluation.json``). :func:`load_run` reads both with the resolved config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.registry import get_model
from server.evaluation import SPREAD_SUFFIX
from server.run_files import EXACT_EVALUATION, RESOLVED_CONFIG, ROUNDS_LOG

STOREFRONT_SEPARATOR = "/"
"""Separates storefront and metric in per-storefront metric names."""


@dataclass(frozen=True)
class RunResults:
    """The evaluation history of one run, per model."""

    run_dir: Path
    config: dict[str, Any]
    rounds: dict[str, list[dict[str, Any]]]
    """model -> its round records (``rounds.jsonl``), in round order."""
    exact: dict[str, dict[str, Any]] = field(default_factory=dict)
    """model -> the final models' exact metrics (simulation only; empty in deployment)."""

    @property
    def epsilon(self) -> float:
        """The run's per-site ε budget (≤ 0: non-private)."""
        return float(self.config.get("epsilon", 0.0))

    def final(self, model: str) -> dict[str, Any]:
        """The last evaluated round's pooled estimates of ``model`` ({} if none)."""
        evaluated = [
            r["evaluate-metrics"] for r in self.rounds.get(model, []) if r.get("evaluate-metrics")
        ]
        return evaluated[-1] if evaluated else {}

    def scored(self, model: str) -> dict[str, Any]:
        """The final metrics a study compares: exact where the run has them (simulation),
        else the server's estimates."""
        return self.exact.get(model) or self.final(model)


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
    exact_file = run_dir / EXACT_EVALUATION
    exact = json.loads(exact_file.read_text()) if exact_file.is_file() else {}
    return RunResults(run_dir, config, rounds, exact)


def overall_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The pooled metrics without the per-storefront ``<storefront>/<metric>`` entries."""
    return {k: v for k, v in metrics.items() if STOREFRONT_SEPARATOR not in k}


def spread(metrics: dict[str, Any], metric: str) -> float | None:
    """The ``-sd`` spread the server stated for ``metric`` (``None``: exact, or none)."""
    value = metrics.get(f"{metric}{SPREAD_SUFFIX}")
    return None if value is None or math.isnan(float(value)) else float(value)


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
