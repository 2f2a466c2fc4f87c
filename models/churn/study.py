"""The churn model's protocol on pooled order lines (:class:`models.study.PooledStudy`):
features and labels at the cutoff with the fixed holdout (or the validation cutoff and
holdout), one example per training customer, metrics by storefront
(:func:`evaluate_churn`), the protocol's baselines, and the fixed centralized recipe the
baselines benchmark and the membership audit train (:func:`train_centralized`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from models import metrics
from models.churn.baselines import churn_baselines
from models.churn.model import (
    CUTOFF,
    HIDDEN_UNITS,
    ChurnModel,
    churn_dataset,
    predict_churn,
    train_churn,
)
from models.churn.protocol import ChurnData, churn_cutoff, churn_data
from models.churn.validation import before_test_labels, churn_validation_data, validation_cutoff
from models.study import PooledStudy

CENTRAL_EPOCHS = 300
CENTRAL_LEARNING_RATE = 0.01
CENTRAL_WEIGHT_DECAY = 1e-3
"""The fixed full-batch recipe of :func:`train_centralized`."""


def train_centralized(
    data: ChurnData,
    seed: int = 0,
    *,
    hidden_units: int = HIDDEN_UNITS,
    epochs: int = CENTRAL_EPOCHS,
    weight_decay: float = CENTRAL_WEIGHT_DECAY,
) -> ChurnModel:
    """Full-batch Adam on all of ``data``: the fixed recipe of the baselines benchmark's
    MLP and of the membership audit's targets (the comparison's centralized run trains
    with the model's own loop and its validation-chosen non-private settings instead).

    Full batches make the result depend on the seed only through the initial weights
    (held-out ROC-AUC within about 0.003 across seeds on the bundled data). The keyword
    arguments change the recipe (the membership audit over-fits a wide model on purpose).
    """
    torch.manual_seed(seed)
    model = ChurnModel(hidden_units)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=CENTRAL_LEARNING_RATE, weight_decay=weight_decay
    )
    train_churn(model, [churn_dataset(data).tensors], optimizer, epochs)
    return model


def evaluate_churn(model: nn.Module, data: ChurnData) -> pd.DataFrame:
    """ROC-AUC, PR-AUC and Brier of ``model`` on ``data`` (e.g. ``data.part(held_out=True)``),
    over all its customers (the :data:`models.metrics.OVERALL` row) and per storefront.

    A storefront whose customers all share one label has no AUC (NaN).
    """
    probabilities = predict_churn(model, data.features)
    labels = data.labels.to_numpy()
    groups = {metrics.OVERALL: np.ones(labels.size, dtype=bool)}
    storefronts = data.storefront.to_numpy(dtype=object)
    for name in pd.Series(storefronts).value_counts().index:
        groups[name] = storefronts == name
    rows = {
        name: _churn_metrics(probabilities[mask], labels[mask]) for name, mask in groups.items()
    }
    result = pd.DataFrame.from_dict(rows, orient="index")
    result.index.name = "storefront"
    return result


def _churn_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    both_classes = 0 < labels.sum() < labels.size
    return {
        "customers": labels.size,
        "churn-rate": float(labels.mean()),
        "roc-auc": metrics.roc_auc(probabilities, labels) if both_classes else float("nan"),
        "pr-auc": metrics.pr_auc(probabilities, labels) if labels.any() else float("nan"),
        "brier": metrics.brier(probabilities, labels),
    }


class ChurnStudy(PooledStudy):
    """The churn protocol on pooled order lines."""

    def __init__(self, frame: pd.DataFrame, validation: bool = False) -> None:
        self.data = (churn_validation_data if validation else churn_data)(frame)
        self.train = self.data.part(held_out=False)
        self.held_out = self.data.part(held_out=True)
        self.customers = len(self.train.labels)

    def storefronts(self) -> list[str]:
        """Storefronts with training and held-out customers, most training customers first."""
        tested = set(self.held_out.storefront)
        return [s for s in self.train.storefront.value_counts().index if s in tested]

    def examples(
        self, settings: Mapping[str, Any], seed: int, storefront: str | None = None
    ) -> Dataset:
        """The training customers' feature vectors and labels (of ``storefront`` only)."""
        del settings, seed  # one fixed example per customer
        if storefront is None:
            return churn_dataset(self.train)
        return churn_dataset(self.train.subset((self.train.storefront == storefront).to_numpy()))

    def build(self) -> ChurnModel:
        """A fresh churn MLP of the model's width."""
        return ChurnModel()

    def score(self, module: ChurnModel) -> pd.DataFrame:
        """ROC-AUC, PR-AUC and Brier on the holdout, overall and per storefront."""
        return evaluate_churn(module, self.held_out)

    def baselines(self) -> dict[str, pd.DataFrame]:
        """The churn baselines (5-fold CV on the whole population), overall rows."""
        table = churn_baselines(self.data)
        return {name: table.loc[[name]].set_axis([metrics.OVERALL]) for name in table.index}


SEARCH_SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "centralized": {
        "local-epochs": (20, 40, 80),
        "optimizer": ("adam",),
        "learning-rate": (0.003, 0.01, 0.03, 0.1),
        "batch-size": (64, 128, 256, 512),
        "max-grad-norm": (0.3, 1.0, 3.0),
    },
    # The first searches chose 4 epochs and clip 0.3, both edges: one step further.
    "federated": {
        "local-epochs": (1, 2, 4, 8),
        "optimizer": ("sgd",),
        "learning-rate": (0.02, 0.05, 0.1, 0.2, 0.5),
        "batch-size": (32, 64, 128),
        "max-grad-norm": (0.1, 0.3, 1.0, 3.0),
    },
}
"""Per mode: setting (run-config spelling) -> the values ``python -m lab tune`` tries
under DP."""
NON_PRIVATE_SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    # 4,096 holds every training customer of the bundled data: full-batch Adam.
    "centralized": {
        "local-epochs": (50, 100, 300, 600),
        "optimizer": ("adam",),
        "learning-rate": (0.003, 0.01, 0.03, 0.1),
        "batch-size": (64, 256, 1024, 4096),
        "max-grad-norm": (1.0,),
    },
    "federated": {
        "local-epochs": (1, 2, 4, 8),
        "optimizer": ("sgd",),
        "learning-rate": (0.02, 0.05, 0.1, 0.2, 0.5),
        "batch-size": (32, 64, 128),
        "max-grad-norm": (1.0,),
    },
}
"""Per mode: the values tried without DP (``max-grad-norm`` unused there, held at one)."""
VALIDATION = "validation (cutoff 90 days before the test cutoff; no row after the test cutoff read)"
"""What ``chosen-on`` says of settings tuned on the validation split."""


def validation_orders(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The order lines a federation on the validation split trains on (nothing after the
    test cutoff), and the run-config fact it needs: the validation cutoff."""
    test_cutoff = churn_cutoff(frame)
    validation = before_test_labels(frame, test_cutoff)
    return validation, {f"churn.{CUTOFF}": validation_cutoff(test_cutoff).isoformat()}


def pooled_study(frame: pd.DataFrame, validation: bool = False) -> ChurnStudy:
    """The churn model's :class:`models.study.PooledStudy` of ``frame``."""
    return ChurnStudy(frame, validation)
