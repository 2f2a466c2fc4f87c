"""The validation protocols: second-to-last invoices for the recommender, an earlier cutoff
for churn; nothing of the test data reaches them, and they are deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models import schema
from models.churn.protocol import churn_cutoff, churn_data
from models.churn.validation import churn_validation_data, validation_cutoff
from models.recommender.features import EvaluationExamples, TrainingExamples, build_histories
from models.recommender.model import NextBasketRecommender, train_recommender
from models.recommender.protocol import NextBasketSplit, clean_purchases, split_next_basket
from models.recommender.validation import split_next_basket_validation, without_test_invoices
from simulations.synthetic import generate_orders
from tests.test_churn_protocol import HAND_MADE as CHURN_HAND_MADE
from tests.test_nextbasket_protocol import HAND_MADE, order_lines


def invoice_keys(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame[schema.CUSTOMER], frame[schema.ORDER], strict=True))


def assert_same_split(left: NextBasketSplit, right: NextBasketSplit) -> None:
    pd.testing.assert_frame_equal(left.train, right.train)
    assert left.test_baskets.index.equals(right.test_baskets.index)
    assert all(
        np.array_equal(a, b) for a, b in zip(left.test_baskets, right.test_baskets, strict=True)
    )
    assert left.home_storefront.equals(right.home_storefront)
    assert left.items.equals(right.items)


def test_validation_basket_is_the_second_to_last_invoice_by_hand() -> None:
    validation = split_next_basket_validation(HAND_MADE)
    # a: invoices 101 < 102 < 103 (test); 102 is the validation basket, 101 its history.
    # b: two invoices, 202 is its test basket, so 201 alone remains: training only.
    assert validation.test_customers.tolist() == ["a"]
    assert validation.test_baskets["a"].tolist() == ["20000"]
    assert sorted(invoice_keys(validation.train)) == [("a", "101"), ("b", "201"), ("c", "301")]
    # 20001 was bought only in a's test invoice: the validation catalogue does not know it.
    assert "20001" not in validation.items
    assert "20001" in split_next_basket(HAND_MADE).items


def test_without_test_invoices_drops_every_line_of_them() -> None:
    postage = order_lines([("a", "103", "POST", 1, 18.0, "2011-03-01 10:05", "France", False)])
    with_postage = pd.concat([HAND_MADE, postage])
    kept = without_test_invoices(with_postage)
    assert not invoice_keys(kept) & {("a", "103"), ("b", "202")}
    assert len(kept) == len(with_postage) - 5  # a's 103: three lines and the postage; b's 202


@pytest.fixture(scope="module")
def synthetic() -> pd.DataFrame:
    return generate_orders(n_storefronts=3, n_customers=300, n_items=60, seed=4)


def scrambled_test_invoices(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` whose test-invoice lines buy other items in other quantities at other
    prices (timestamps kept, so the same invoices stay last)."""
    test = split_next_basket(frame)
    tested = invoice_keys(clean_purchases(frame)) - invoice_keys(test.train)
    in_test = np.array([key in tested for key in invoice_keys_rows(frame)])
    changed = frame.copy()
    changed.loc[in_test, schema.ITEM] = "99999"
    changed.loc[in_test, schema.QUANTITY] = 1000
    changed.loc[in_test, schema.UNIT_PRICE] = 77.0
    assert in_test.sum() > 0
    return changed


def invoice_keys_rows(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(frame[schema.CUSTOMER], frame[schema.ORDER], strict=True))


def test_validation_baskets_are_the_second_to_last_invoices(synthetic) -> None:
    test = split_next_basket(synthetic)
    validation = split_next_basket_validation(synthetic)
    purchases = clean_purchases(synthetic)
    invoices = (
        purchases.groupby([schema.CUSTOMER, schema.ORDER])[schema.TIMESTAMP]
        .min()
        .reset_index()
        .sort_values([schema.CUSTOMER, schema.TIMESTAMP, schema.ORDER])
    )
    counts = invoices.groupby(schema.CUSTOMER).size()
    assert validation.test_customers.tolist() == counts[counts >= 3].index.tolist()
    assert set(validation.test_customers) <= set(test.test_customers)
    repeat = invoices[invoices[schema.CUSTOMER].isin(validation.test_customers)]
    second_to_last = repeat.groupby(schema.CUSTOMER).nth(-2)
    assert len(second_to_last) == len(validation.test_customers)
    for customer, order in invoice_keys_rows(second_to_last):
        bought = purchases[
            (purchases[schema.CUSTOMER] == customer) & (purchases[schema.ORDER] == order)
        ]
        assert validation.test_baskets[customer].tolist() == sorted(set(bought[schema.ITEM]))


def test_no_test_invoice_line_reaches_validation(synthetic) -> None:
    test = split_next_basket(synthetic)
    validation = split_next_basket_validation(synthetic)
    tested = invoice_keys(clean_purchases(synthetic)) - invoice_keys(test.train)
    assert not invoice_keys(validation.train) & tested
    # Scrambling every test-invoice line changes nothing the validation protocol gives...
    scrambled = split_next_basket_validation(scrambled_test_invoices(synthetic))
    assert_same_split(validation, scrambled)
    assert "99999" not in scrambled.items
    # ... so neither the features and examples nor the trained item bias.
    weights = []
    for split in (validation, scrambled):
        histories = build_histories(split.train, split.items)
        examples = EvaluationExamples(histories, split.test_baskets, split.items)
        torch.manual_seed(0)
        model = NextBasketRecommender(len(split.items))
        train_recommender(
            model, TrainingExamples(histories), epochs=1, batch_size=32, lr=0.01, seed=0
        )
        weights.append((examples[0]["features"], model.item_bias.bias.detach().clone()))
    assert torch.equal(weights[0][0], weights[1][0])
    assert torch.equal(weights[0][1], weights[1][1])


def test_nextbasket_validation_is_deterministic(synthetic) -> None:
    shuffled = synthetic.sample(frac=1.0, random_state=1).reset_index(drop=True)
    first, again = split_next_basket_validation(synthetic), split_next_basket_validation(shuffled)
    assert first.test_baskets.index.equals(again.test_baskets.index)
    assert all(
        np.array_equal(a, b) for a, b in zip(first.test_baskets, again.test_baskets, strict=True)
    )
    assert first.items.equals(again.items)
    assert sorted(invoice_keys_rows(first.train)) == sorted(invoice_keys_rows(again.train))


def test_churn_validation_cutoff_and_labels_by_hand() -> None:
    # Test cutoff 2011-03-03 (last row 2011-06-01 − 90 days): validation cutoff 2010-12-03.
    data = churn_validation_data(CHURN_HAND_MADE)
    assert data.cutoff == pd.Timestamp("2010-12-03 00:00", tz="UTC")
    # Only y had bought by then (2010-12-01); y bought again on 2011-01-15, before the
    # test cutoff: not churned. Its purchase of 2011-06-01 is after the test cutoff.
    assert data.labels.to_dict() == {"y": 0}
    assert data.features.loc["y", "frequency"] == 1.0


def test_churn_validation_reads_nothing_after_the_test_cutoff(synthetic) -> None:
    test_cutoff = churn_cutoff(synthetic)
    validation = churn_validation_data(synthetic)
    assert (
        validation.cutoff == validation_cutoff(test_cutoff) == test_cutoff - pd.Timedelta(days=90)
    )
    # Every customer buys again after the test cutoff, or every later row is gone: the
    # validation population, features, labels and holdout stay the same.
    later = synthetic[synthetic[schema.TIMESTAMP] > test_cutoff]
    everyone = synthetic.drop_duplicates(schema.CUSTOMER).assign(
        **{schema.TIMESTAMP: test_cutoff + pd.Timedelta(days=1), schema.IS_RETURN: False}
    )
    for changed in (
        synthetic.drop(later.index),
        pd.concat([synthetic, everyone], ignore_index=True),
    ):
        again = churn_validation_data(changed, test_cutoff=test_cutoff)
        pd.testing.assert_frame_equal(again.features, validation.features)
        assert again.labels.equals(validation.labels)
        assert again.holdout.equals(validation.holdout)
    # The test labels, in contrast, are exactly what such rows decide.
    assert churn_data(pd.concat([synthetic, everyone])).labels.sum() == 0


def test_churn_validation_is_deterministic(synthetic) -> None:
    first = churn_validation_data(synthetic)
    again = churn_validation_data(synthetic.sample(frac=1.0, random_state=2))
    pd.testing.assert_frame_equal(first.features, again.features)
    assert first.labels.equals(again.labels)
    assert first.holdout.equals(again.holdout)


def test_bundled_validation_populations(bundled_orders) -> None:
    frame = bundled_orders[0]
    validation = split_next_basket_validation(frame)
    storefronts = validation.test_storefronts()
    assert len(storefronts) == 1998  # the 2,829 test customers with at least 3 invoices
    assert (storefronts != "United Kingdom").sum() == 179
    assert len(validation.items) == 3644  # 15 items were bought only in test baskets
    churn = churn_validation_data(frame)
    assert churn.cutoff == pd.Timestamp("2011-06-12 12:50", tz="UTC")
    assert len(churn.labels) == 2815
    assert churn.labels.mean() == pytest.approx(0.523, abs=5e-4)
    assert churn.holdout.sum() == 558
