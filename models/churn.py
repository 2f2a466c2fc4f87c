"""The churn model: a small torch MLP on the nine protocol features, its training and evaluation.

Input is the raw feature vector of :data:`models.churn_protocol.FEATURES` (one example per
customer, as user-level DP needs). The model scales it itself: ``log1p`` (the features are
heavy-tailed counts and amounts), then a fixed shift and scale per feature,
:data:`LOG_FEATURE_MEAN` and :data:`LOG_FEATURE_STD`. These constants are the log1p means
and standard deviations over the bundled data's churn population, rounded (they agree
with its training customers alone to two decimals), fixed in code: every site applies
the same scaling to its own customers without seeing any other site's data, and nothing
about them is learned, so they spend no privacy budget. They are non-persistent buffers,
so they are not part of the ``state_dict`` that federated rounds exchange.

The network has no BatchNorm (its batch statistics would mix customers, which per-example
DP clipping cannot account for): ``Linear -> ReLU -> Linear`` to one logit.
:func:`per_example_loss` is the unreduced loss both :func:`train_churn` and DP-SGD
(:class:`privacy.dp.DPTrainingSession`) use.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from models import metrics
from models.churn_protocol import FEATURES, ChurnData
from privacy.accountant import DPSegment

LOG_FEATURE_MEAN: tuple[float, ...] = (4.0, 5.0, 1.2, 6.4, 3.4, 3.6, 5.6, 0.3, 0.6)
"""Shift of log1p(feature), in the order of :data:`models.churn_protocol.FEATURES`."""
LOG_FEATURE_STD: tuple[float, ...] = (1.2, 0.75, 0.6, 1.2, 1.1, 1.2, 0.75, 0.5, 0.6)
"""Scale of log1p(feature), same order."""

HIDDEN_UNITS = 8
"""Wider layers (16) fit the ~2,700 training customers of the bundled data too closely."""

CENTRAL_EPOCHS = 300
CENTRAL_LEARNING_RATE = 0.01
CENTRAL_WEIGHT_DECAY = 1e-3


class ChurnModel(nn.Module):
    """Raw churn features (batch × 9) -> churn logits (batch,)."""

    def __init__(self, hidden_units: int = HIDDEN_UNITS) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LOG_FEATURE_MEAN), persistent=False)
        self.register_buffer("scale", torch.tensor(LOG_FEATURE_STD), persistent=False)
        self.hidden = nn.Linear(len(FEATURES), hidden_units)
        self.output = nn.Linear(hidden_units, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logit of the churn probability of each row of raw (unscaled) features."""
        scaled = (torch.log1p(features) - self.shift) / self.scale
        return self.output(F.relu(self.hidden(scaled))).squeeze(-1)


def churn_dataset(data: ChurnData) -> TensorDataset:
    """One ``(features, label)`` example per customer, float32, in the order of ``data``."""
    return TensorDataset(
        torch.tensor(data.features.loc[:, FEATURES].to_numpy(), dtype=torch.float32),
        torch.tensor(data.labels.to_numpy(), dtype=torch.float32),
    )


def per_example_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Binary cross-entropy of each example of a ``(features, labels)`` batch (no reduction)."""
    features, labels = batch
    return F.binary_cross_entropy_with_logits(model(features), labels, reduction="none")


def train_churn(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    epochs: int,
) -> list[float]:
    """Plain (non-private) training: mean :func:`per_example_loss` per batch, one optimizer
    step per batch.

    Args:
        model: the churn model (any module with the same forward).
        batches: re-iterable batches, e.g. a ``DataLoader`` over :func:`churn_dataset`.
        optimizer: optimizer over ``model``'s parameters.
        epochs: passes over ``batches``.

    Returns:
        The mean training loss of each epoch.
    """
    model.train()
    epoch_losses = []
    for _ in range(epochs):
        total, examples = 0.0, 0
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = per_example_loss(model, batch)
            loss.mean().backward()
            optimizer.step()
            total += loss.detach().sum().item()
            examples += loss.numel()
        epoch_losses.append(total / examples)
    return epoch_losses


def train_churn_private(
    model: nn.Module,
    dataset: TensorDataset,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int | None = None,
) -> tuple[list[float], DPSegment]:
    """User-level DP-SGD on :func:`per_example_loss` (Opacus, via
    :class:`privacy.dp.DPTrainingSession`): Poisson sampling over customers, per-example
    clipping to ``max_grad_norm``, Gaussian noise σ = ``noise_multiplier`` (calibrated by
    the caller for the whole planned training). ``model`` ends with the trained weights.

    Returns:
        The mean loss of each epoch, and the DP segment actually run (for the ledger).
    """
    from privacy.dp import DPTrainingSession  # Opacus only where DP training happens

    with DPTrainingSession(
        model,
        optimizer,
        dataset,
        batch_size=batch_size,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        loss_fn=per_example_loss,
        seed=seed,
    ) as session:
        losses = [session.run_epoch() for _ in range(epochs)]
        segment = session.segment()
        trained = session.state_dict()
    model.load_state_dict(trained)
    return losses, segment


def train_centralized(data: ChurnData, seed: int = 0) -> ChurnModel:
    """The centralized non-private reference: full-batch Adam on all of ``data``.

    Full batches make the result depend on the seed only through the initial weights
    (held-out ROC-AUC within about 0.003 across seeds on the bundled data).
    """
    torch.manual_seed(seed)
    model = ChurnModel()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=CENTRAL_LEARNING_RATE, weight_decay=CENTRAL_WEIGHT_DECAY
    )
    train_churn(model, [churn_dataset(data).tensors], optimizer, CENTRAL_EPOCHS)
    return model


@torch.no_grad()
def predict_churn(model: nn.Module, features: pd.DataFrame) -> np.ndarray:
    """Churn probability of each row of a raw feature frame (columns :data:`FEATURES`)."""
    model.eval()
    inputs = torch.tensor(features.loc[:, FEATURES].to_numpy(), dtype=torch.float32)
    return torch.sigmoid(model(inputs)).double().numpy()


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
