"""The models' answers at a site (models/site_use.py and each model package): what
``recommend``, ``churn-risk`` and ``serve`` give, on small synthetic data with real torch
modules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Subset

from models import metrics, schema
from models.churn.model import ChurnModel, feature_contributions
from models.churn.protocol import FEATURES
from models.recommender.features import EvaluationExamples, build_histories
from models.recommender.model import CATALOGUE, score_examples
from models.recommender.protocol import clean_purchases, last_invoices, split_next_basket
from models.recommender.recommendations import PERSONAL, STOREFRONT_POPULAR
from models.registry import get_model
from models.site_use import NoAnswer
from simulations.synthetic import generate_orders


@pytest.fixture(scope="module")
def orders() -> pd.DataFrame:
    frame = generate_orders(n_storefronts=1, n_customers=120, n_items=30, seed=11)
    returns_only = frame[frame[schema.IS_RETURN]].head(1).assign(customer="returns-only")
    return pd.concat([frame, returns_only], ignore_index=True)


def recommender(orders: pd.DataFrame, seed: int = 4):
    model = get_model("recommender")
    facts = model.facts_from_artefacts(model.artefacts({CATALOGUE: sorted(set(orders["item_id"]))}))
    torch.manual_seed(seed)
    module = model.build(facts)
    with torch.no_grad():  # a model that ranks by more than popularity
        module.item_bias.bias.normal_()
    return model, module, facts


def without_test_invoices(orders: pd.DataFrame) -> pd.DataFrame:
    test = pd.MultiIndex.from_frame(last_invoices(clean_purchases(orders)))
    keys = pd.MultiIndex.from_frame(orders[[schema.CUSTOMER, schema.ORDER]])
    return orders[~keys.isin(test)].reset_index(drop=True)


def test_a_customers_scores_do_not_depend_on_who_else_is_scored(orders):
    model, module, facts = recommender(orders)
    histories = build_histories(clean_purchases(orders), facts[CATALOGUE])
    examples = EvaluationExamples(histories, {c: [] for c in histories}, facts[CATALOGUE])
    everyone = score_examples(module, examples)
    some = [3, 17, 40, 41]
    np.testing.assert_array_equal(score_examples(module, Subset(examples, some)), everyone[some])


def test_site_answers_rank_held_out_customers_as_the_sites_exact_evaluation(orders):
    model, module, facts = recommender(orders)
    federation = model.held_out_metrics(module, [model.site_data(orders, facts).evaluation])
    # the site serves from its data without the test invoices: exactly the training history
    answers = model.site_scores(module, without_test_invoices(orders), facts)
    catalogue = pd.Index(facts[CATALOGUE])
    split = split_next_basket(orders)
    ndcg = []
    for customer, basket in split.test_baskets.items():
        answer = answers.answer(customer, 10)
        assert answer["source"] == PERSONAL
        ranked = catalogue.get_indexer([item[schema.ITEM] for item in answer["items"]])
        targets = np.zeros((1, len(catalogue)), dtype=bool)
        targets[0, catalogue.get_indexer(basket)] = True
        ndcg.append(metrics.ndcg_at_k(ranked[None, :], targets, 10)[0])
    assert federation["num-customers"] == len(ndcg) > 50
    assert abs(np.mean(ndcg) - federation["ndcg@10"]) < 1e-12


def test_a_customer_without_history_gets_the_storefronts_popular_items(orders):
    model, module, facts = recommender(orders)
    answers = model.site_scores(module, orders, facts)
    popular = answers.answer("returns-only", 5)
    assert popular["source"] == STOREFRONT_POPULAR
    purchases = clean_purchases(orders)
    buyers = purchases.drop_duplicates([schema.CUSTOMER, schema.ITEM])[schema.ITEM].value_counts()
    expected = buyers.sort_index().sort_values(ascending=False, kind="stable").head(5)
    assert [i[schema.ITEM] for i in popular["items"]] == list(expected.index)
    shares = [i["score"] for i in popular["items"]]
    np.testing.assert_allclose(shares, expected.to_numpy() / purchases[schema.CUSTOMER].nunique())
    with pytest.raises(NoAnswer, match="unknown customer"):
        answers.answer("never-seen")

    table = answers.table(3)
    assert len(table) == 3 * orders[schema.CUSTOMER].nunique()
    some = sorted(set(orders[schema.CUSTOMER]))[7]
    rows = table[table[schema.CUSTOMER] == some]
    assert rows[schema.ITEM].tolist() == [i[schema.ITEM] for i in answers.answer(some, 3)["items"]]
    assert rows["score"].tolist() == [i["score"] for i in answers.answer(some, 3)["items"]]
    assert (
        table.loc[table[schema.CUSTOMER] == "returns-only", "source"].eq(STOREFRONT_POPULAR).all()
    )
    assert len(answers.answer(some, 100)["items"]) == 30  # at most the catalogue


def test_churn_risk_is_ranked_and_explained_by_feature_contributions(orders):
    model = get_model("churn")
    torch.manual_seed(2)
    module = model.build({})
    risk = model.site_scores(module, orders, {})
    table = risk.table()
    assert table["rank"].tolist() == list(range(1, len(table) + 1))
    assert table["churn_probability"].is_monotonic_decreasing
    assert "returns-only" not in set(table[schema.CUSTOMER])  # no purchase: not active
    with pytest.raises(NoAnswer, match="no purchase to score"):
        risk.answer("returns-only")
    with pytest.raises(NoAnswer, match="unknown customer"):
        risk.answer("never-seen")
    first = risk.answer(table[schema.CUSTOMER].iloc[0])
    assert first == table.iloc[0].to_dict()

    # integrated gradients: contributions add up to the logit minus a typical customer's
    contributions = table[[f"contribution_{name}" for name in FEATURES]].to_numpy()
    features = torch.tensor(table[list(FEATURES)].to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        logits = module(features).double().numpy()
        typical = module.logit(torch.zeros(1, len(FEATURES))).item()
    np.testing.assert_allclose(contributions.sum(axis=1), logits - typical, atol=1e-5)
    np.testing.assert_allclose(
        feature_contributions(module, table[list(FEATURES)]), contributions, rtol=1e-12
    )
    strongest = FEATURES[int(np.argmax(np.abs(contributions[0])))]
    assert first["top_features"].startswith(strongest + " ")
    assert isinstance(module, ChurnModel)
