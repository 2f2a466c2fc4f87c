import math

import pytest

from lab.federated_runs import federated_dp_run_name
from models.metrics import OUTSIDE_UK, OVERALL, UK
from simulations.reference_runs import final_rows
from simulations.run_configs import MAIN_RUN_CONFIG, PLAIN_RUN_CONFIG, QUICK_OVERRIDES
from simulations.runner import app_run_config


def recommender_final() -> dict:
    final = {"hr@10": 0.7, "recall@10": 0.3, "ndcg@10": 0.28, "num-customers": 100}
    for storefront, ndcg, customers in ((UK, 0.29, 90), ("France", 0.30, 6), ("Spain", 0.15, 4)):
        final |= {
            f"{storefront}/ndcg@10": ndcg,
            f"{storefront}/hr@10": 2 * ndcg,
            f"{storefront}/recall@10": ndcg + 0.01,
            f"{storefront}/num-customers": customers,
        }
    return final


def test_recommender_rows_pool_the_storefronts_outside_the_uk_by_their_customers():
    rows = final_rows(recommender_final(), "recommender")
    assert list(rows) == [OVERALL, OUTSIDE_UK, "France", "Spain", UK]
    assert rows[OVERALL]["ndcg@10"] == 0.28 and rows[OVERALL]["customers"] == 100
    outside = rows[OUTSIDE_UK]
    assert outside["customers"] == 10
    assert outside["ndcg@10"] == pytest.approx((0.30 * 6 + 0.15 * 4) / 10)
    assert outside["hr@10"] == pytest.approx(2 * outside["ndcg@10"])
    assert rows["Spain"] == pytest.approx(
        {"ndcg@10": 0.15, "hr@10": 0.3, "recall@10": 0.16, "customers": 4}
    )


def test_churn_pools_only_per_customer_means_outside_the_uk_and_has_no_nan():
    final = {"roc-auc": 0.75, "num-customers": 20, "Belgium/roc-auc": math.nan}
    final |= {"Belgium/num-customers": 4, "Belgium/brier": 0.2, "Belgium/churn-rate": 0.25}
    final |= {"France/num-customers": 12, "France/brier": 0.1, "France/churn-rate": 0.5}
    final |= {"France/roc-auc": 0.8}
    rows = final_rows(final, "churn")
    # ROC-AUC does not pool from storefronts' values; Brier and the churn rate do.
    assert rows[OUTSIDE_UK] == pytest.approx(
        {"customers": 16.0, "brier": (0.2 * 4 + 0.1 * 12) / 16, "churn-rate": 0.4375}
    )
    assert rows["Belgium"] == {"roc-auc": None, "customers": 4.0, "brier": 0.2, "churn-rate": 0.25}


def test_run_configs_name_only_keys_of_the_app_and_differ_in_privacy():
    keys = set(app_run_config())
    for config in (MAIN_RUN_CONFIG, PLAIN_RUN_CONFIG, QUICK_OVERRIDES):
        assert set(config) <= keys
    assert MAIN_RUN_CONFIG["epsilon"] > 0 >= PLAIN_RUN_CONFIG["epsilon"]
    assert federated_dp_run_name(8.0) == "federated-dp-eps-8"
    assert federated_dp_run_name(0.5) == "federated-dp-eps-0.5"
