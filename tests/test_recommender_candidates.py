"""The recommender-candidates benchmark: its repurchase-cycle feature reads the customer's
own history as documented, the item-trend candidate dates its examples as documented, its
candidate models keep exact per-example gradients, and its table puts every candidate next
to the current model and the baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lab.benchmarks.recommender_candidates import (
    CANDIDATES,
    DatedEvaluationExamples,
    DatedTrainingExamples,
    ItemTrendRecommender,
    RepurchaseCycleRecommender,
    markdown,
    repurchase_cycle,
    with_age,
)
from models.recommender.features import (
    NUM_FEATURES,
    CustomerHistory,
    collate_examples,
    personal_features,
)
from models.recommender.model import basket_loss


def history() -> CustomerHistory:
    """Invoices on days 0, 10, 20 and 50: item 1 in the first three (every 10 days, last
    bought 30 days ago), item 2 in the last only, item 3 on days 0 and 50."""
    baskets = [[1, 3], [1], [1], [2, 3]]
    return CustomerHistory(
        invoice_days=np.array([0.0, 10.0, 20.0, 50.0]),
        offsets=np.cumsum([0, *map(len, baskets)]),
        items=np.concatenate(baskets).astype(np.int64),
        quantities=np.ones(sum(map(len, baskets))),
    )


def test_the_repurchase_cycle_compares_the_last_purchase_with_the_mean_interval():
    items, features = personal_features(history(), 4)
    values = repurchase_cycle(torch.from_numpy(features)).tolist()
    cycle = dict(zip(items.tolist(), values, strict=True))
    clip = np.log(20.0)
    assert np.isclose(cycle[1], np.log((30 + 1) / (10 + 1)) / clip, atol=1e-4)  # overdue
    assert cycle[2] == 0.0  # bought once: no interval
    assert cycle[3] == -1.0  # just bought, 50 days between: (0 + 1) / (50 + 1) < 1/20, clipped


def test_a_dated_example_carries_its_target_baskets_age_in_years_and_zero_when_predicting():
    later = CustomerHistory(  # the site's data ends on day 415 with this customer
        invoice_days=np.array([15.0, 415.0]),
        offsets=np.array([0, 1, 2]),
        items=np.array([0, 4]),
        quantities=np.ones(2),
    )
    training = DatedTrainingExamples({"a": history(), "b": later}, seed=0)
    assert training.last_day == 415.0
    first, second = training[0], training[1]  # target: each customer's last invoice
    assert torch.all(first["features"][:, -1] == (415.0 - 50.0) / 365.0)
    assert torch.all(second["features"][:, -1] == 0.0)
    assert first["features"].shape[1] == NUM_FEATURES + 1
    evaluation = DatedEvaluationExamples({"a": history()}, {"a": ["x"]}, ["w", "x"])
    assert torch.all(evaluation[0]["features"][:, -1] == 0.0)


@pytest.mark.parametrize("candidate", ["repurchase-cycle", "item-trend"])
def test_the_candidate_models_give_exact_per_example_gradients(candidate: str):
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(5):
        items, features = personal_features(history(), int(rng.integers(1, 5)))
        example = {
            "history_items": torch.from_numpy(items),
            "features": torch.from_numpy(features),
            "target_items": torch.tensor([int(rng.integers(0, 6))]),
        }
        if candidate == "item-trend":
            example = with_age(example, float(rng.uniform(0, 2)))
        examples.append(example)
    torch.manual_seed(0)
    if candidate == "repurchase-cycle":
        model = RepurchaseCycleRecommender(6)
    else:
        model = ItemTrendRecommender(6)
        with torch.no_grad():  # a trend away from zero, so its gradient reaches the others
            model.item_trend.normal_()
    batch = collate_examples(examples)
    logits = model(batch)
    losses = basket_loss(lambda _: logits, batch)
    logit_grads = torch.autograd.grad(losses.sum(), logits)[0]
    with torch.no_grad():
        computed = model.per_example_gradients(batch, logit_grads)
    for name, parameter in model.named_parameters():
        expected = []
        for example in examples:
            model.zero_grad()
            basket_loss(model, collate_examples([example])).sum().backward()
            expected.append(parameter.grad.clone())
        torch.testing.assert_close(computed[parameter], torch.stack(expected), msg=name)


def test_the_table_shows_each_candidate_against_the_current_model_and_the_baseline():
    current, other = CANDIDATES[0].name, CANDIDATES[1].name
    results = {
        (current, 1.0): [0.25, 0.26],
        (other, 1.0): [0.27, 0.28],
        (current, 8.0): [0.28, 0.28],
        (other, 8.0): [0.27, 0.27],
    }
    text = markdown("cmd", results, 0.2769, [0, 1], [1.0, 8.0], 1998, 12.0)
    assert text.startswith("## Recommender candidates on validation (issue #12)\n")
    assert "Command: `cmd`" in text
    assert f"| {other} | 1 | 0.2750 | 0.2700–0.2800 | +0.0200 |" in text
    assert f"| {other} | 8 | 0.2700 | 0.2700–0.2700 | -0.0100 |" in text
    assert "| own history (repeat-buying baseline) | – | 0.2769 | deterministic | |" in text
