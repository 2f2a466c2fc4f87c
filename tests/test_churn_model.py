"""The torch churn model: DP-ready structure, fixed scaling, training and held-out quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader

from models import metrics
from models.churn.model import (
    ChurnModel,
    churn_dataset,
    per_example_loss,
    predict_churn,
    train_churn,
)
from models.churn.protocol import FEATURES, ChurnData, churn_data
from models.churn.study import evaluate_churn, train_centralized


@pytest.fixture(scope="module")
def bundled(bundled_orders) -> ChurnData:
    return churn_data(bundled_orders[0])


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models: threads only contend on a busy host; one thread keeps results exact."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_model_is_valid_for_opacus_and_exchanges_only_weights() -> None:
    model = ChurnModel()
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    # The fixed scaling is not part of what federated rounds exchange.
    assert set(model.state_dict()) == {
        "hidden.weight",
        "hidden.bias",
        "output.weight",
        "output.bias",
    }


def test_forward_scales_raw_features_with_fixed_constants() -> None:
    model = ChurnModel()
    raw = torch.tensor([[10.0, 200.0, 3.0, 500.0, 30.0, 40.0, 250.0, 0.0, 1.0]])
    assert model(raw).shape == (1,)
    # Scaling is log1p then the fixed shift and scale: the mean point maps to zero input.
    centre = torch.expm1(model.shift).unsqueeze(0)
    hidden = torch.nn.functional.relu(model.hidden.bias).unsqueeze(0)
    expected = model.output(hidden).squeeze(-1)
    torch.testing.assert_close(model(centre), expected)


def test_per_example_loss_is_unreduced_binary_cross_entropy(bundled) -> None:
    model = ChurnModel()
    features, labels = churn_dataset(bundled).tensors
    batch = (features[:5], labels[:5])
    losses = per_example_loss(model, batch)
    assert losses.shape == (5,)
    p = torch.sigmoid(model(features[:5]))
    expected = -(labels[:5] * torch.log(p) + (1 - labels[:5]) * torch.log(1 - p))
    torch.testing.assert_close(losses, expected)


def test_dataset_has_one_example_per_customer(bundled) -> None:
    dataset = churn_dataset(bundled)
    assert len(dataset) == 3368
    features, labels = dataset.tensors
    assert features.shape == (3368, len(FEATURES)) and features.dtype == torch.float32
    assert labels.sum().item() == bundled.labels.sum()


def test_minibatch_training_lowers_the_loss(bundled) -> None:
    torch.manual_seed(0)
    model = ChurnModel()
    train = churn_dataset(bundled.part(held_out=False))
    loader = DataLoader(
        train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    losses = train_churn(model, loader, torch.optim.Adam(model.parameters(), lr=0.01), epochs=3)
    assert len(losses) == 3
    assert losses[-1] < losses[0] < np.log(2) + 0.2


def test_evaluation_pools_all_customers_and_splits_by_storefront(bundled) -> None:
    torch.manual_seed(0)
    model = ChurnModel()
    held_out = bundled.part(held_out=True)
    table = evaluate_churn(model, held_out)
    probabilities = predict_churn(model, held_out.features)
    labels = held_out.labels.to_numpy()
    overall = table.loc[metrics.OVERALL]
    assert overall["customers"] == len(held_out.labels)
    assert overall["roc-auc"] == pytest.approx(metrics.roc_auc(probabilities, labels))
    assert overall["brier"] == pytest.approx(metrics.brier(probabilities, labels))
    per_storefront = table.drop(metrics.OVERALL)
    assert per_storefront["customers"].sum() == overall["customers"]
    uk = held_out.storefront.to_numpy() == "United Kingdom"
    assert table.loc["United Kingdom", "pr-auc"] == pytest.approx(
        metrics.pr_auc(probabilities[uk], labels[uk])
    )
    single_class = per_storefront[per_storefront["churn-rate"].isin([0.0, 1.0])]
    assert len(single_class) > 0 and single_class["roc-auc"].isna().all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_centralized_training_reaches_the_goal_on_the_holdout(bundled, seed: int) -> None:
    held_out = bundled.part(held_out=True)
    model = train_centralized(bundled.part(held_out=False), seed=seed)
    overall = evaluate_churn(model, held_out).loc[metrics.OVERALL]
    recency = metrics.roc_auc(held_out.features["recency"], held_out.labels)
    # Measured 0.752-0.758 over seeds 0-3; logistic regression scores 0.757 on this holdout.
    assert overall["roc-auc"] >= 0.75
    assert overall["roc-auc"] > recency + 0.05
    assert overall["pr-auc"] >= 0.62
    assert overall["brier"] <= 0.20
