"""The comparison over several seeds: per-seed runs, pooled means and spreads."""

from __future__ import annotations

import json

import pytest
import torch

from common.console_errors import EXIT_USAGE
from lab import cli
from lab.compare import (
    CENTRALIZED,
    COMPARISON_JSON,
    COMPARISON_MARKDOWN,
    dp_run_name,
    run_seeds,
)
from lab.compare_seeds import pool_seeds
from models import metrics
from simulations.synthetic import generate_orders


def one_seed(ndcg: float, auc: float | None, baseline: float = 0.2) -> dict:
    rows = {metrics.OVERALL: {"ndcg@10": ndcg, "roc-auc": auc}}
    return {
        "settings": {"seed": 0, "quick": True},
        "recommender": {
            "runs": {"centralized": {"training": {"epochs": 2}, "metrics": rows}},
            "baselines": {"own history": {metrics.OVERALL: {"ndcg@10": baseline}}},
        },
    }


def test_pooled_runs_hold_the_mean_and_the_smallest_and_largest_value() -> None:
    pooled = pool_seeds([one_seed(0.2, 0.7), one_seed(0.3, 0.8), one_seed(0.4, None)], [0, 1, 2])
    run = pooled["recommender"]["runs"]["centralized"]
    assert run["metrics"][metrics.OVERALL]["ndcg@10"] == pytest.approx(0.3)
    assert run["spread"][metrics.OVERALL]["ndcg@10"] == pytest.approx([0.2, 0.4])
    # a metric one seed could not compute has no mean either
    assert run["metrics"][metrics.OVERALL]["roc-auc"] is None
    assert run["spread"][metrics.OVERALL]["roc-auc"] is None
    assert pooled["settings"] == {"quick": True, "seeds": [0, 1, 2]}
    assert run["training"] == {"epochs": 2}


def test_pooling_refuses_one_seed_and_results_that_do_not_match() -> None:
    with pytest.raises(ValueError, match="at least two"):
        pool_seeds([one_seed(0.2, 0.7)], [0])
    with pytest.raises(ValueError, match="baseline 'own history' differs"):
        pool_seeds([one_seed(0.2, 0.7), one_seed(0.3, 0.8, baseline=0.25)], [0, 1])
    missing = one_seed(0.3, 0.8)
    del missing["recommender"]["runs"]["centralized"]["metrics"][metrics.OVERALL]["roc-auc"]
    with pytest.raises(ValueError, match="roc-auc is missing"):
        pool_seeds([one_seed(0.2, 0.7), missing], [0, 1])


@pytest.mark.slow
def test_several_seeds_train_apart_and_pool_into_the_output(tmp_path) -> None:
    frame = generate_orders(n_storefronts=2, n_customers=200, n_items=50, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pooled = run_seeds(frame, tmp_path, [0, 1], epsilons=(8.0,), quick=True)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / COMPARISON_JSON).read_text()) == pooled
    per_seed = [json.loads((tmp_path / f"seed-{s}" / COMPARISON_JSON).read_text()) for s in (0, 1)]
    assert [result["settings"]["seed"] for result in per_seed] == [0, 1]
    for model, metric in (("recommender", "ndcg@10"), ("churn", "brier")):
        for name in (CENTRALIZED, dp_run_name(8.0)):
            values = [r[model]["runs"][name]["metrics"][metrics.OVERALL][metric] for r in per_seed]
            run = pooled[model]["runs"][name]
            assert run["metrics"][metrics.OVERALL][metric] == pytest.approx(sum(values) / 2)
            assert run["spread"][metrics.OVERALL][metric] == [min(values), max(values)]
    dp_values = [
        r["recommender"]["runs"][dp_run_name(8.0)]["metrics"][metrics.OVERALL]["ndcg@10"]
        for r in per_seed
    ]
    assert dp_values[0] != dp_values[1]  # the seed reaches the DP training
    text = (tmp_path / COMPARISON_MARKDOWN).read_text()
    assert "mean over seeds 0, 1 (smallest–largest)" in text
    low, high = pooled["recommender"]["runs"][CENTRALIZED]["spread"][metrics.OVERALL]["ndcg@10"]
    assert f"({low:.3f}–{high:.3f})" in text


@pytest.mark.parametrize("seeds", ["0,0", "-1", "a,b"])
def test_command_refuses_bad_seeds(seeds: str, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(["compare", "--out", str(tmp_path), "--seeds", seeds])
    assert stopped.value.code == EXIT_USAGE
    assert "--seeds" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
