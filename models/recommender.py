"""The next-basket recommender: model, training loop (plain or user-level DP) and evaluation.

Score of catalogue item ``i`` for a customer (a logit over the whole catalogue):

    s_i = b_i + g(x_ci)   if the customer has bought i before, else   s_i = b_i

where ``x_ci`` are the personal repeat-buying features of :mod:`models.nextbasket_features`,
``g`` is a small MLP shared by all items, and ``b`` a learned per-item bias (popularity,
ranks items the customer never bought). The loss is the multi-label softmax cross-entropy
of the target basket over the full catalogue (no sampled negatives).

Why this shape: repeat buying dominates retail baskets, and the history is model *input*,
not a parameter, so only ~270 MLP weights and one bias per item are learned — few
parameters for DP noise to swamp. Under DP the per-example gradient of the bias is the logit
gradient itself, and the MLP runs on packed history rows (no padding), with a grad sampler
that sums row gradients per example (:mod:`privacy.grad_samplers`); no ``(B, V, hidden)``
tensor is ever built. ``python -m simulations.benchmarks.dp_step`` measures the DP step cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from models.baselines import evaluate_next_basket
from models.nextbasket_features import (
    NUM_FEATURES,
    EvaluationExamples,
    NextBasketBatch,
    TrainingExamples,
    build_histories,
    collate_examples,
)
from models.nextbasket_protocol import NextBasketSplit
from models.optimizers import build_optimizer
from privacy.accountant import DPSegment


class ItemBias(nn.Module):
    """Adds a learned per-item bias to catalogue-wide scores: ``scores + bias``.

    Its own module so Opacus uses a dedicated grad sampler (the per-example gradient of the
    bias is the per-example gradient of the output; :mod:`privacy.grad_samplers`).
    """

    def __init__(self, num_items: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_items))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores + bias`` for ``(B, V)`` scores."""
        return scores + self.bias


class PersonalScorer(nn.Module):
    """ReLU MLP ``g`` from the personal features of packed history rows to one score each.

    The layers are this module's own parameters (``weight_l``, ``bias_l``; not ``nn.Linear``
    children nor a ``ParameterList``, which are modules of their own), because a packed row
    is not an example: Opacus must see the whole MLP as one layer whose grad sampler sums
    row gradients per example
    (:mod:`privacy.grad_samplers`). ``offsets`` is unused here but is the module's last input
    so Opacus reads the batch size B from it (as for ``nn.EmbeddingBag``).

    Args:
        num_features: features per row.
        hidden: widths of the hidden layers.
    """

    def __init__(self, num_features: int, hidden: Sequence[int]) -> None:
        super().__init__()
        widths = [num_features, *hidden, 1]
        for depth, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=False)):
            layer = nn.Linear(fan_in, fan_out)  # for its default initialisation only
            self.register_parameter(f"weight_{depth}", layer.weight)
            self.register_parameter(f"bias_{depth}", layer.bias)
        self.depth = len(widths) - 1

    def layer(self, depth: int) -> tuple[nn.Parameter, nn.Parameter]:
        """``(weight, bias)`` of layer ``depth`` (0 = first)."""
        return getattr(self, f"weight_{depth}"), getattr(self, f"bias_{depth}")

    def pre_activations(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's input to its ReLU (the last one is the score), rows × width."""
        outputs, inputs = [], features
        for depth in range(self.depth):
            weight, bias = self.layer(depth)
            outputs.append(nn.functional.linear(inputs, weight, bias))
            inputs = torch.relu(outputs[-1])
        return outputs

    def forward(self, features: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Scores ``(N,)`` of the ``N`` packed rows of a batch of ``len(offsets)`` examples."""
        return self.pre_activations(features)[-1].squeeze(-1)


class NextBasketRecommender(nn.Module):
    """Item bias + shared MLP over personal repeat-buying features (no BatchNorm).

    Args:
        num_items: catalogue size V (length of the item vocabulary).
        hidden: widths of the MLP's hidden layers.
        num_features: personal features per (customer, item); default the builder's.
    """

    def __init__(
        self,
        num_items: int,
        *,
        hidden: Sequence[int] = (16,),
        num_features: int = NUM_FEATURES,
    ):
        super().__init__()
        self.num_items = num_items
        self.personal = PersonalScorer(num_features, hidden)
        self.item_bias = ItemBias(num_items)

    def forward(self, batch: NextBasketBatch) -> torch.Tensor:
        """Catalogue logits ``(B, V)`` of a :class:`NextBasketBatch`."""
        offsets = batch["history_offsets"]
        personal = self.personal(batch["features"], offsets)
        cells = batch["history_example"] * self.num_items + batch["history_items"]
        scores = personal.new_zeros(len(offsets) * self.num_items).index_add_(0, cells, personal)
        return self.item_bias(scores.view(len(offsets), self.num_items))


def basket_loss(model: nn.Module, batch: NextBasketBatch) -> torch.Tensor:
    """Per-example multi-label softmax cross-entropy, ``(B,)``: the mean over the target
    basket's items of ``-log softmax(logits)_item`` (full catalogue, no sampled negatives)."""
    log_probabilities = torch.log_softmax(model(batch), dim=1)
    picked = log_probabilities.gather(1, batch["target_items"]) * batch["target_mask"]
    return -picked.sum(1) / batch["target_mask"].sum(1).clamp(min=1)


@dataclass(frozen=True)
class DPConfig:
    """User-level DP-SGD settings for :func:`train_recommender`.

    Attributes:
        noise_multiplier: σ, calibrated by the caller for the whole planned training
            (:func:`privacy.accountant.calibrate_noise_multiplier`).
        max_grad_norm: per-example clipping norm C.
        grad_sample_mode: Opacus mode, ``"hooks"`` (with this model's cheap grad samplers)
            or ``"ghost"``.
        seed: seeds Poisson sampling and noise (``None`` in deployment).
    """

    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str = "hooks"
    seed: int | None = None


@dataclass
class TrainingResult:
    """What :func:`train_recommender` did: mean loss per epoch and, under DP, the segment
    to record in the privacy ledger (sample rate, σ, steps)."""

    epoch_losses: list[float] = field(default_factory=list)
    dp_segment: DPSegment | None = None


def train_recommender(
    model: NextBasketRecommender,
    dataset: TrainingExamples,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    optimizer: str = "adam",
    proximal_mu: float = 0.0,
    seed: int = 0,
    dp: DPConfig | None = None,
) -> TrainingResult:
    """Train ``model`` in place on one-example-per-customer ``dataset``.

    ``optimizer`` names one of :data:`models.optimizers.OPTIMIZERS`. Under DP, SGD with
    momentum does better than Adam, which rescales each coordinate by its own noisy second
    moment — bad for the many rare-item biases whose gradients are mostly noise.
    ``proximal_mu > 0`` adds FedProx's proximal step towards the starting weights
    (:func:`models.optimizers.build_optimizer`).

    Without ``dp``: shuffled mini-batches. With ``dp``: Opacus DP-SGD through
    :class:`privacy.dp.DPTrainingSession` (Poisson sampling at rate 1/⌈n/B⌉, per-example
    clipping, Gaussian noise); the trained weights are copied back into ``model`` and the
    returned :attr:`TrainingResult.dp_segment` is what the ledger must record.

    Each epoch draws fresh target invoices (``dataset.set_epoch``).
    """
    result = TrainingResult()
    torch_optimizer = build_optimizer(optimizer, model.parameters(), lr, proximal_mu=proximal_mu)
    if dp is None:
        generator = torch.Generator().manual_seed(seed)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            collate_fn=collate_examples,
            generator=generator,
        )
        model.train()
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            losses = []
            for batch in loader:
                torch_optimizer.zero_grad(set_to_none=True)
                loss = basket_loss(model, batch).mean()
                loss.backward()
                torch_optimizer.step()
                losses.append(loss.item())
            result.epoch_losses.append(float(np.mean(losses)))
        return result

    # Imported here: privacy.dp pulls in Opacus, which plain training does not need.
    import privacy.grad_samplers  # noqa: F401  (registers this model's grad samplers)
    from privacy.dp import DPTrainingSession

    with DPTrainingSession(
        model,
        torch_optimizer,
        dataset,
        batch_size=batch_size,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        loss_fn=basket_loss,
        grad_sample_mode=dp.grad_sample_mode,
        collate_fn=collate_examples,
        seed=dp.seed,
    ) as session:
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            result.epoch_losses.append(session.run_epoch())
        result.dp_segment = session.segment()
        trained = session.state_dict()
    model.load_state_dict(trained)
    return result


@torch.no_grad()
def score_examples(
    model: NextBasketRecommender, dataset: Dataset, *, batch_size: int = 512
) -> np.ndarray:
    """Catalogue scores ``(len(dataset), V)`` of every example, float32."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_examples)
    return torch.cat([model(batch) for batch in loader]).numpy()


def evaluate_recommender(
    model: NextBasketRecommender, split: NextBasketSplit, k: int = 10
) -> pd.DataFrame:
    """HR@k, Recall@k and NDCG@k on the fixed next-basket protocol: overall, outside the UK
    and per home storefront (rows; columns ``customers``, ``hr@k``, ``recall@k``,
    ``ndcg@k``), ranking the whole catalogue ``split.items`` from each test customer's whole
    training history."""
    if model.num_items != len(split.items):
        raise ValueError(
            f"model scores {model.num_items} items but the split's catalogue has {len(split.items)}"
        )
    histories = build_histories(split.train, split.items)
    examples = EvaluationExamples(histories, split.test_baskets, split.items)
    return evaluate_next_basket(split, score_examples(model, examples), k)
