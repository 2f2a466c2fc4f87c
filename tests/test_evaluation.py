"""Server-side pooling of evaluation replies into overall and per-storefront estimates,
each with the spread its sites' stated noise gives it."""

import math

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from common import wire
from models.churn import model as churn
from models.metrics import brier, roc_auc
from models.recommender import model as recommender
from models.registry import get_model
from privacy import release
from server.evaluation import evaluation_aggregator

aggregate_churn = evaluation_aggregator(get_model("churn"))
aggregate_recommender = evaluation_aggregator(get_model("recommender"))


def reply(storefront: str, answer: dict, customers: float, noise: float = 0.0) -> RecordDict:
    metrics = {
        **answer,
        wire.NUM_EXAMPLES: customers,
        wire.NOISE_SD: noise,
        wire.NUM_EXAMPLES_NOISE_SD: noise,
        wire.EPSILON: 1.0,
        wire.EVALUATION_EPSILON: 0.5,
    }
    return RecordDict(
        {
            wire.METRICS: MetricRecord(metrics),
            wire.SITE: ConfigRecord({wire.STOREFRONT: storefront}),
        }
    )


def churn_answer(scores: np.ndarray, labels: np.ndarray) -> dict:
    values = {churn.SCORE_HISTOGRAM: churn.score_cells(scores, labels)}
    return release.exact_values(churn.MODEL.evaluation_queries, values)


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
    pooled = aggregate_churn(
        [reply("High", churn_answer(*high), 300), reply("Low", churn_answer(*low), 200)], ""
    )
    scores = np.concatenate([high[0], low[0]])
    labels = np.concatenate([high[1], low[1]])
    assert pooled["High/roc-auc"] == pooled["Low/roc-auc"] == 1.0
    # Cells of width 0.1: pairs across sites are told apart as finely as the cells.
    assert pooled["roc-auc"] == pytest.approx(roc_auc(scores, labels), abs=1e-2)
    assert pooled["roc-auc"] < 0.9
    assert pooled["brier"] == pytest.approx(brier(scores, labels), abs=0.05**2)
    assert pooled["num-customers"] == 500 and pooled["High/num-customers"] == 300
    assert pooled["churn-rate"] == pytest.approx(labels.mean())
    assert pooled["roc-auc-sd"] == 0.0  # noise-free answers: no spread


def test_noisy_answers_pool_to_an_estimate_within_its_stated_spread():
    """Released answers (the real mechanism, noise multiplier 2) of two sites over 150
    releases: the pooled AUC is unbiased, its stated spread matches the releases' own, and
    most estimates lie within two stated standard deviations of the exact figure. OpenDP's
    samplers take no seed, so the bounds leave room for chance (each fails well under 0.1 %
    of runs) while still catching a spread understated by a third."""
    rng = np.random.default_rng(3)
    sites = [site_scores(rng, n, (0.0, 0.7), (0.3, 1.0)) for n in (400, 150)]
    exact = aggregate_churn(
        [reply(f"s{i}", churn_answer(*s), len(s[1])) for i, s in enumerate(sites)], ""
    )
    estimates, spreads = [], []
    for _ in range(150):
        replies = []
        for index, (scores, labels) in enumerate(sites):
            values = {churn.SCORE_HISTOGRAM: churn.score_cells(scores, labels)}
            answer = release.release(churn.MODEL.evaluation_queries, values, 2.0, rng)
            replies.append(reply(f"s{index}", answer, len(labels) + rng.normal(0, 2.0), 2.0))
        pooled = aggregate_churn(replies, "")
        estimates.append(pooled["roc-auc"])
        spreads.append(pooled["roc-auc-sd"])
    estimates = np.array(estimates)
    assert abs(estimates.mean() - exact["roc-auc"]) < 3 * np.mean(spreads) / math.sqrt(150) + 0.005
    assert np.mean(spreads) == pytest.approx(estimates.std(), rel=0.25)
    within = np.abs(estimates - exact["roc-auc"]) < 2 * np.asarray(spreads)
    assert within.mean() >= 0.85


def test_a_reply_with_undocumented_or_mismatched_answers_is_left_out():
    rng = np.random.default_rng(1)
    answer = churn_answer(*site_scores(rng, 100, (0.0, 0.6), (0.4, 1.0)))
    good = reply("Good", answer, 100)
    leaky = reply("Leaky", answer, 100)
    leaky[wire.METRICS]["customer-scores"] = [0.1, 0.9]
    coarse = reply("Coarse", {churn.SCORE_HISTOGRAM: [1.0, 2.0]}, 100)  # cells of another grid
    pooled = aggregate_churn([good, leaky, coarse], "")
    assert pooled["num-customers"] == 100
    assert {key.split("/")[0] for key in pooled if "/" in key} == {"Good"}


def recommender_answer(hits, recall, ndcg) -> dict:
    return {
        recommender.HIT_SUM: float(np.sum(hits)),
        recommender.RECALL_SUM: float(np.sum(recall)),
        recommender.NDCG_SUM: float(np.sum(ndcg)),
    }


def test_recommender_metrics_are_means_over_all_test_customers():
    big = ([1, 0, 1, 1], [0.5, 0.0, 1.0, 0.25], [0.6, 0.0, 1.0, 0.3])
    small = ([0], [0.0], [0.0])
    pooled = aggregate_recommender(
        [reply("Big", recommender_answer(*big), 4), reply("Small", recommender_answer(*small), 1)],
        "",
    )
    assert pooled["hr@10"] == pytest.approx(3 / 5)  # per customer, not (0.75 + 0) / 2
    assert pooled["recall@10"] == pytest.approx(1.75 / 5)
    assert pooled["ndcg@10"] == pytest.approx(1.9 / 5)
    assert pooled["Big/hr@10"] == pytest.approx(0.75) and pooled["Small/hr@10"] == 0.0
    assert pooled["num-customers"] == 5


def test_noisy_sums_stay_within_zero_and_one_and_no_customers_give_no_number():
    noisy = reply(
        "Tiny",
        {recommender.HIT_SUM: 9.0, recommender.RECALL_SUM: -3.0, recommender.NDCG_SUM: 0.5},
        4,
        3.0,
    )
    pooled = aggregate_recommender([noisy], "")
    assert pooled["hr@10"] == 1.0 and pooled["recall@10"] == 0.0
    assert pooled["ndcg@10-sd"] > 0
    empty = aggregate_recommender([reply("Empty", recommender_answer([], [], []), 0)], "")
    assert empty["num-customers"] == 0 and math.isnan(empty["Empty/ndcg@10"])
