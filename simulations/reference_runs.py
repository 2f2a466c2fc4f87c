"""The reference runs a simulation is shown beside: a ``comparison.json`` of
``python -m lab compare`` on the same data (the main job's default is the one made on the
bundled data, :data:`simulations.cli.BUNDLED_REFERENCE`), read into what the run report
draws and tabulates (:class:`server.report.Beside`).

The server's report knows nothing of the comparison's layout; this module is its only
reader in the product. :func:`final_rows` turns a run's final round into the comparison's
rows by group (overall, outside the UK, storefronts), for the studies too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from models.metrics import CUSTOMERS, OUTSIDE_UK, OVERALL, pooled_rows
from models.registry import get_model
from server.report import Beside
from server.run_results import RunResults, headline_metric, overall_metrics, storefront_metrics
from simulations.errors import ComparisonError

NOTE = (
    "Reference runs and baselines on the same data (python -m lab compare): centralized, "
    "centralized with DP, federated and each storefront training alone. Each cell is the "
    "model's headline metric."
)


def load_comparison(path: Path) -> dict[str, Any]:
    """A ``comparison.json`` of ``python -m lab compare``, checked for what is read of it.

    Raises:
        ComparisonError: the file is missing or not such a comparison.
    """
    try:
        comparison = json.loads(Path(path).read_text())
        models = [name for name in comparison if name != "settings"]
        if not models:
            raise TypeError("no model in it")
        for model in models:
            if not isinstance(comparison[model]["runs"], dict):
                raise TypeError(f"{model}.runs is not an object")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ComparisonError(
            f"{path}: not a comparison of python -m lab compare ({error})"
        ) from None
    return comparison


def beside_comparison(run: RunResults, path: Path) -> Beside:
    """The comparison at ``path`` as the report shows it beside ``run``.

    Raises:
        ComparisonError: see :func:`load_comparison`.
    """
    comparison = load_comparison(path)
    models = [model for model in run.rounds if model in comparison]
    points = {
        model: reference_points(comparison, model, headline_metric(model)) for model in models
    }
    return Beside(
        title="Beside the reference runs",
        note=f"{NOTE} From {path}.",
        tables={model: reference_frame(run, model, comparison) for model in models},
        curves={model: curves for model, (curves, _) in points.items()},
        levels={model: levels for model, (_, levels) in points.items()},
    )


def reference_points(
    comparison: dict[str, Any], model: str, metric: str
) -> tuple[dict[str, list[tuple[float, float]]], dict[str, float]]:
    """The comparison's overall ``metric`` of ``model``: DP runs as (ε, value) curves by
    family (``centralized``, ``federated``), non-private runs as levels by run name."""
    curves: dict[str, list[tuple[float, float]]] = {}
    levels: dict[str, float] = {}
    for name, run in comparison.get(model, {}).get("runs", {}).items():
        value = run.get("metrics", {}).get(OVERALL, {}).get(metric)
        if value is None:
            continue
        if "privacy" in run:  # centralized DP: the target ε its σ was calibrated to
            epsilon = float(run["privacy"]["target_epsilon"])
        else:  # federated runs carry their run config; ε ≤ 0 there means no DP
            epsilon = float(run.get("training", {}).get("epsilon", 0.0))
        if epsilon > 0:
            curves.setdefault(name.split("-dp-eps-")[0], []).append((epsilon, float(value)))
        else:
            levels[name] = float(value)
    return {family: sorted(points) for family, points in curves.items()}, levels


def reference_frame(run: RunResults, model: str, comparison: dict[str, Any]) -> pd.DataFrame:
    """The model's headline metric by group (this run's: overall, outside the UK,
    storefronts): this run's final models — exact where the run has them (simulation),
    else the server's estimates — beside every run and baseline of ``comparison``."""
    metric = headline_metric(model)
    this_run = final_rows(run.scored(model), model)
    columns = {f"this run ({run.run_dir.name})": this_run}
    for name, reference in comparison[model]["runs"].items():
        columns[name] = reference["metrics"]
    for name, by_group in comparison[model].get("baselines", {}).items():
        columns[f"baseline: {name}"] = by_group
    table = []
    for group in this_run:
        cells = {name: by_group.get(group, {}).get(metric) for name, by_group in columns.items()}
        table.append({"group": group, **cells})
    return pd.DataFrame(table)


_METRIC_NAMES = {"num-customers": "customers"}
"""Federated metric names that the comparison tables call otherwise."""


def final_rows(final: dict[str, Any], model: str) -> dict[str, dict[str, float | None]]:
    """Rows by group (overall, outside the UK, each storefront) from a run's final pooled
    evaluation (``<metric>`` and ``<storefront>/<metric>`` keys), named as the comparison
    tables of ``python -m lab compare`` name theirs. Outside the UK pools the model's
    per-customer means (:attr:`models.registry.FederatedModel.customer_means`) only."""
    per_storefront = storefront_metrics(final)
    rows = {OVERALL: _renamed(overall_metrics(final))}
    means = _customer_means(model)
    if means:
        named = {
            storefront: {_METRIC_NAMES.get(name, name): value for name, value in m.items()}
            for storefront, m in per_storefront.items()
        }
        outside = pooled_rows(named, means)[OUTSIDE_UK]
        if outside[CUSTOMERS]:
            rows[OUTSIDE_UK] = outside
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
