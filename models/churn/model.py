"""The churn model, whole: a small torch MLP on the nine protocol features, its training,
evaluation, its use at a site (:mod:`models.churn.risk`, with each feature's contribution,
:func:`feature_contributions`), and :class:`Churn`, the model as the federation knows it
(``MODEL``, found by name in :mod:`models.registry`).

Input is the raw feature vector of :data:`models.churn.protocol.FEATURES` (one example per
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

Federated, each site releases a noisy histogram of its held-out customers' churn
probabilities per label on a grid it fixes (:data:`SCORE_HISTOGRAM`, one customer in one
cell: :mod:`privacy.release`), and the server pools the sites' histograms into one
ROC-AUC over all of them and a Brier score from the cells' midpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from common import wire
from models import metrics, schema
from models.churn import SITE_USE
from models.churn.protocol import FEATURES, ChurnData, churn_cutoff, churn_data, churn_features
from models.churn.risk import ChurnRisk, risk_table
from models.optimizers import build_optimizer
from models.registry import Facts, FederatedModel, SiteData, WholeSplit
from models.training import LocalResult, LocalTraining, TrainingSettings, mean_finite
from privacy.accountants import DPSegment
from privacy.release import Histogram

LOG_FEATURE_MEAN: tuple[float, ...] = (4.0, 5.0, 1.2, 6.4, 3.4, 3.6, 5.6, 0.3, 0.6)
"""Shift of log1p(feature), in the order of :data:`models.churn.protocol.FEATURES`."""
LOG_FEATURE_STD: tuple[float, ...] = (1.2, 0.75, 0.6, 1.2, 1.1, 1.2, 0.75, 0.5, 0.6)
"""Scale of log1p(feature), same order."""

HIDDEN_UNITS = 8
"""Wider layers (16) fit the ~2,700 training customers of the bundled data too closely."""


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
        return self.logit(self.standardise(features))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        """Raw features -> the network's input: ``(log1p(x) - shift) / scale``."""
        return (torch.log1p(features) - self.shift) / self.scale

    def logit(self, standardised: torch.Tensor) -> torch.Tensor:
        """Churn logit of each row of standardised features."""
        return self.output(F.relu(self.hidden(standardised))).squeeze(-1)


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
    cohort_size: int | None = None,
) -> tuple[list[float], DPSegment]:
    """User-level DP-SGD on :func:`per_example_loss` (Opacus, via
    :class:`privacy.dp.DPTrainingSession`): Poisson sampling over customers, per-example
    clipping to ``max_grad_norm``, Gaussian noise σ = ``noise_multiplier`` (calibrated by
    the caller for the whole planned training), planned for ``cohort_size`` customers (a
    site's released count; ``None``: the dataset's length). ``model`` ends with the
    trained weights.

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
        cohort_size=cohort_size,
    ) as session:
        losses = [session.run_epoch() for _ in range(epochs)]
        segment = session.segment()
        trained = session.state_dict()
    model.load_state_dict(trained)
    return losses, segment


@torch.no_grad()
def predict_churn(model: nn.Module, features: pd.DataFrame) -> np.ndarray:
    """Churn probability of each row of a raw feature frame (columns :data:`FEATURES`)."""
    model.eval()
    inputs = torch.tensor(features.loc[:, FEATURES].to_numpy(), dtype=torch.float32)
    return torch.sigmoid(model(inputs)).double().numpy()


def feature_contributions(model: ChurnModel, features: pd.DataFrame) -> np.ndarray:
    """Each feature's contribution to each customer's churn logit, ``(customers, 9)``.

    Integrated gradients (Sundararajan et al. 2017) against a typical customer, whose every
    feature sits at the centre of the fixed scaling (:data:`LOG_FEATURE_MEAN`; standardised
    input 0), along the straight line in the standardised input ``z``. On that line hidden
    unit ``j``'s pre-activation is ``α·(W₁z)_j + b_j``, so the ReLU network is linear
    between the points where a unit switches, and the integral is exact: unit ``j`` adds
    its gradient for the share of the line where it is active. A customer's contributions
    sum to their logit minus the typical customer's; positive raises the risk.
    """
    inputs = torch.tensor(features.loc[:, FEATURES].to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        standardised = model.standardise(inputs).double()
        weight, bias = model.hidden.weight.double(), model.hidden.bias.double()
        slope = standardised @ weight.T  # unit j's pre-activation is α·slope_j + bias_j
        switch = (-bias / slope).clamp(0.0, 1.0)  # where it changes sign, within [0, 1]
        active_share = torch.where(
            slope > 0, 1.0 - switch, torch.where(slope < 0, switch, (bias > 0).double())
        )
        mean_gradient = (active_share * model.output.weight.double()[0]) @ weight
    return (standardised * mean_gradient).numpy()


CUTOFF = "cutoff"
"""Shared fact (and run-config key ``churn.cutoff``): the churn protocol's cutoff,
ISO-8601 in UTC. One date for all sites so labels mean the same everywhere: a site's own
last timestamp would move the cutoff at small storefronts and change their labels."""
CHURN_CUTOFF = "churn-cutoff"
"""Bundle artefact: the :data:`CUTOFF` the weights were trained at."""
CUTOFF_EARLIEST = "cutoff-earliest"
CUTOFF_LATEST = "cutoff-latest"
"""Fact bounds (a site's policy): the window a server's cutoff must fall in, ISO dates."""
CUTOFF_MARGIN = pd.Timedelta(days=90)
"""The default window leaves this much history before the cutoff: from the export's first
day plus the margin to its last day (a cutoff at a shop's first orders picks a cohort of a
handful of customers)."""
SCORE_CELLS = 10
"""Churn probabilities are counted in this many cells of width 0.1 per label. Fewer cells
tie more pairs, more add more noise to the pooled AUC: on the bundled data at the default
evaluation ε, 10 cells gave the smallest error (BENCHMARKS.md, "Noisy evaluation")."""
SCORE_HISTOGRAM = "score-histogram"
"""Evaluate-reply key: the held-out customers counted by (label, probability cell): cells
``0 .. SCORE_CELLS - 1`` the churners, the next :data:`SCORE_CELLS` the others."""


class Churn(FederatedModel):
    """The churn model as a federated model (see :mod:`models.registry`)."""

    name = "churn"
    evaluation_queries = (Histogram(SCORE_HISTOGRAM, 2 * SCORE_CELLS),)
    headline_metric = "roc-auc"
    default_training = TrainingSettings(
        local_epochs=1, optimizer="sgd", learning_rate=0.05, batch_size=64, max_grad_norm=1.0
    )
    shared_fact_keys = (CUTOFF,)
    customer_means = ("brier", "churn-rate")
    metric_labels = {
        "roc-auc": "ROC-AUC",
        "brier": "Brier",
        "churn-rate": "churn rate",
        "num-customers": "held-out customers",
    }
    site_use = SITE_USE
    max_abs_weight = 1e3

    def shared_facts(self, declared: Mapping[str, Any], whole_split: WholeSplit) -> dict[str, Any]:
        """The cutoff ``churn.cutoff`` (deployment; a zone-less time is UTC), else the
        whole split's last timestamp − 90 days (simulation)."""
        text = str(declared.get(CUTOFF, "")).strip()
        if not text:
            return {CUTOFF: churn_cutoff(whole_split([schema.TIMESTAMP])).isoformat()}
        try:
            cutoff = pd.Timestamp(text)
        except ValueError:
            raise ValueError(f"churn.{CUTOFF}: {text!r} is not an ISO-8601 timestamp") from None
        cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")
        return {CUTOFF: cutoff.isoformat()}

    def check_facts(
        self, facts: Facts, bounds: Mapping[str, Any], data_period: tuple[str, str] | None
    ) -> None:
        """The cutoff is a timestamp within the site's window, its days inclusive: by
        default from :data:`CUTOFF_MARGIN` after the export's first day to its last day."""
        unknown = sorted(set(bounds) - {CUTOFF_EARLIEST, CUTOFF_LATEST})
        if unknown:
            raise ValueError(f"unknown churn fact bounds {unknown}")
        try:
            cutoff = pd.Timestamp(str(facts[CUTOFF]))
        except ValueError:
            raise ValueError(f"the churn cutoff {facts[CUTOFF]!r} is not a timestamp") from None
        if cutoff.tzinfo is None:
            raise ValueError(f"the churn cutoff {facts[CUTOFF]!r} has no time zone")
        first, last = data_period if data_period else (None, None)
        earliest = bounds.get(CUTOFF_EARLIEST) or (
            (pd.Timestamp(first) + CUTOFF_MARGIN).date().isoformat() if first else None
        )
        latest = bounds.get(CUTOFF_LATEST) or last
        if earliest and cutoff < pd.Timestamp(earliest, tz="UTC"):
            raise ValueError(f"the churn cutoff {cutoff} is before this site's {earliest}")
        if latest and cutoff >= pd.Timestamp(latest, tz="UTC") + pd.Timedelta(days=1):
            raise ValueError(f"the churn cutoff {cutoff} is after this site's {latest}")

    def build(self, facts: Facts) -> ChurnModel:
        """The churn MLP (its feature scaling is fixed in code, not exchanged)."""
        del facts
        return ChurnModel()

    def site_data(self, orders: pd.DataFrame, facts: Facts) -> SiteData:
        """Churn protocol on the site's customers at the shared cutoff: the training part
        and the fixed 20 % holdout (both empty when nobody bought before the cutoff)."""
        if not facts.get(CUTOFF):
            raise ValueError(f"the churn protocol needs the shared cutoff in '{CUTOFF}'")
        cutoff = pd.Timestamp(facts[CUTOFF])
        try:
            data = churn_data(orders, cutoff=cutoff)
        except schema.NoCustomers:
            data = ChurnData.empty(cutoff)
        return SiteData(train=churn_dataset(data.part(held_out=False)), evaluation=data.part(True))

    def train(self, module: nn.Module, dataset: Dataset, plan: LocalTraining) -> LocalResult:
        """The churn loss; DP-SGD (:func:`train_churn_private`) when σ is given."""
        settings = plan.settings
        optimizer = build_optimizer(
            settings.optimizer,
            module.parameters(),
            settings.learning_rate,
            proximal_mu=plan.proximal_mu,
        )
        if plan.noise_multiplier is None:
            generator = torch.Generator().manual_seed(plan.seed) if plan.seed is not None else None
            loader = DataLoader(
                dataset, batch_size=settings.batch_size, shuffle=True, generator=generator
            )
            losses = train_churn(module, loader, optimizer, settings.local_epochs)
            return LocalResult(mean_finite(losses), 0)
        losses, segment = train_churn_private(
            module,
            dataset,
            optimizer,
            epochs=settings.local_epochs,
            batch_size=settings.batch_size,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            seed=plan.seed,
            cohort_size=plan.cohort_size,
        )
        return LocalResult(mean_finite(losses), segment.steps)

    def held_out_size(self, evaluation: ChurnData) -> int:
        """The held-out customers."""
        return len(evaluation.labels)

    def evaluation_values(self, module: nn.Module, evaluation: ChurnData) -> dict[str, np.ndarray]:
        """Each held-out customer's (label, probability cell) of :data:`SCORE_HISTOGRAM`
        (a probability that is not finite is in no cell)."""
        return {
            SCORE_HISTOGRAM: score_cells(
                predict_churn(module, evaluation.features), evaluation.labels.to_numpy()
            )
        }

    def summarise(self, answers: list[Mapping[str, Any]]) -> dict[str, float]:
        """ROC-AUC over all the sites' held-out customers from their pooled histograms (a
        pair in one cell counts as a tie; not an average of sites' AUCs), the Brier score
        with every customer at their cell's midpoint, the customers and the churn rate.

        Noisy counts are pooled as they are, negative ones included: the AUC's numerator
        and the counts stay unbiased (clipping cells at zero biases the AUC towards 0.5);
        only the resulting shares are kept in [0, 1].
        """
        pooled = np.sum([np.asarray(a[SCORE_HISTOGRAM], dtype=np.float64) for a in answers], axis=0)
        churners, others = pooled[:SCORE_CELLS], pooled[SCORE_CELLS:]
        if pooled.shape != (2 * SCORE_CELLS,):
            raise ValueError(f"{SCORE_HISTOGRAM} must have {2 * SCORE_CELLS} cells")
        positives, negatives = churners.sum(), others.sum()
        midpoints = (np.arange(SCORE_CELLS) + 0.5) / SCORE_CELLS
        counted = positives + negatives
        squared_error = churners @ (1 - midpoints) ** 2 + others @ midpoints**2
        customers = sum(float(a[wire.NUM_EXAMPLES]) for a in answers)

        def share(part: float, whole: float) -> float:  # noisy counts: kept in [0, 1]
            return min(max(part / whole, 0.0), 1.0) if whole > 0 else math.nan

        concordant = metrics.concordant_pairs_from_binned_counts(churners, others)
        return {
            "roc-auc": share(concordant, positives * negatives) if positives > 0 else math.nan,
            "brier": share(squared_error, counted),
            "num-customers": int(round(customers)),
            "churn-rate": share(positives, counted),
        }

    def held_out_metrics(
        self, module: nn.Module, evaluations: Sequence[ChurnData]
    ) -> dict[str, float]:
        """ROC-AUC and Brier of the exact probabilities of all the held-out customers."""
        probabilities = np.concatenate([predict_churn(module, e.features) for e in evaluations])
        labels = np.concatenate([e.labels.to_numpy() for e in evaluations])
        both = 0 < labels.sum() < labels.size
        return {
            "roc-auc": metrics.roc_auc(probabilities, labels) if both else math.nan,
            "brier": metrics.brier(probabilities, labels) if labels.size else math.nan,
            "num-customers": int(labels.size),
            "churn-rate": float(labels.mean()) if labels.size else math.nan,
        }

    def artefacts(self, facts: Facts) -> dict[str, Any]:
        """The feature names, the fixed feature scaling and the cutoff trained on."""
        return {
            "features": list(FEATURES),
            "log-feature-mean": list(LOG_FEATURE_MEAN),
            "log-feature-std": list(LOG_FEATURE_STD),
            CHURN_CUTOFF: facts[CUTOFF],
        }

    def facts_from_artefacts(self, artefacts: Mapping[str, Any]) -> dict[str, Any]:
        """The cutoff trained on (the module itself needs no fact)."""
        return {CUTOFF: artefacts[CHURN_CUTOFF]}

    def site_scores(self, module: nn.Module, orders: pd.DataFrame, facts: Facts) -> ChurnRisk:
        """Churn risk of every active customer of ``orders`` as of their last timestamp,
        with the features behind it and each one's contribution (:mod:`models.churn.risk`)."""
        del facts  # the training cutoff is not the scoring date
        if orders.empty:
            raise ValueError("no order lines to score")
        as_of = orders[schema.TIMESTAMP].max()
        features = churn_features(orders, as_of)
        table = risk_table(
            features,
            predict_churn(module, features),
            feature_contributions(module, features),
            as_of,
        )
        return ChurnRisk(table, known=orders[schema.CUSTOMER].unique())


def score_cells(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each customer's cell of :data:`SCORE_HISTOGRAM`: a churner's is their probability's
    cell (width ``1 / SCORE_CELLS``), another customer's that cell plus :data:`SCORE_CELLS`;
    NaN (no cell) for a probability that is not finite."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    finite = np.isfinite(probabilities)
    cell = np.minimum(np.floor(np.where(finite, probabilities, 0.0) * SCORE_CELLS), SCORE_CELLS - 1)
    cell = np.clip(cell, 0, SCORE_CELLS - 1) + np.where(np.asarray(labels) == 1, 0, SCORE_CELLS)
    return np.where(finite, cell, np.nan)


MODEL = Churn()
