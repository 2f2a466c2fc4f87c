"""What a site needs to know about each federated model: data, network, training, evaluation.

A :class:`ModelTask` ties a model of :mod:`models` to the site's round: it splits the
site's order lines into per-customer training examples and held-out evaluation data by
the model's fixed protocol, builds the plain torch module (the global weights are then
loaded into it), trains it with the model's own loop (DP-SGD through
:mod:`privacy.dp` when given a noise multiplier), and evaluates into the aggregate-only
metrics of :data:`clients.messages.EVALUATE_METRIC_KEYS` — sums and counts, nothing per
customer. :data:`MODEL_TASKS` maps the wire's model name to its task.

Every callable gets the message's ConfigRecord as a plain dict, so models whose shape
depends on shared, non-private facts (the recommender's item catalogue, sent by the
server under :data:`clients.messages.CATALOGUE`) build the same network at every site.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from clients import messages as wire
from models import metrics
from models.churn import (
    ChurnModel,
    churn_dataset,
    predict_churn,
    train_churn,
    train_churn_private,
)
from models.churn_protocol import ChurnData, churn_data
from models.nextbasket_features import EvaluationExamples, TrainingExamples, build_histories
from models.nextbasket_protocol import split_next_basket
from models.optimizers import build_optimizer
from models.recommender import DPConfig, NextBasketRecommender, score_examples, train_recommender

Config = Mapping[str, Any]
TOP_K = 10


@dataclass(frozen=True)
class SiteSplit:
    """One site's data for one model, split by the model's fixed protocol."""

    train: Dataset
    """Exactly one example per training customer (user-level DP)."""
    evaluation: Any
    """The held-out customers, in whatever form the task's ``evaluate`` reads."""


@dataclass(frozen=True)
class LocalTraining:
    """One round of local training as the server planned it."""

    epochs: int
    batch_size: int
    optimizer: str
    """A name of :data:`models.optimizers.OPTIMIZERS`."""
    learning_rate: float
    proximal_mu: float
    """FedProx's μ (0: plain local training); see :mod:`models.optimizers`."""
    max_grad_norm: float
    noise_multiplier: float | None
    """σ of DP-SGD; ``None`` trains without DP."""
    seed: int | None
    """Seeds sampling and noise in simulation; ``None`` in deployment."""


@dataclass(frozen=True)
class LocalResult:
    """What a round of local training did: mean loss and DP-SGD steps (0 without DP)."""

    train_loss: float
    dp_steps: int


@dataclass(frozen=True)
class ModelTask:
    """How a site prepares, trains and evaluates one model."""

    name: str
    prepare: Callable[[pd.DataFrame, Config], SiteSplit]
    """Order lines of the site -> training examples and held-out data."""
    build: Callable[[Config], nn.Module]
    """A fresh plain module with the global architecture (weights are loaded after)."""
    train: Callable[[nn.Module, Dataset, LocalTraining], LocalResult]
    """Train the module in place on the training examples."""
    evaluate: Callable[[nn.Module, Any], dict[str, Any]]
    """Held-out data -> exactly the model's evaluate metric keys (sums and counts)."""


def catalogue(config: Config) -> list[str]:
    """The item catalogue the server sent: the recommender's output vocabulary."""
    items = config.get(wire.CATALOGUE)
    if not items:
        raise ValueError(f"the recommender needs the item catalogue in config '{wire.CATALOGUE}'")
    return [str(item) for item in items]


def prepare_recommender(orders: pd.DataFrame, config: Config) -> SiteSplit:
    """Next-basket protocol on the site's customers, over the global catalogue."""
    vocabulary = catalogue(config)
    split = split_next_basket(orders)
    histories = build_histories(split.train, vocabulary)
    tested = {c: b for c, b in split.test_baskets.items() if c in histories}
    return SiteSplit(
        train=TrainingExamples(histories),
        evaluation=EvaluationExamples(histories, tested, vocabulary),
    )


def build_recommender(config: Config) -> nn.Module:
    """The recommender over the server's catalogue."""
    return NextBasketRecommender(len(catalogue(config)))


def train_recommender_round(
    module: nn.Module, dataset: Dataset, plan: LocalTraining
) -> LocalResult:
    """The recommender's own loop (DP-SGD when σ is given)."""
    dp = None
    if plan.noise_multiplier is not None:
        dp = DPConfig(plan.noise_multiplier, plan.max_grad_norm, seed=plan.seed)
    result = train_recommender(
        module,
        dataset,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        lr=plan.learning_rate,
        optimizer=plan.optimizer,
        proximal_mu=plan.proximal_mu,
        seed=plan.seed or 0,
        dp=dp,
    )
    steps = result.dp_segment.steps if result.dp_segment is not None else 0
    return LocalResult(_mean(result.epoch_losses), steps)


def evaluate_recommender(module: nn.Module, examples: EvaluationExamples) -> dict[str, Any]:
    """Sums of HR@10, Recall@10 and NDCG@10 over the site's test customers, and their count."""
    if len(examples) == 0:
        return {wire.NUM_EXAMPLES: 0, wire.HIT_SUM: 0.0, wire.RECALL_SUM: 0.0, wire.NDCG_SUM: 0.0}
    ranked = metrics.top_k_items(score_examples(module, examples), TOP_K)
    targets = np.zeros((len(examples), module.num_items), dtype=bool)
    for row in range(len(examples)):
        targets[row, examples[row]["target_items"].numpy()] = True
    scores = metrics.ranking_metrics(ranked, targets, k=TOP_K)
    return {
        wire.NUM_EXAMPLES: len(examples),
        wire.HIT_SUM: float(scores[f"hr@{TOP_K}"].sum()),
        wire.RECALL_SUM: float(scores[f"recall@{TOP_K}"].sum()),
        wire.NDCG_SUM: float(scores[f"ndcg@{TOP_K}"].sum()),
    }


def prepare_churn(orders: pd.DataFrame, config: Config) -> SiteSplit:
    """Churn protocol on the site's customers: training part and the fixed 20% holdout."""
    cutoff = config.get(wire.CHURN_CUTOFF)
    if not cutoff:
        raise ValueError(
            f"the churn protocol needs the shared cutoff in config '{wire.CHURN_CUTOFF}'"
        )
    data = churn_data(orders, cutoff=pd.Timestamp(cutoff))
    return SiteSplit(train=churn_dataset(data.part(held_out=False)), evaluation=data.part(True))


def build_churn(config: Config) -> nn.Module:
    """The churn MLP (its feature scaling is fixed in code, not exchanged)."""
    del config
    return ChurnModel()


def train_churn_round(module: nn.Module, dataset: Dataset, plan: LocalTraining) -> LocalResult:
    """The churn loss; DP-SGD (:func:`models.churn.train_churn_private`) when σ is given."""
    optimizer = build_optimizer(
        plan.optimizer, module.parameters(), plan.learning_rate, proximal_mu=plan.proximal_mu
    )
    if plan.noise_multiplier is None:
        generator = torch.Generator().manual_seed(plan.seed) if plan.seed is not None else None
        loader = DataLoader(dataset, batch_size=plan.batch_size, shuffle=True, generator=generator)
        return LocalResult(_mean(train_churn(module, loader, optimizer, plan.epochs)), 0)
    losses, segment = train_churn_private(
        module,
        dataset,
        optimizer,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        seed=plan.seed,
    )
    return LocalResult(_mean(losses), segment.steps)


def evaluate_churn_site(module: nn.Module, held_out: ChurnData) -> dict[str, Any]:
    """Score histograms per label, the Brier sum and the count over the held-out customers."""
    labels = held_out.labels.to_numpy()
    probabilities = predict_churn(module, held_out.features)
    positives, negatives = metrics.binned_score_counts(probabilities, labels)
    return {
        wire.NUM_EXAMPLES: int(labels.size),
        wire.SCORE_BINS_POSITIVE: positives.tolist(),
        wire.SCORE_BINS_NEGATIVE: negatives.tolist(),
        wire.BRIER_SUM: float(np.sum((probabilities - labels) ** 2)),
    }


def _mean(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


RECOMMENDER = ModelTask(
    "recommender",
    prepare_recommender,
    build_recommender,
    train_recommender_round,
    evaluate_recommender,
)

CHURN = ModelTask("churn", prepare_churn, build_churn, train_churn_round, evaluate_churn_site)

MODEL_TASKS: dict[str, ModelTask] = {task.name: task for task in (CHURN, RECOMMENDER)}
"""Every model a site can train, by the name the server sends in the train config."""
