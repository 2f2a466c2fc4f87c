"""The time-respecting evaluation: each week's model sees only what happened before it."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from lab.benchmarks.rolling_cutoff import (
    WEEK,
    model_scores,
    per_customer_ndcg,
    weekly_splits,
)
from models import schema
from models.recommender.baselines import own_history_scores
from models.recommender.protocol import clean_purchases, last_invoices, split_next_basket
from simulations.synthetic import generate_orders


def test_every_week_trains_only_on_the_past_and_tests_its_own_baskets():
    frame = generate_orders(n_storefronts=3, n_customers=400, n_items=60, seed=3)
    since = datetime(2011, 8, 1, tzinfo=UTC)
    protocol = split_next_basket(frame)
    weeks = weekly_splits(frame, protocol, since)
    purchases = clean_purchases(frame)
    starts = purchases.groupby([schema.CUSTOMER, schema.ORDER], observed=True)[
        schema.TIMESTAMP
    ].min()
    last = last_invoices(purchases).set_index(schema.CUSTOMER)[schema.ORDER]

    assert len(weeks) >= 10
    assert [w.start for w in weeks] == sorted(w.start for w in weeks)
    scored = []
    for week in weeks:
        assert (week.split.train[schema.TIMESTAMP] < week.start).all()
        assert len(week.split.train) == (purchases[schema.TIMESTAMP] < week.start).sum()
        for customer, basket in week.split.test_baskets.items():
            basket_start = starts[(customer, last[customer])]
            assert week.start <= basket_start < week.start + WEEK
            np.testing.assert_array_equal(basket, protocol.test_baskets[customer])
            assert customer in set(week.split.train[schema.CUSTOMER])  # has a past
        scored += list(week.split.test_customers)
    late = [c for c in protocol.test_customers if starts[(c, last[c])] >= pd.Timestamp(since)]
    left_out = sum(w.without_history for w in weeks)
    assert len(scored) == len(set(scored)) == len(late) - left_out


def test_a_week_is_scored_by_a_trained_model_and_by_repeat_buying():
    frame = generate_orders(n_storefronts=2, n_customers=300, n_items=40, seed=4)
    week = weekly_splits(frame, split_next_basket(frame), datetime(2011, 10, 1, tzinfo=UTC))[-1]
    learned = per_customer_ndcg(week.split, model_scores(week.split, seed=0, epochs=2))
    repeat = per_customer_ndcg(week.split, own_history_scores(week.split))
    assert learned.shape == repeat.shape == (len(week.split.test_customers),)
    assert 0 < learned.mean() <= 1 and 0 < repeat.mean() <= 1
