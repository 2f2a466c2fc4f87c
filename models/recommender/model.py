"""The next-basket recommender, whole: model, training loop (plain or user-level DP),
evaluation, its use at a site (:mod:`models.recommender.recommendations`), and :class:`Recommender`,
the model as the federation knows it (``MODEL``, found by name in :mod:`models.registry`).

Score of catalogue item ``i`` for a customer (a logit over the whole catalogue):

    s_i = b_i + g(x_ci)   if the customer has bought i before, else   s_i = b_i

where ``x_ci`` are the personal repeat-buying features of :mod:`models.recommender.features`,
``g`` is a small MLP shared by all items, and ``b`` a learned per-item bias (popularity,
ranks items the customer never bought). A fixed repeat-buying prior added to ``g`` did
not beat this model on validation by more than the seed spread (BENCHMARKS.md,
"Recommender candidates on validation"), so the model has none. The loss is
the multi-label softmax cross-entropy of the target basket over the full catalogue (no
sampled negatives).

Why this shape: repeat buying dominates retail baskets, and the history is model *input*,
not a parameter, so only ~270 MLP weights and one bias per item are learned — few
parameters for DP noise to swamp. Under DP the per-example gradient of the bias is the logit
gradient itself, and the MLP runs on packed history rows (no padding), with a grad sampler
that sums row gradients per example (:mod:`models.recommender.layers`); no ``(B, V, hidden)``
tensor is ever built. ``python -m lab.benchmarks.dp_step`` measures the DP step cost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from common import wire
from models import metrics, schema
from models.optimizers import build_optimizer
from models.recommender import SITE_USE
from models.recommender.features import (
    FEATURE_NAMES,
    NUM_FEATURES,
    EvaluationExamples,
    NextBasketBatch,
    TrainingExamples,
    build_histories,
    buyer_counts,
    collate_examples,
)
from models.recommender.layers import (
    ItemBias,
    PersonalScorer,
    item_bias_grad_sample,
    personal_scorer_grad_sample,
    register_grad_samplers,
)
from models.recommender.protocol import (
    CATALOGUE_COLUMNS,
    TARGET_WINDOW,
    catalogue_of,
    clean_purchases,
    parse_target_window,
    read_catalogue,
    spell_target_window,
    split_next_basket,
)
from models.recommender.recommendations import Recommendations
from models.registry import Facts, FederatedModel, SiteData, WholeSplit
from models.site_use import MAX_ITEMS
from models.training import LocalResult, LocalTraining, TrainingSettings, mean_finite
from privacy.accountants import DPSegment
from privacy.release import BoundedSum

MLP_HIDDEN: tuple[int, ...] = (16,)
"""Widths of the MLP's hidden layers (checked on validation: BENCHMARKS.md, "Hidden-layer
width on validation")."""


class NextBasketRecommender(nn.Module):
    """Item bias + shared MLP over personal repeat-buying features (no BatchNorm).

    Args:
        num_items: catalogue size V (length of the item vocabulary).
        hidden: widths of the MLP's hidden layers (default :data:`MLP_HIDDEN`).
        num_features: personal features per (customer, item); default the builder's.
    """

    def __init__(
        self,
        num_items: int,
        *,
        hidden: Sequence[int] = MLP_HIDDEN,
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
        scores = personal.new_zeros(len(offsets) * self.num_items)
        scores.index_add_(0, self._cells(batch), personal)
        return self.item_bias(scores.view(len(offsets), self.num_items))

    def per_example_gradients(
        self, batch: NextBasketBatch, logit_grads: torch.Tensor
    ) -> dict[nn.Parameter, torch.Tensor]:
        """Every parameter's per-example gradients ``(B, *shape)``, from the gradient of the
        per-example losses with respect to the logits (row b: ``∂loss_b/∂logits_b``).

        For :class:`privacy.dp.DPTrainingSession`'s ``"output"`` mode: the grad samplers
        Opacus's hooks call (:mod:`models.recommender.layers`), fed each layer's output
        gradient as the hooks would, straight from the logit gradient: the logits are the
        item bias's output, and history row r's personal score is added to logit cell
        (example, item) alone, so its gradient is that cell's (``index_add_``'s adjoint is a
        gather).
        """
        row_grads = logit_grads.reshape(-1).index_select(0, self._cells(batch))
        inputs = [batch["features"], batch["history_offsets"]]
        grads = item_bias_grad_sample(self.item_bias, [], logit_grads)  # needs no activations
        return grads | personal_scorer_grad_sample(self.personal, inputs, row_grads)

    def _cells(self, batch: NextBasketBatch) -> torch.Tensor:
        """Flat logit index ``example · V + item`` of every packed history row."""
        return batch["history_example"] * self.num_items + batch["history_items"]


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
            (:func:`privacy.planning.plan_dp`).
        max_grad_norm: per-example clipping norm C.
        grad_sample_mode: ``"output"`` (this model's grad samplers fed from the logit
            gradient: the fastest), or Opacus's ``"hooks"`` (the same grad samplers, fed by
            Opacus's hooks) or ``"ghost"``; see :mod:`privacy.dp`.
        seed: seeds Poisson sampling and noise (``None`` in deployment).
        cohort_size: the training cohort's size the sampling is planned for (a site's
            released count; ``None``: the dataset's length).
    """

    noise_multiplier: float
    max_grad_norm: float
    grad_sample_mode: str = "output"
    seed: int | None = None
    cohort_size: int | None = None


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
    :class:`privacy.dp.DPTrainingSession` (Poisson sampling at rate 1/⌈n/B⌉ for the cohort
    size ``dp.cohort_size``, per-example
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
    from privacy.dp import DPTrainingSession

    register_grad_samplers()

    with DPTrainingSession(
        model,
        torch_optimizer,
        dataset,
        batch_size=batch_size,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        loss_fn=basket_loss,
        grad_sample_mode=dp.grad_sample_mode,
        output_grad_samples=type(model).per_example_gradients,
        collate_fn=collate_examples,
        seed=dp.seed,
        cohort_size=dp.cohort_size,
    ) as session:
        for epoch in range(epochs):
            dataset.set_epoch(epoch)
            result.epoch_losses.append(session.run_epoch())
        result.dp_segment = session.segment()
        trained = session.state_dict()
    model.load_state_dict(trained)
    return result


@torch.no_grad()
def score_examples(model: NextBasketRecommender, dataset: Dataset) -> np.ndarray:
    """Catalogue scores ``(len(dataset), V)`` of every example, float32.

    Each example is scored in a forward pass of its own, so a customer's scores do not
    depend on which other customers are scored with them (a batched matrix product can
    differ in the last bit with the batch's size): the federation's evaluation,
    ``fedshop-site recommend`` and ``serve`` rank a customer's items identically.
    """
    model.eval()
    scores = np.empty((len(dataset), model.num_items), dtype=np.float32)
    for row in range(len(dataset)):
        scores[row] = model(collate_examples([dataset[row]]))[0].numpy()
    return scores


def rank_items(
    model: NextBasketRecommender, dataset: Dataset, k: int, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Every example's ``k`` best catalogue items, best first (ties to the lower index,
    :func:`models.metrics.top_k_items`), and their scores: ``(len(dataset), k)`` int64 and
    float32. Scores ``chunk`` examples at a time, never the whole catalogue matrix."""
    ranked = np.empty((len(dataset), k), dtype=np.int64)
    top_scores = np.empty((len(dataset), k), dtype=np.float32)
    for start in range(0, len(dataset), chunk):
        stop = min(start + chunk, len(dataset))
        scores = score_examples(model, Subset(dataset, range(start, stop)))
        ranked[start:stop] = metrics.top_k_items(scores, k)
        top_scores[start:stop] = np.take_along_axis(scores, ranked[start:stop], axis=1)
    return ranked, top_scores


TOP_K = 10
"""The protocol's cut-off: HR, Recall and NDCG at 10."""
EVALUATION_CHUNK = 1024
"""Test customers a site ranks and scores at a time."""
HIT_SUM = "hit-sum"
RECALL_SUM = "recall-sum"
NDCG_SUM = "ndcg-sum"
ITEM_VOCABULARY = "item-vocabulary"
"""Bundle artefact: the catalogue the weights score (the :data:`CATALOGUE` fact)."""
CATALOGUE = "catalogue"
"""Shared fact (and run-config key ``recommender.catalogue``): the item catalogue, a list
of item ids (position = output index). Product data, not customer data; one catalogue
makes every site build the same network. In the run config: a file with one id per line."""
MIN_CATALOGUE_ITEMS = "min-catalogue-items"
"""Fact bound (a site's policy): the fewest items a server's catalogue may have."""
DEFAULT_MIN_CATALOGUE_ITEMS = 20
"""A catalogue of a handful of items turns the ranking metrics into questions about those
items; the bundled catalogue has 3,676."""


class Recommender(FederatedModel):
    """The next-basket recommender as a federated model (see :mod:`models.registry`)."""

    name = "recommender"
    evaluation_queries = (BoundedSum(HIT_SUM), BoundedSum(RECALL_SUM), BoundedSum(NDCG_SUM))
    headline_metric = f"ndcg@{TOP_K}"
    default_training = TrainingSettings(
        local_epochs=2, optimizer="momentum", learning_rate=8.0, batch_size=500, max_grad_norm=0.1
    )
    shared_fact_keys = (CATALOGUE, TARGET_WINDOW)
    customer_means = (f"hr@{TOP_K}", f"recall@{TOP_K}", f"ndcg@{TOP_K}")
    metric_labels = {
        f"hr@{TOP_K}": f"HR@{TOP_K}",
        f"recall@{TOP_K}": f"Recall@{TOP_K}",
        f"ndcg@{TOP_K}": f"NDCG@{TOP_K}",
        "num-customers": "test customers",
    }
    site_use = SITE_USE

    def shared_facts(self, declared: Mapping[str, Any], whole_split: WholeSplit) -> dict[str, Any]:
        """The catalogue file named by ``recommender.catalogue`` (deployment), else the
        protocol's catalogue of the whole split (:func:`catalogue_of`, simulation); and the
        training examples' ``recommender.target-window`` (empty: the default), so that every
        site draws its targets alike."""
        window = spell_target_window(parse_target_window(declared.get(TARGET_WINDOW, "")))
        path = str(declared.get(CATALOGUE, "")).strip()
        items = read_catalogue(path) if path else catalogue_of(whole_split(CATALOGUE_COLUMNS))
        if not items:
            raise ValueError("the item catalogue is empty")
        return {CATALOGUE: items, TARGET_WINDOW: window}

    def check_facts(
        self, facts: Facts, bounds: Mapping[str, Any], data_period: tuple[str, str] | None
    ) -> None:
        """A catalogue of distinct item ids, at least the policy's smallest (default
        :data:`DEFAULT_MIN_CATALOGUE_ITEMS`); a valid target window."""
        del data_period
        unknown = sorted(set(bounds) - {MIN_CATALOGUE_ITEMS})
        if unknown:
            raise ValueError(f"unknown recommender fact bounds {unknown}")
        items = facts[CATALOGUE]
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("the recommender catalogue must be a list of item ids")
        if len(set(items)) != len(items):
            raise ValueError("the recommender catalogue lists an item id twice")
        smallest = int(bounds.get(MIN_CATALOGUE_ITEMS, DEFAULT_MIN_CATALOGUE_ITEMS))
        if len(items) < smallest:
            raise ValueError(
                f"the recommender catalogue has {len(items)} items, this site's policy "
                f"needs at least {smallest}"
            )
        parse_target_window(facts.get(TARGET_WINDOW, ""))

    def build(self, facts: Facts) -> NextBasketRecommender:
        """The recommender over the shared catalogue."""
        return NextBasketRecommender(len(_catalogue(facts)))

    def site_data(self, orders: pd.DataFrame, facts: Facts) -> SiteData:
        """Next-basket protocol on the site's customers, over the shared catalogue, with
        the shared target window (the default where the facts carry none: a bundle's);
        no examples at all when the site has no product purchase."""
        vocabulary = _catalogue(facts)
        window = parse_target_window(facts.get(TARGET_WINDOW, ""))
        try:
            split = split_next_basket(orders)
        except schema.NoCustomers:
            histories, tested = {}, {}
        else:
            histories = build_histories(split.train, vocabulary)
            tested = {c: b for c, b in split.test_baskets.items() if c in histories}
        return SiteData(
            train=TrainingExamples(histories, target_window=window),
            evaluation=EvaluationExamples(histories, tested, vocabulary),
        )

    def train(self, module: nn.Module, dataset: Dataset, plan: LocalTraining) -> LocalResult:
        """:func:`train_recommender` with the round's settings (DP-SGD when σ is given)."""
        settings = plan.settings
        dp = None
        if plan.noise_multiplier is not None:
            dp = DPConfig(
                plan.noise_multiplier,
                settings.max_grad_norm,
                seed=plan.seed,
                cohort_size=plan.cohort_size,
            )
        result = train_recommender(
            module,
            dataset,
            epochs=settings.local_epochs,
            batch_size=settings.batch_size,
            lr=settings.learning_rate,
            optimizer=settings.optimizer,
            proximal_mu=plan.proximal_mu,
            seed=plan.seed or 0,
            dp=dp,
        )
        steps = result.dp_segment.steps if result.dp_segment is not None else 0
        return LocalResult(mean_finite(result.epoch_losses), steps)

    def held_out_size(self, evaluation: EvaluationExamples) -> int:
        """The test customers."""
        return len(evaluation)

    def evaluation_values(
        self, module: nn.Module, evaluation: EvaluationExamples
    ) -> dict[str, np.ndarray]:
        """Each test customer's HR@10, Recall@10 and NDCG@10 (each in [0, 1])."""
        values = {HIT_SUM: [], RECALL_SUM: [], NDCG_SUM: []}
        # A chunk of customers at a time: the target matrix of a 200k-customer storefront
        # over the catalogue would be most of a GiB.
        for start in range(0, len(evaluation), EVALUATION_CHUNK):
            rows = range(start, min(start + EVALUATION_CHUNK, len(evaluation)))
            ranked, _ = rank_items(module, Subset(evaluation, rows), TOP_K)
            targets = np.zeros((len(rows), module.num_items), dtype=bool)
            for position, row in enumerate(rows):
                targets[position, evaluation.target_items(row)] = True
            scores = metrics.ranking_metrics(ranked, targets, k=TOP_K)
            for key, metric in ((HIT_SUM, "hr"), (RECALL_SUM, "recall"), (NDCG_SUM, "ndcg")):
                values[key].append(scores[f"{metric}@{TOP_K}"])
        return {
            key: np.concatenate(parts) if parts else np.zeros(0) for key, parts in values.items()
        }

    def summarise(self, answers: list[Mapping[str, Any]]) -> dict[str, float]:
        """HR@10, Recall@10 and NDCG@10 as means over the test customers (pooled sums over
        pooled sizes, each kept in [0, 1]), and their count."""
        count = sum(float(answer[wire.NUM_EXAMPLES]) for answer in answers)

        def mean(key: str) -> float:
            total = sum(float(answer[key]) for answer in answers)
            return min(max(total / count, 0.0), 1.0) if count >= 1 else math.nan

        return {
            f"hr@{TOP_K}": mean(HIT_SUM),
            f"recall@{TOP_K}": mean(RECALL_SUM),
            f"ndcg@{TOP_K}": mean(NDCG_SUM),
            "num-customers": int(round(count)),
        }

    def artefacts(self, facts: Facts) -> dict[str, Any]:
        """The item vocabulary and the names of the personal features."""
        return {ITEM_VOCABULARY: _catalogue(facts), "personal-features": list(FEATURE_NAMES)}

    def facts_from_artefacts(self, artefacts: Mapping[str, Any]) -> dict[str, Any]:
        """The catalogue is the bundle's item vocabulary."""
        return {CATALOGUE: list(artefacts[ITEM_VOCABULARY])}

    def site_scores(self, module: nn.Module, orders: pd.DataFrame, facts: Facts) -> Recommendations:
        """Every customer's best items from their whole purchase history in ``orders``
        (its clean purchase lines over the catalogue; the protocol's test customers are
        ranked exactly as :meth:`evaluate` ranks them), and the storefront's popular items
        for known customers without one (:mod:`models.recommender.recommendations`)."""
        vocabulary = _catalogue(facts)
        purchases = clean_purchases(orders)
        histories = build_histories(purchases, vocabulary)
        examples = EvaluationExamples(histories, {c: [] for c in histories}, vocabulary)
        length = min(MAX_ITEMS, len(vocabulary))
        ranked, scores = rank_items(module, examples, length)
        buyers = buyer_counts(purchases, pd.Index(vocabulary))
        popular = metrics.top_k_items(buyers[None, :], length)[0]
        share = buyers / max(purchases[schema.CUSTOMER].nunique(), 1)
        return Recommendations(
            vocabulary,
            examples.customers,
            ranked,
            scores,
            popular,
            share[popular],
            known=orders[schema.CUSTOMER].unique(),
        )


def _catalogue(facts: Facts) -> list[str]:
    items = facts.get(CATALOGUE)
    if not items:
        raise ValueError(f"the recommender needs the item catalogue in '{CATALOGUE}'")
    return [str(item) for item in items]


MODEL = Recommender()
