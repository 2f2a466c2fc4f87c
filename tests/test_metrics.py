"""Ranking and churn metrics against small examples worked out by hand from the formulas."""

from __future__ import annotations

import numpy as np
import pytest

from models import metrics

# Catalogue of 5 items, k = 3. Expected values below come from the definitions:
#   A: ranked [0, 1, 2], basket {1, 4}: one hit at rank 2.
#   B: ranked [3, 4, 0], basket {2}: no hit.
#   C: ranked [2, 0, 1], basket {0, 1, 2, 3}: hits at ranks 1-3, min(|basket|, k) = 3.
#   D: ranked [4, 3, 2], basket {2}: one hit at rank 3.
TOP_K = np.array([[0, 1, 2], [3, 4, 0], [2, 0, 1], [4, 3, 2]])
BASKETS = [{1, 4}, {2}, {0, 1, 2, 3}, {2}]
GROUPS = np.array(["x", "y", "x", "y"])


def basket_matrix(baskets: list[set[int]], n_items: int = 5) -> np.ndarray:
    targets = np.zeros((len(baskets), n_items), dtype=bool)
    for row, basket in enumerate(baskets):
        targets[row, list(basket)] = True
    return targets


def test_hit_rate_is_one_for_any_hit_in_the_top_k() -> None:
    assert metrics.hit_rate_at_k(TOP_K, basket_matrix(BASKETS), k=3).tolist() == [1, 0, 1, 1]
    # With k = 1 only C's first item is in its basket.
    assert metrics.hit_rate_at_k(TOP_K, basket_matrix(BASKETS), k=1).tolist() == [0, 0, 1, 0]


def test_recall_divides_hits_by_the_smaller_of_basket_size_and_k() -> None:
    recall = metrics.recall_at_k(TOP_K, basket_matrix(BASKETS), k=3)
    np.testing.assert_allclose(recall, [1 / 2, 0, 3 / 3, 1 / 1])


def test_ndcg_uses_binary_gains_and_an_ideal_of_min_basket_k_hits() -> None:
    ndcg = metrics.ndcg_at_k(TOP_K, basket_matrix(BASKETS), k=3)
    expected_a = (1 / np.log2(3)) / (1 / np.log2(2) + 1 / np.log2(3))
    expected_d = (1 / np.log2(4)) / (1 / np.log2(2))
    np.testing.assert_allclose(ndcg, [expected_a, 0.0, 1.0, expected_d])
    assert expected_a == pytest.approx(0.386853, abs=1e-6)


def test_ranking_metrics_use_only_the_first_k_columns() -> None:
    wide = np.hstack([TOP_K, np.array([[4], [2], [4], [0]])])
    shown = metrics.ranking_metrics(wide, basket_matrix(BASKETS), k=3)
    assert set(shown) == {"hr@3", "recall@3", "ndcg@3"}
    np.testing.assert_allclose(shown["recall@3"], [1 / 2, 0, 1, 1])
    # With four columns B now hits at rank 4 and A hits both basket items.
    np.testing.assert_allclose(
        metrics.recall_at_k(wide, basket_matrix(BASKETS), k=4), [2 / 2, 1 / 1, 3 / 4, 1 / 1]
    )


def test_summary_is_a_mean_per_customer_overall_and_per_group() -> None:
    per_customer = metrics.ranking_metrics(TOP_K, basket_matrix(BASKETS), k=3)
    summary = metrics.summarise_by_group(per_customer, GROUPS)
    assert summary.index.tolist() == [metrics.OVERALL, "x", "y"]
    assert summary["customers"].tolist() == [4, 2, 2]
    assert summary.loc[metrics.OVERALL, "hr@3"] == pytest.approx(3 / 4)
    assert summary.loc["x", "recall@3"] == pytest.approx((1 / 2 + 1) / 2)
    assert summary.loc["y", "recall@3"] == pytest.approx((0 + 1) / 2)


def test_top_k_items_ranks_by_score_and_breaks_ties_by_column() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 2.0], [0.0, 0.0, 0.0, 0.0, 5.0]])
    assert metrics.top_k_items(scores, 3).tolist() == [[1, 2, 4], [4, 0, 1]]


def test_bad_ranking_input_is_refused() -> None:
    targets = basket_matrix(BASKETS)
    with pytest.raises(ValueError, match="empty"):
        metrics.recall_at_k(TOP_K, basket_matrix([{1}, set(), {2}, {3}]), k=3)
    with pytest.raises(ValueError, match="outside the catalogue"):
        metrics.hit_rate_at_k(TOP_K + 3, targets, k=3)
    with pytest.raises(ValueError, match="at least k=4"):
        metrics.ndcg_at_k(TOP_K, targets, k=4)
    with pytest.raises(ValueError, match="one row per customer"):
        metrics.hit_rate_at_k(TOP_K[:2], targets, k=3)


# Scores of two negatives and two positives; positives outscore negatives in 3 of 4 pairs.
SCORES = np.array([0.1, 0.4, 0.35, 0.8])
LABELS = np.array([0, 0, 1, 1])


def test_roc_auc_is_the_share_of_correctly_ordered_pairs() -> None:
    assert metrics.roc_auc(SCORES, LABELS) == pytest.approx(3 / 4)


def test_pr_auc_is_average_precision() -> None:
    # Descending: 0.8 (pos), 0.4 (neg), 0.35 (pos): precision 1/1 at recall 1/2, 2/3 at 1.
    assert metrics.pr_auc(SCORES, LABELS) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_brier_is_the_mean_squared_error_of_probabilities() -> None:
    expected = (0.1**2 + 0.4**2 + 0.65**2 + 0.2**2) / 4
    assert metrics.brier(SCORES, LABELS) == pytest.approx(expected)


def test_binned_counts_and_their_auc_by_hand() -> None:
    positive, negative = metrics.binned_score_counts(SCORES, LABELS, bins=2)
    assert positive.tolist() == [1, 1] and negative.tolist() == [2, 0]
    # Positive in bin 2 beats both negatives; positive in bin 1 ties with both: (2 + 1) / 4.
    assert metrics.auc_from_binned_counts(positive, negative) == pytest.approx(3 / 4)
    # Edge scores: 0 goes to the first bin, 1 to the last (closed on the right), 0.5 up.
    positive, negative = metrics.binned_score_counts([0.0, 0.5, 1.0], [1, 0, 1], bins=2)
    assert positive.tolist() == [1, 1] and negative.tolist() == [0, 1]


def test_binned_auc_matches_exact_auc_within_the_same_bin_bound() -> None:
    rng = np.random.default_rng(7)
    labels = rng.random(5000) < 0.4
    scores = 1 / (1 + np.exp(-(rng.normal(size=5000) + labels)))
    exact = metrics.roc_auc(scores, labels)
    for bins in (10, 100, 1000):
        positive, negative = metrics.binned_score_counts(scores, labels, bins)
        assert positive.sum() == labels.sum() and negative.sum() == (~labels).sum()
        # Only pairs inside one bin are misjudged (as ties), each by at most 1/2.
        bound = 0.5 * (positive @ negative) / (positive.sum() * negative.sum())
        binned = metrics.auc_from_binned_counts(positive, negative)
        assert abs(binned - exact) <= bound + 1e-12
    assert bound < 1e-3 and abs(binned - exact) < 1e-3


def test_binned_auc_of_pooled_sites_equals_auc_over_all_customers() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(3000) < 0.5
    scores = np.clip(rng.normal(0.5, 0.2, 3000) + 0.1 * labels, 0, 1)
    sites = np.array_split(np.arange(3000), [200, 500])
    counts = [metrics.binned_score_counts(scores[i], labels[i]) for i in sites]
    pooled = metrics.auc_from_binned_counts(sum(c[0] for c in counts), sum(c[1] for c in counts))
    whole = metrics.auc_from_binned_counts(*metrics.binned_score_counts(scores, labels))
    assert pooled == pytest.approx(whole)
    assert pooled == pytest.approx(metrics.roc_auc(scores, labels), abs=1e-3)


def test_bad_churn_input_is_refused() -> None:
    with pytest.raises(ValueError, match=r"in \[0.0, 1.0\]"):
        metrics.binned_score_counts([0.2, 1.5], [0, 1])
    with pytest.raises(ValueError, match="0/1"):
        metrics.roc_auc([0.2, 0.3], [0, 2])
    with pytest.raises(ValueError, match="2 scores but 3 labels"):
        metrics.brier([0.2, 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="finite"):
        metrics.pr_auc([np.nan, 0.3], [0, 1])
    assert np.isnan(metrics.auc_from_binned_counts(np.array([3, 1]), np.array([0, 0])))
