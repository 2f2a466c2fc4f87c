"""Several seeds of the comparison pooled into one: each number the mean over the seeds,
with its spread (smallest and largest value).

A comparison of one seed (:func:`lab.compare.run_comparison`) gives one draw of
every run: weights, sampling, target draws and DP noise all follow the seed, and on the
bundled data one seed moves NDCG@10 or ROC-AUC by as much as many setting changes. The
pooled comparison keeps the one-seed layout (``<model>.runs.<run>.metrics.<group>.<metric>``
is now a mean), so the main job's report reads it unchanged, and adds
``<model>.runs.<run>.spread.<group>.<metric> = [min, max]``; the baselines are
deterministic and must agree across seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np


def pool_seeds(results: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """The comparisons of ``seeds`` (same runs, groups and metrics) as one.

    Raises:
        ValueError: fewer than two results, a seed count that does not match, or results
            that do not hold the same runs, groups and metrics.
    """
    if len(results) < 2 or len(results) != len(seeds):
        raise ValueError(f"pool at least two seeds' results, one per seed; got {len(results)}")
    pooled = copy.deepcopy(results[0])
    settings = pooled["settings"]
    settings.pop("seed", None)
    settings["seeds"] = list(seeds)
    for model in (key for key in pooled if key != "settings"):
        for name, run in pooled[model]["runs"].items():
            tables = [result[model]["runs"][name]["metrics"] for result in results]
            run["metrics"], run["spread"] = _mean_and_spread(tables, f"{model} {name}")
        for name, baseline in pooled[model]["baselines"].items():
            if any(result[model]["baselines"][name] != baseline for result in results):
                raise ValueError(f"{model} baseline {name!r} differs between seeds")
    return pooled


def _mean_and_spread(
    tables: Sequence[dict[str, dict[str, float | None]]], what: str
) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, list[float] | None]]]:
    """Per group and metric: the mean and ``[min, max]`` over ``tables`` (None where any
    table has None: e.g. no ROC-AUC in a group with one class)."""
    means: dict[str, dict[str, float | None]] = {}
    spreads: dict[str, dict[str, list[float] | None]] = {}
    for group, metrics in tables[0].items():
        means[group], spreads[group] = {}, {}
        for metric in metrics:
            try:
                values = [table[group][metric] for table in tables]
            except KeyError:
                raise ValueError(f"{what}: {group} / {metric} is missing in a seed") from None
            if any(value is None for value in values):
                means[group][metric], spreads[group][metric] = None, None
                continue
            array = np.asarray(values, dtype=np.float64)
            means[group][metric] = float(array.mean())
            spreads[group][metric] = [float(array.min()), float(array.max())]
    return means, spreads
