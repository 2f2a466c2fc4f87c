"""The studies written once over the registry (models/study.py): a plug-in model goes
through ``python -m lab compare`` with no line of study code of its own and through
``tune`` with only its validation split and search space, and pooled rows weigh
storefronts by their customers."""

from __future__ import annotations

import math

import pytest
import torch

from lab import cli as lab_cli
from lab.compare import (
    CENTRALIZED,
    COMPARISON_MARKDOWN,
    STOREFRONT_ALONE,
    dp_run_name,
    run_comparison,
)
from lab.tuning import tune
from models import schema
from models.metrics import OUTSIDE_UK, OVERALL, UK, pooled_rows
from models.settings_per_epsilon import UNTUNED
from models.study import SiteDataStudy, pooled_study
from simulations.storefronts import assign_storefronts
from simulations.synthetic import generate_orders
from tests import plugin_model
from tests.plugin_model import SpendModel

PLUGIN = "tests.plugin_model"


def test_a_plugin_model_goes_through_the_comparison(tmp_path) -> None:
    frame = generate_orders(n_storefronts=3, n_customers=240, n_items=40, seed=0)
    torch.set_num_threads(1)
    result = run_comparison(
        frame, tmp_path, epsilons=(8.0,), quick=True, federated=False, models=(PLUGIN,)
    )
    runs = result[PLUGIN]["runs"]
    assert set(result) == {"settings", PLUGIN}
    assert list(runs) == [CENTRALIZED, dp_run_name(8.0), STOREFRONT_ALONE]
    # No settings file entry: the model's own defaults, said to be untuned.
    assert runs[CENTRALIZED]["training"]["chosen-on"] == UNTUNED
    assert runs[CENTRALIZED]["validation"] is None
    centralized = runs[CENTRALIZED]["metrics"]
    storefronts = set(centralized) - {OVERALL}
    assert len(storefronts) >= 2
    customers = {s: centralized[s]["customers"] for s in storefronts}
    assert centralized[OVERALL]["customers"] == sum(customers.values())
    assert all(math.isfinite(row["mse"]) and row["mse"] >= 0 for row in centralized.values())
    privacy = runs[dp_run_name(8.0)]["privacy"]
    assert 0 < privacy["epsilon"] <= 8.0 and privacy["steps"] > 0
    alone = runs[STOREFRONT_ALONE]
    assert set(alone["training"]) == storefronts
    # Every storefront had its own model, so the pooled row is their customer-weighted mean.
    weighted = sum(alone["metrics"][s]["mse"] * customers[s] for s in storefronts)
    assert alone["metrics"][OVERALL]["mse"] == pytest.approx(
        weighted / centralized[OVERALL]["customers"]
    )
    assert f"## {PLUGIN}: mse" in (tmp_path / COMPARISON_MARKDOWN).read_text()


def test_a_plugin_validation_study_holds_out_none_of_its_test_customers(monkeypatch) -> None:
    frame = generate_orders(n_storefronts=2, n_customers=60, n_items=20, seed=1)
    test = pooled_study(PLUGIN, frame)
    validation = pooled_study(PLUGIN, frame, validation=True)
    assert isinstance(test, SiteDataStudy) and isinstance(validation, SiteDataStudy)
    test_customers = sum(len(site.evaluation) for site in test.sites.values())
    kept, _ = plugin_model.validation_orders(frame)
    assert kept[schema.CUSTOMER].nunique() == frame[schema.CUSTOMER].nunique() - test_customers
    monkeypatch.delattr(plugin_model, "validation_orders")
    with pytest.raises(ValueError, match=f"model {PLUGIN} has no validation split"):
        pooled_study(PLUGIN, frame, validation=True)


def test_pooled_rows_weigh_storefronts_by_customers_and_skip_what_does_not_pool() -> None:
    rows = {
        UK: {"customers": 30.0, "ndcg@10": 0.3, "roc-auc": 0.7},
        "France": {"customers": 10.0, "ndcg@10": 0.1, "roc-auc": 0.9},
        "Spain": {"customers": 0.0, "ndcg@10": None},
    }
    pooled = pooled_rows(rows, customer_means=("ndcg@10",))
    assert pooled[OVERALL] == {"customers": 40.0, "ndcg@10": pytest.approx(0.25)}
    assert pooled[OUTSIDE_UK] == {"customers": 10.0, "ndcg@10": pytest.approx(0.1)}


@pytest.mark.parametrize("mode", ["centralized", "federated"])
def test_a_plugin_model_is_tuned_on_its_validation_split(mode, tmp_path) -> None:
    """Its validation split and search space come from its module; the chosen trial has the
    lowest validation MSE (its headline metric is an error)."""
    frame = assign_storefronts(generate_orders(n_storefronts=2, n_customers=200, n_items=30))
    torch.set_num_threads(1)
    result = tune(
        frame,
        model=PLUGIN,
        mode=mode,
        epsilon=8.0,
        trials=3,
        seed=0,
        out_dir=tmp_path,
        data="synthetic",
    )
    scores = [trial.score for trial in result.trials]
    assert len(scores) == 3 and all(math.isfinite(score) for score in scores)
    assert result.chosen.validation_score == pytest.approx(min(scores), abs=1e-4)
    assert result.chosen.chosen_on == plugin_model.VALIDATION
    assert result.trials[0].settings == SpendModel.default_training.to_config()


def test_tune_refuses_a_model_it_cannot_search_in_one_line(capsys) -> None:
    code = lab_cli.main(
        [
            "tune",
            "--model",
            "churn.nothing",
            "--mode",
            "centralized",
            "--epsilon",
            "8",
            "--out",
            "unused",
        ]
    )
    assert code == 2
    assert "tune --model churn.nothing: model 'churn.nothing': cannot import" in (
        capsys.readouterr().err
    )
