"""Server-side pooling of evaluation replies into overall and per-storefront metrics."""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from models import churn, recommender
from models.metrics import brier, roc_auc
from models.registry import get_model
from privacy import wire
from server.evaluation import evaluation_aggregator

aggregate_churn = evaluation_aggregator(get_model("churn"))
aggregate_recommender = evaluation_aggregator(get_model("recommender"))


MIN_COHORT = 20


def churn_reply(storefront: str, scores: np.ndarray, labels: np.ndarray) -> RecordDict:
    metrics = churn.evaluation_sums(scores, labels, MIN_COHORT)
    return RecordDict(
        {
            wire.METRICS: MetricRecord(metrics),
            wire.SITE: ConfigRecord({wire.STOREFRONT: storefront}),
        }
    )


def site_scores(rng, n: int, negative_range, positive_range):
    labels = rng.random(n) < 0.4
    scores = np.where(
        labels, rng.uniform(*positive_range, size=n), rng.uniform(*negative_range, size=n)
    )
    return scores, labels.astype(int)


def test_global_auc_pools_histograms_instead_of_averaging_site_aucs():
    rng = np.random.default_rng(0)
    # Each site separates its own customers perfectly, but the low site's churners
    # score below the high site's loyal customers: pooled AUC is well below 1.
    high = site_scores(rng, 300, (0.6, 0.7), (0.8, 0.9))
    low = site_scores(rng, 200, (0.1, 0.2), (0.3, 0.4))
    pooled = aggregate_churn([churn_reply("High", *high), churn_reply("Low", *low)], "")

    scores = np.concatenate([high[0], low[0]])
    labels = np.concatenate([high[1], low[1]])
    assert pooled["High/roc-auc"] == pooled["Low/roc-auc"] == 1.0
    # Across sites the bins (≥ 20 customers) tell churners from non-churners only coarsely.
    assert pooled["roc-auc"] == pytest.approx(roc_auc(scores, labels), abs=1e-2)
    assert pooled["roc-auc"] < 0.9
    assert pooled["brier"] == pytest.approx(brier(scores, labels))
    assert pooled["num-customers"] == 500 and pooled["High/num-customers"] == 300
    assert pooled["churn-rate"] == pytest.approx(labels.mean())


def test_a_reply_with_undocumented_or_mismatched_metrics_is_left_out():
    rng = np.random.default_rng(1)
    good = churn_reply("Good", *site_scores(rng, 100, (0.0, 0.6), (0.4, 1.0)))
    leaky = churn_reply("Leaky", *site_scores(rng, 100, (0.0, 0.6), (0.4, 1.0)))
    leaky[wire.METRICS]["customer-scores"] = [0.1, 0.9]
    coarse = churn_reply("Coarse", *site_scores(rng, 100, (0.0, 0.6), (0.4, 1.0)))
    coarse[wire.METRICS][churn.SCORE_BINS_POSITIVE] = [1, 2]  # edges name more bins
    coarse[wire.METRICS][churn.SCORE_BINS_NEGATIVE] = [3, 4]
    pooled = aggregate_churn([good, leaky, coarse], "")
    assert pooled["num-customers"] == 100
    assert {key.split("/")[0] for key in pooled if "/" in key} == {"Good"}


def test_no_churn_bin_holds_fewer_customers_than_the_minimum_cohort():
    rng = np.random.default_rng(2)
    for size in (20, 57, 300):
        scores, labels = site_scores(rng, size, (0.0, 0.7), (0.3, 1.0))
        sent = churn.evaluation_sums(scores, labels, MIN_COHORT)
        per_bin = np.add(sent[churn.SCORE_BINS_POSITIVE], sent[churn.SCORE_BINS_NEGATIVE])
        assert per_bin.sum() == size and per_bin.min() >= MIN_COHORT
        assert sent[churn.SCORE_BIN_EDGES][0] == 0
        assert sent[churn.SCORE_BIN_EDGES][-1] == churn.SCORE_CELLS
        # Within-site pairs are exact: the site's own AUC comes back to the last digit.
        summary = churn.MODEL.summarise([sent])
        assert summary["roc-auc"] == pytest.approx(roc_auc(scores, labels), abs=1e-12)


def recommender_reply(storefront: str, hits, recall, ndcg) -> RecordDict:
    metrics = {
        wire.NUM_EXAMPLES: len(hits),
        recommender.HIT_SUM: float(np.sum(hits)),
        recommender.RECALL_SUM: float(np.sum(recall)),
        recommender.NDCG_SUM: float(np.sum(ndcg)),
    }
    return RecordDict(
        {
            wire.METRICS: MetricRecord(metrics),
            wire.SITE: ConfigRecord({wire.STOREFRONT: storefront}),
        }
    )


def test_recommender_metrics_are_means_over_all_test_customers():
    big = ([1, 0, 1, 1], [0.5, 0.0, 1.0, 0.25], [0.6, 0.0, 1.0, 0.3])
    small = ([0], [0.0], [0.0])
    pooled = aggregate_recommender(
        [recommender_reply("Big", *big), recommender_reply("Small", *small)], ""
    )
    assert pooled["hr@10"] == pytest.approx(3 / 5)  # per customer, not (0.75 + 0) / 2
    assert pooled["recall@10"] == pytest.approx(1.75 / 5)
    assert pooled["ndcg@10"] == pytest.approx(1.9 / 5)
    assert pooled["Big/hr@10"] == pytest.approx(0.75) and pooled["Small/hr@10"] == 0.0
    assert pooled["num-customers"] == 5


def test_a_site_without_test_customers_reports_no_numbers():
    pooled = aggregate_recommender([recommender_reply("Empty", [], [], [])], "")
    assert pooled["num-customers"] == 0 and math.isnan(pooled["Empty/ndcg@10"])
