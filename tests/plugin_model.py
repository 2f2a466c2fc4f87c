"""A small model that plugs into fedshop through the registry only: ``tests.plugin_model``.

It predicts a customer's log spend from their activity (invoices, order lines, distinct
items) with one linear layer. Nothing in ``server/``, ``clients/`` or ``simulations/``
names it: a run config with ``models = "tests.plugin_model"`` is all it takes for the
server to plan it and the sites to train it (with user-level DP through
:class:`privacy.dp.DPTrainingSession`) and evaluate it. Nothing in ``lab/`` names it
either: ``python -m lab compare`` studies it from its federated form, and ``tune`` reads
its validation split and search space below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from common import wire
from models import schema
from models.optimizers import build_optimizer
from models.registry import Facts, FederatedModel, SiteData
from models.training import LocalResult, LocalTraining, TrainingSettings, mean_finite
from privacy.release import BoundedSum

SQUARED_ERROR_SUM = "squared-error-sum"
ERROR_CAP = 10.0
"""Squared errors are released as a share of this cap (a release sums values in [0, 1]):
the reported MSE counts an error above it as the cap."""
HELD_OUT_EVERY = 5
"""Every fifth customer (in token order) is held out for evaluation."""


def customer_activity(orders: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Per customer: log1p of invoices, lines and distinct items, and log1p of spend."""
    purchases = orders[~orders[schema.IS_RETURN].to_numpy(dtype=bool)]
    spend = purchases[schema.QUANTITY] * purchases[schema.UNIT_PRICE]
    by_customer = purchases.assign(spend=spend).groupby(schema.CUSTOMER)
    features = np.log1p(
        pd.DataFrame(
            {
                "invoices": by_customer[schema.ORDER].nunique(),
                "lines": by_customer.size(),
                "items": by_customer[schema.ITEM].nunique(),
            }
        )
    )
    return features.sort_index(), np.log1p(by_customer["spend"].sum().clip(lower=0)).sort_index()


def _dataset(features: pd.DataFrame, target: pd.Series) -> TensorDataset:
    return TensorDataset(
        torch.tensor(features.to_numpy(), dtype=torch.float32),
        torch.tensor(target.to_numpy(), dtype=torch.float32),
    )


def squared_errors(module: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One squared error per example (the per-example loss DP-SGD clips)."""
    features, target = batch
    return (module(features).squeeze(-1) - target) ** 2


class SpendModel(FederatedModel):
    """Linear regression of log spend on activity, as a federated model."""

    name = __name__
    evaluation_queries = (BoundedSum(SQUARED_ERROR_SUM),)
    headline_metric = "mse"
    headline_higher_is_better = False
    customer_means = ("mse",)
    default_training = TrainingSettings(
        local_epochs=3, optimizer="sgd", learning_rate=0.05, batch_size=16, max_grad_norm=2.0
    )

    def build(self, facts: Facts) -> nn.Module:
        """One linear layer over the three activity features."""
        del facts
        return nn.Linear(3, 1)

    def site_data(self, orders: pd.DataFrame, facts: Facts) -> SiteData:
        """Every customer is one example; every fifth (token order) is held out."""
        del facts
        features, target = customer_activity(orders)
        held_out = np.arange(len(target)) % HELD_OUT_EVERY == 0
        return SiteData(
            train=_dataset(features[~held_out], target[~held_out]),
            evaluation=_dataset(features[held_out], target[held_out]),
        )

    def train(self, module: nn.Module, dataset: Dataset, plan: LocalTraining) -> LocalResult:
        """Mean squared error by SGD, or DP-SGD when the plan carries a noise multiplier."""
        settings = plan.settings
        optimizer = build_optimizer(settings.optimizer, module.parameters(), settings.learning_rate)
        if plan.noise_multiplier is None:
            losses = []
            for _ in range(settings.local_epochs):
                for batch in DataLoader(dataset, batch_size=settings.batch_size, shuffle=True):
                    optimizer.zero_grad()
                    loss = squared_errors(module, batch).mean()
                    loss.backward()
                    optimizer.step()
                    losses.append(loss.item())
            return LocalResult(mean_finite(losses), 0)
        from privacy.dp import DPTrainingSession

        with DPTrainingSession(
            module,
            optimizer,
            dataset,
            batch_size=settings.batch_size,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            loss_fn=squared_errors,
            seed=plan.seed,
            cohort_size=plan.cohort_size,
        ) as session:
            losses = [session.run_epoch() for _ in range(settings.local_epochs)]
            steps = session.steps_taken
            trained = session.state_dict()
        module.load_state_dict(trained)
        return LocalResult(mean_finite(losses), steps)

    def held_out_size(self, evaluation: TensorDataset) -> int:
        """The held-out customers."""
        return len(evaluation)

    def evaluation_values(
        self, module: nn.Module, evaluation: TensorDataset
    ) -> dict[str, np.ndarray]:
        """Each held-out customer's squared error as a share of :data:`ERROR_CAP`."""
        with torch.no_grad():
            errors = squared_errors(module, evaluation.tensors) if len(evaluation) else None
        shares = np.zeros(0) if errors is None else errors.numpy() / ERROR_CAP
        return {SQUARED_ERROR_SUM: shares}

    def summarise(self, answers: list[Mapping[str, Any]]) -> dict[str, float]:
        """Mean squared error over all the held-out customers."""
        count = sum(float(answer[wire.NUM_EXAMPLES]) for answer in answers)
        total = sum(float(answer[SQUARED_ERROR_SUM]) for answer in answers) * ERROR_CAP
        mse = max(total / count, 0.0) if count >= 1 else math.nan  # noisy sums can go below 0
        return {"mse": mse, "num-customers": round(count)}


MODEL = SpendModel()


# The research side ``python -m lab`` reads (models.study.research_module): the validation
# split tune scores on and the values it tries.
VALIDATION = "validation (each storefront's test customers removed; a fifth of the rest held out)"
SEARCH_SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    mode: {
        "local-epochs": (2, 3),
        "optimizer": ("sgd",),
        "learning-rate": (0.005, 0.05, 0.2),
        "batch-size": (16, 32),
        "max-grad-norm": (1.0, 2.0),
    }
    for mode in ("centralized", "federated")
}
NON_PRIVATE_SPACES = SEARCH_SPACES


def validation_orders(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Every order line but the test customers' (each storefront's held-out fifth, as
    :meth:`SpendModel.site_data` draws it); no shared facts."""
    test: set[str] = set()
    for _, orders in frame.groupby(schema.STOREFRONT, observed=True):
        features, _ = customer_activity(orders)
        test.update(features.index[np.arange(len(features)) % HELD_OUT_EVERY == 0])
    return frame[~frame[schema.CUSTOMER].isin(test)], {}
