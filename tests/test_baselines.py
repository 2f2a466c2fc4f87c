"""The baselines reproduce docs/protocols.md's reference numbers on the bundled data (within ±0.01),
which checks that both protocols are implemented as specified."""

from __future__ import annotations

import numpy as np
import pytest

from models import metrics
from models.churn import baselines as churn_baselines
from models.churn.protocol import churn_data
from models.recommender import baselines as next_basket_baselines
from models.recommender.protocol import split_next_basket

TOLERANCE = 0.01

# docs/protocols.md: HR@10, Recall@10, NDCG@10, NDCG@10 outside the UK.
NEXT_BASKET_REFERENCE = {
    "global popularity": (0.386, 0.067, 0.066, 0.071),
    "storefront popularity": (0.393, 0.073, 0.074, 0.133),
    "own history": (0.722, 0.274, 0.270, 0.280),
}


@pytest.fixture(scope="module")
def split(bundled_orders):
    return split_next_basket(bundled_orders[0])


@pytest.mark.parametrize("name", sorted(NEXT_BASKET_REFERENCE))
def test_next_basket_baseline_matches_reference(split, name: str) -> None:
    table = next_basket_baselines.evaluate_next_basket(
        split, next_basket_baselines.NEXT_BASKET_BASELINES[name](split)
    )
    measured = (
        *table.loc[metrics.OVERALL, ["hr@10", "recall@10", "ndcg@10"]],
        table.loc[metrics.OUTSIDE_UK, "ndcg@10"],
    )
    assert measured == pytest.approx(NEXT_BASKET_REFERENCE[name], abs=TOLERANCE)
    assert table.loc[metrics.OVERALL, "customers"] == 2829
    assert table.loc[metrics.OUTSIDE_UK, "customers"] == 266
    per_storefront = table.drop([metrics.OVERALL, metrics.OUTSIDE_UK])
    assert per_storefront["customers"].sum() == 2829


def test_item_code_tie_break_scores_far_lower(split) -> None:
    table = next_basket_baselines.evaluate_next_basket(
        split, next_basket_baselines.NEXT_BASKET_BASELINES["own history, item-code ties"](split)
    )
    assert table.loc[metrics.OVERALL, "ndcg@10"] == pytest.approx(0.238, abs=TOLERANCE)


def test_own_history_ranks_most_bought_items_first(split) -> None:
    invoices = next_basket_baselines.own_invoice_counts(split)
    top = metrics.top_k_items(next_basket_baselines.own_history_scores(split), 10)
    ranked_counts = np.take_along_axis(invoices, top, axis=1)
    assert (np.diff(ranked_counts, axis=1) <= 0).all()
    # Among equal counts the globally more popular item comes first.
    popularity = np.take_along_axis(
        np.broadcast_to(next_basket_baselines.popularity_rank_scores(split), invoices.shape),
        top,
        axis=1,
    )
    ties = np.diff(ranked_counts, axis=1) == 0
    assert (np.diff(popularity, axis=1)[ties] < 0).all()


def test_unknown_tie_break_is_refused(split) -> None:
    with pytest.raises(ValueError, match="tie_break"):
        next_basket_baselines.own_history_scores(split, "random")


@pytest.mark.slow
def test_churn_baselines_match_reference(bundled_orders) -> None:
    table = churn_baselines.churn_baselines(churn_data(bundled_orders[0]))
    lr = table.loc["logistic regression (log1p)"]
    assert (lr["roc-auc"], lr["pr-auc"], lr["brier"]) == pytest.approx(
        (0.746, 0.644, 0.200), abs=TOLERANCE
    )
    assert table.loc["recency alone", "roc-auc"] == pytest.approx(0.684, abs=TOLERANCE)
    # Gradient boosting (reference 0.729) scores 0.715-0.734 depending on the fold seed;
    # it keeps the reference's place between recency alone and logistic regression.
    auc = table["roc-auc"]
    assert auc["recency alone"] < auc["gradient boosting"] < auc["logistic regression (log1p)"]
