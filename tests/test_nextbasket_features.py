"""Per-customer next-basket examples: no look-ahead, one example per customer, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models.recommender.features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    EvaluationExamples,
    TrainingExamples,
    build_histories,
    collate_examples,
    personal_features,
)

VOCABULARY = ["10001", "10002", "10003", "10004", "10005"]


def orders(rows: list[tuple[str, str, str, str]]) -> pd.DataFrame:
    """Canonical purchase lines from (customer, order, item, ISO time) tuples."""
    customer, order, item, time = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "customer": list(customer),
            "order_id": list(order),
            "item_id": list(item),
            "quantity": np.full(len(rows), 2, dtype=np.int64),
            "unit_price": np.ones(len(rows)),
            "timestamp": pd.to_datetime(list(time), utc=True),
            "storefront": "France",
            "is_return": False,
        }
    )


# Customer "a": four invoices (given out of time order); "b": one invoice; "c": two.
ROWS = [
    ("a", "o3", "10003", "2011-03-01 10:00"),
    ("a", "o1", "10001", "2011-01-01 10:00"),
    ("a", "o1", "10002", "2011-01-01 10:05"),
    ("a", "o2", "10001", "2011-02-01 10:00"),
    ("a", "o4", "10004", "2011-04-01 10:00"),
    ("a", "o4", "10001", "2011-04-01 10:00"),
    ("b", "p1", "10005", "2011-01-01 10:00"),
    ("c", "q1", "10002", "2011-01-01 10:00"),
    ("c", "q2", "10002", "2011-05-01 10:00"),
    ("c", "q2", "99999", "2011-05-01 10:00"),  # outside the vocabulary: dropped
]


@pytest.fixture
def histories():
    return build_histories(orders(ROWS), VOCABULARY)


def test_histories_are_invoices_in_time_order(histories):
    a = histories["a"]
    assert a.num_invoices == 4
    assert [a.invoice_items(j).tolist() for j in range(4)] == [[0, 1], [0], [2], [0, 3]]
    assert np.all(np.diff(a.invoice_days) > 0)
    assert histories["c"].invoice_items(1).tolist() == [1]


def test_features_of_a_prefix_match_hand_computed_values(histories):
    items, features = personal_features(histories["a"], 3)  # invoices o1, o2, o3
    assert items.tolist() == [0, 1, 2]
    column = {name: features[:, i] for i, name in enumerate(FEATURE_NAMES)}
    np.testing.assert_allclose(column["share_of_invoices_with_item"], [2 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(column["log_invoices_with_item"], np.log1p([2, 1, 1]) / 5)
    assert column["in_last_invoice"].tolist() == [0.0, 0.0, 1.0]
    # item 0 was last bought on Feb 1, 28 days before the reference time (Mar 1).
    np.testing.assert_allclose(
        column["log_days_since_last_purchase"][0], np.log1p(28) / np.log1p(365), rtol=1e-6
    )
    assert features.shape == (3, NUM_FEATURES) and features.dtype == np.float32


def test_training_features_never_read_the_target_or_later_invoices(histories):
    """No look-ahead: an example's features depend only on invoices before its target."""
    dataset = TrainingExamples(histories, target_window=None, seed=3)
    a = dataset.customers.index("a")
    lines = [0, 2, 3, 4]  # lines of customer a (time order) in the invoices before each
    seen_targets = set()
    for epoch in range(40):
        dataset.set_epoch(epoch)
        target = dataset.target_invoice(a)
        seen_targets.add(target)
        example = dataset[a]
        assert example["target_items"].tolist() == histories["a"].invoice_items(target).tolist()
        # The history items are exactly those of the invoices before the target ...
        before = np.unique(np.concatenate([histories["a"].invoice_items(j) for j in range(target)]))
        assert example["history_items"].tolist() == before.tolist()
        # ... and changing the target invoice and everything after it changes no feature.
        truncated = build_histories(
            orders(sorted((r for r in ROWS if r[0] == "a"), key=lambda r: r[3])[: lines[target]]),
            VOCABULARY,
        )["a"]
        _, expected = personal_features(truncated, target)
        np.testing.assert_array_equal(example["features"].numpy(), expected)
    assert seen_targets == {1, 2, 3}  # never invoice 0: it has no history before it


def test_one_example_per_customer_with_two_invoices(histories):
    dataset = TrainingExamples(histories)
    assert dataset.customers == ["a", "c"]  # "b" has one invoice
    assert dataset.skipped == 1
    # default window 1: the last invoice is the target
    c = dataset.customers.index("c")
    assert dataset[c]["target_items"].tolist() == [1]


def test_target_draws_are_deterministic_under_a_seed(histories):
    def draws(seed: int) -> list[int]:
        dataset = TrainingExamples(histories, target_window=None, seed=seed)
        result = []
        for epoch in range(20):
            dataset.set_epoch(epoch)
            result.append(dataset.target_invoice(0))
        return result

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_evaluation_uses_whole_history_and_keeps_basket_order(histories):
    baskets = pd.Series({"c": ["10003", "99999"], "a": ["10005"]})
    dataset = EvaluationExamples(histories, baskets, VOCABULARY)
    assert dataset.customers == ["c", "a"]
    assert dataset[0]["target_items"].tolist() == [2]  # unknown item left out
    assert dataset[1]["history_items"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="no training history"):
        EvaluationExamples(histories, pd.Series({"zz": ["10001"]}), VOCABULARY)


def test_collate_packs_histories_and_pads_targets(histories):
    dataset = EvaluationExamples(
        histories, pd.Series({"a": ["10001", "10005"], "c": ["10002"]}), VOCABULARY
    )
    batch = collate_examples([dataset[0], dataset[1]])
    assert batch["history_offsets"].tolist() == [0, 4]
    assert batch["history_example"].tolist() == [0, 0, 0, 0, 1]
    assert batch["history_items"].tolist() == [0, 1, 2, 3, 1]
    assert batch["features"].shape == (5, NUM_FEATURES)
    assert batch["target_items"].tolist() == [[0, 4], [1, 0]]
    assert batch["target_mask"].tolist() == [[True, True], [True, False]]
    assert next(iter(batch.values())).shape[0] == 2  # first entry: one row per example
    assert torch.equal(batch["features"][4], dataset[1]["features"][0])
