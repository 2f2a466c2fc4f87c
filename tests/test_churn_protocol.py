"""The churn protocol: features by hand, no leakage from after the cutoff, the fixed holdout,
and the reference population of the bundled data."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from models import schema
from models.churn.protocol import (
    FEATURES,
    ChurnData,
    churn_cutoff,
    churn_data,
    churn_features,
    churn_labels,
    first_invoices,
    holdout_mask,
)
from tests.test_nextbasket_protocol import order_lines

HAND_MADE = order_lines(
    [
        # x: two purchase invoices and one cancellation before the cutoff, nothing after.
        ("x", "1", "10001", 2, 1.5, "2011-01-01 00:00", "France", False),
        ("x", "1", "10002", 1, 4.0, "2011-01-01 00:00", "France", False),
        ("x", "C3", "10002", -1, 4.0, "2011-02-01 00:00", "France", True),
        ("x", "2", "10001", 3, 2.0, "2011-03-01 00:00", "France", False),
        # y: an old purchase, one within 90 days of the cutoff, and one after it.
        ("y", "4", "10003", 1, 10.0, "2010-12-01 00:00", "Spain", False),
        ("y", "5", "10003", 2, 10.0, "2011-01-15 00:00", "Spain", False),
        ("y", "6", "10004", 1, 1.0, "2011-06-01 00:00", "Spain", False),
        # z only cancelled before the cutoff; w only bought after it: neither is in.
        ("z", "C7", "10001", -1, 1.5, "2011-02-10 00:00", "Spain", True),
        ("z", "8", "10001", 1, 1.5, "2011-04-10 00:00", "Spain", False),
        ("w", "9", "10001", 1, 1.5, "2011-05-10 00:00", "Spain", False),
    ]
)


def test_cutoff_is_the_last_timestamp_minus_90_days() -> None:
    assert churn_cutoff(HAND_MADE) == pd.Timestamp("2011-03-03 00:00", tz="UTC")


def test_features_and_labels_by_hand() -> None:
    data = churn_data(HAND_MADE)
    assert data.features.index.tolist() == ["x", "y"]
    assert data.features.columns.tolist() == list(FEATURES)
    expected = pd.DataFrame(
        {
            # recency, tenure: days from last / first purchase to 2011-03-03
            "recency": [2.0, 47.0],
            "tenure": [61.0, 92.0],
            "frequency": [2.0, 2.0],
            "monetary": [2 * 1.5 + 4.0 + 3 * 2.0, 10.0 + 20.0],
            "distinct_items": [2.0, 1.0],
            "lines": [3.0, 2.0],
            "average_basket_value": [13.0 / 2, 30.0 / 2],
            "cancellations": [1.0, 0.0],
            # 90 days before the cutoff is 2010-12-03: y's first invoice is older.
            "recent_invoices": [2.0, 1.0],
        },
        index=pd.Index(["x", "y"], name=schema.CUSTOMER),
    )
    pd.testing.assert_frame_equal(data.features, expected)
    assert data.labels.to_dict() == {"x": 1, "y": 0}
    assert data.storefront.to_dict() == {"x": "France", "y": "Spain"}


def test_a_cancellation_after_the_cutoff_is_not_activity() -> None:
    later = order_lines([("x", "C10", "10001", -1, 2.0, "2011-05-01 00:00", "France", True)])
    data = churn_data(pd.concat([HAND_MADE, later], ignore_index=True))
    assert data.labels["x"] == 1


def test_empty_population_is_refused() -> None:
    with pytest.raises(ValueError, match="no customer has a purchase"):
        churn_data(HAND_MADE[HAND_MADE[schema.CUSTOMER] == "w"])


@pytest.fixture(scope="module")
def bundled(bundled_orders) -> ChurnData:
    return churn_data(bundled_orders[0])


def test_bundled_population_and_churn_rate(bundled) -> None:
    assert len(bundled.features) == 3368
    assert round(bundled.labels.mean(), 3) == 0.430
    assert np.isfinite(bundled.features.to_numpy()).all()
    assert (bundled.features.to_numpy() >= 0).all()


def test_uk_local_time_changes_population_and_labels_not(bundled_orders, bundled) -> None:
    local = bundled_orders[0].copy()
    local[schema.TIMESTAMP] = local[schema.TIMESTAMP].dt.tz_convert("Europe/London")
    # The cutoff taken on UK wall-clock time is an hour earlier (summer time) than on UTC.
    wall_clock = local[schema.TIMESTAMP].max().tz_localize(None) - pd.Timedelta(days=90)
    cutoff = wall_clock.tz_localize("Europe/London")
    assert bundled.cutoff - cutoff == pd.Timedelta(hours=1)
    features = churn_features(local, cutoff)
    assert features.index.equals(bundled.features.index)
    assert churn_labels(local, cutoff, features.index).equals(bundled.labels)
    changed = (features != bundled.features).sum()
    assert changed[["recency", "tenure"]].tolist() == [3368, 3368]  # all shift by 1/24 day
    assert changed.drop(["recency", "tenure", "recent_invoices"]).sum() == 0
    # The 90-day window start moves by the same hour: 7 customers had an invoice in it.
    assert changed["recent_invoices"] == 7


def test_rows_after_the_cutoff_change_no_feature(bundled_orders, bundled) -> None:
    frame = bundled_orders[0].copy()
    after = frame[schema.TIMESTAMP] > bundled.cutoff
    assert after.sum() > 10_000
    rng = np.random.default_rng(0)
    later = frame[after].sample(frac=0.5, random_state=1).copy()
    later[schema.QUANTITY] = rng.integers(-50, 50, len(later))
    later[schema.UNIT_PRICE] = rng.random(len(later)) * 100
    later[schema.ITEM] = "99999"
    later[schema.IS_RETURN] = rng.random(len(later)) < 0.5
    later[schema.CUSTOMER] = rng.permutation(later[schema.CUSTOMER].to_numpy())
    mutated = pd.concat([frame[~after], later], ignore_index=True)

    features = churn_features(mutated, bundled.cutoff)
    pd.testing.assert_frame_equal(features, bundled.features)
    dropped = churn_features(frame[~after], bundled.cutoff)
    pd.testing.assert_frame_equal(dropped, bundled.features)


def test_holdout_is_a_fifth_of_every_storefront_and_label(bundled) -> None:
    strata = pd.DataFrame(
        {"storefront": bundled.storefront, "label": bundled.labels, "held": bundled.holdout}
    ).groupby(["storefront", "label"])["held"]
    expected = np.floor(0.2 * strata.size() + 0.5)
    pd.testing.assert_series_equal(strata.sum().astype(float), expected, check_names=False)
    assert bundled.holdout.sum() == 670
    held_out, train = bundled.part(held_out=True), bundled.part(held_out=False)
    assert len(held_out.features) + len(train.features) == 3368
    assert held_out.holdout.all() and not train.holdout.any()


@pytest.fixture(scope="module")
def anchors(bundled_orders, bundled) -> pd.Series:
    return first_invoices(bundled_orders[0], bundled.cutoff).loc[bundled.features.index]


def test_first_invoice_anchor_by_hand() -> None:
    cutoff = churn_cutoff(HAND_MADE)
    assert first_invoices(HAND_MADE, cutoff).to_dict() == {
        "x": "1@2011-01-01T00:00:00+00:00",
        "y": "4@2010-12-01T00:00:00+00:00",
    }


def test_a_site_picks_its_own_holdout_customers(bundled, anchors) -> None:
    for storefront in ("Germany", "France", "Spain"):
        mine = bundled.storefront == storefront
        local = holdout_mask(bundled.storefront[mine], bundled.labels[mine], anchors[mine])
        pd.testing.assert_series_equal(local, bundled.holdout[mine])


def test_holdout_does_not_depend_on_the_site_key(bundled_orders, bundled) -> None:
    # Re-keying the tokens (as another site key would) keeps the same held-out customers.
    frame = bundled_orders[0].copy()
    tokens = frame[schema.CUSTOMER].unique()
    rekey = {token: hashlib.sha256(token.encode()).hexdigest() for token in tokens}
    frame[schema.CUSTOMER] = frame[schema.CUSTOMER].map(rekey)
    rekeyed = churn_data(frame)
    held_out = set(rekeyed.holdout[rekeyed.holdout].index)
    assert held_out == {rekey[t] for t in bundled.holdout[bundled.holdout].index}


def test_holdout_seed_changes_the_choice_not_the_counts(bundled, anchors) -> None:
    again = holdout_mask(bundled.storefront, bundled.labels, anchors)
    other = holdout_mask(bundled.storefront, bundled.labels, anchors, seed=1)
    pd.testing.assert_series_equal(again, bundled.holdout)
    assert other.sum() == again.sum()
    assert (other & again).sum() < 0.5 * again.sum()
