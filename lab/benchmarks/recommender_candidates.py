"""Benchmark: candidate changes to the recommender, scored on validation only (issue #12).

Run ``python -m lab.benchmarks.recommender_candidates``; it prints a Markdown
section for BENCHMARKS.md. Every candidate is the centralized recommender trained with
user-level DP at each ``--epsilons`` value with that ε's settings-file entry
(:func:`lab.compare.centralized_dp_settings`, σ from
:func:`lab.compare.centralized_dp_plan`), once per training seed, and scored by
NDCG@10 on the next-basket *validation* protocol (:mod:`models.recommender.validation`);
the test split is never read. The "own history" repeat-buying baseline
(:func:`models.recommender.baselines.own_history_scores`) is scored on the same validation split.

Candidates (:data:`CANDIDATES`):

- ``current``: the model as it is;
- ``repeat-prior-γ``: the current model with the fixed repeat-buying prior
  ``γ · log_invoices_with_item`` added to every history item's score
  (``NextBasketRecommender(repeat_prior=γ)``): with the MLP at zero it ranks the history
  as the own-history baseline does, so DP-SGD only has to learn a residual;
- ``repurchase-cycle``: the current model with one more personal feature,
  :func:`repurchase_cycle`, how the days since the customer last bought the item compare
  with their mean interval between buying it;
- ``hidden-…``: the current model with other hidden widths of its MLP (it has one layer
  of 16): the hidden size chosen on validation too;
- ``item-trend``: time-aware popularity learned inside the global model: every item gets
  a trend ``a_i`` beside its bias, ``s_i = b_i + a_i · age + …``, where ``age`` is how long
  before the end of the site's data the target basket was bought (years; 0 when
  predicting, so ``b`` is the popularity *now*). Why: ranking ties in own-history by the
  last 8–26 weeks' buyers instead of all-time buyers lifts that baseline from 0.277 to
  0.281 on validation. The age of a training example is its target invoice's; it travels
  as an extra feature column that the model takes off before its MLP.

A candidate is worth keeping only if its mean beats the current model's by more than
the spread over seeds (max − min) at every ε.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lab.compare import (
    centralized_dp_plan,
    centralized_dp_settings,
    fit_recommender,
    ingest_bundled,
)
from models import schema
from models.metrics import OVERALL
from models.recommender.baselines import evaluate_next_basket, own_history_scores
from models.recommender.features import (
    FEATURE_NAMES,
    LOG_COUNT_SCALE,
    LOG_YEAR,
    NUM_FEATURES,
    CustomerHistory,
    EvaluationExamples,
    NextBasketBatch,
    NextBasketExample,
    TrainingExamples,
    build_histories,
)
from models.recommender.model import MODEL, TOP_K, NextBasketRecommender, score_examples
from models.recommender.protocol import NextBasketSplit
from models.recommender.validation import split_next_basket_validation
from simulations.storefronts import assign_storefronts

METRIC = f"ndcg@{TOP_K}"
_LAST = FEATURE_NAMES.index("log_days_since_last_purchase")
_FIRST = FEATURE_NAMES.index("log_days_since_first_purchase")
_INVOICES = FEATURE_NAMES.index("log_invoices_with_item")
# |log ratio| beyond log(20) (20 times too early or too late) is all the same: not due.
_CYCLE_CLIP = float(np.log(20.0))


@dataclass(frozen=True)
class Candidate:
    """One variant of the recommender: its prior weight γ, whether it reads the
    repurchase-cycle feature, and its MLP's hidden widths (None: the model's own)."""

    name: str
    repeat_prior: float = 0.0
    repurchase_cycle: bool = False
    hidden: tuple[int, ...] | None = None
    item_trend: bool = False

    def build(self, num_items: int) -> NextBasketRecommender:
        """A fresh model of this variant over ``num_items`` catalogue items."""
        if self.repurchase_cycle:
            return RepurchaseCycleRecommender(num_items)
        if self.item_trend:
            return ItemTrendRecommender(num_items)
        if self.hidden is not None:
            return NextBasketRecommender(num_items, hidden=self.hidden)
        return NextBasketRecommender(num_items, repeat_prior=self.repeat_prior)


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("current"),
    Candidate("repeat-prior-1", repeat_prior=1.0),
    Candidate("repeat-prior-3", repeat_prior=3.0),
    Candidate("repeat-prior-10", repeat_prior=10.0),
    Candidate("repurchase-cycle", repurchase_cycle=True),
    Candidate("hidden-8", hidden=(8,)),
    Candidate("hidden-32", hidden=(32,)),
    Candidate("hidden-16-16", hidden=(16, 16)),
    Candidate("item-trend", item_trend=True),
)
"""What the benchmark compares, the current model first."""


def repurchase_cycle(features: torch.Tensor) -> torch.Tensor:
    """``(L,)`` per history item: ``log((days since last bought + 1) / (mean days between
    the invoices holding it + 1))``, clipped to ±log 20 and scaled to [-1, 1]; 0 for an
    item bought in one invoice only (no interval to compare with).

    A function of the item's own personal features (``(L, NUM_FEATURES)``: days since the
    first and the last purchase, invoices holding it), so of the customer's own history
    only; around 0 the item is "due" again.
    """
    last = torch.expm1(features[:, _LAST] * LOG_YEAR)
    first = torch.expm1(features[:, _FIRST] * LOG_YEAR)
    invoices = torch.expm1(features[:, _INVOICES] * LOG_COUNT_SCALE).round()
    repeated = invoices >= 2
    interval = (first - last) / (invoices - 1).clamp(min=1)
    ratio = torch.log((last + 1) / (interval + 1)).clamp(-_CYCLE_CLIP, _CYCLE_CLIP)
    return torch.where(repeated, ratio / _CYCLE_CLIP, torch.zeros_like(ratio))


class RepurchaseCycleRecommender(NextBasketRecommender):
    """The recommender whose personal MLP also reads :func:`repurchase_cycle`, appended to
    each history row's features (before the forward pass and the per-example gradients
    alike, so both DP modes see the same inputs)."""

    def __init__(self, num_items: int) -> None:
        super().__init__(num_items, num_features=NUM_FEATURES + 1)

    def forward(self, batch: NextBasketBatch) -> torch.Tensor:
        """Catalogue logits, the extra feature appended."""
        return super().forward(with_repurchase_cycle(batch))

    def per_example_gradients(
        self, batch: NextBasketBatch, logit_grads: torch.Tensor
    ) -> dict[nn.Parameter, torch.Tensor]:
        """As the parent's, on the same augmented features as :meth:`forward`."""
        return super().per_example_gradients(with_repurchase_cycle(batch), logit_grads)


def with_repurchase_cycle(batch: NextBasketBatch) -> NextBasketBatch:
    """``batch`` with :func:`repurchase_cycle` appended to its features."""
    features = batch["features"]
    cycle = repurchase_cycle(features).unsqueeze(1)
    return NextBasketBatch(**{**batch, "features": torch.cat([features, cycle], dim=1)})


AGE_UNIT_DAYS = 365.0
"""A target basket's age is in years: the bundled data spans two."""


def with_age(example: NextBasketExample, age: float) -> NextBasketExample:
    """``example`` with ``age`` appended to every history row's features."""
    features = example["features"]
    column = torch.full((len(features), 1), age, dtype=features.dtype)
    return NextBasketExample(**{**example, "features": torch.cat([features, column], dim=1)})


class DatedTrainingExamples(TrainingExamples):
    """Training examples whose rows also carry the target basket's age: years from the
    target invoice to the last invoice of the site's data."""

    def __init__(self, histories: Mapping[str, CustomerHistory], **options: Any) -> None:
        super().__init__(histories, **options)
        self.last_day = max(history.invoice_days[-1] for history in self.histories)

    def __getitem__(self, index: int) -> NextBasketExample:
        target = self.target_invoice(index)  # the same draw as the parent's
        days = self.last_day - self.histories[index].invoice_days[target]
        return with_age(super().__getitem__(index), days / AGE_UNIT_DAYS)


class DatedEvaluationExamples(EvaluationExamples):
    """Evaluation examples at age 0: the prediction is for now, the end of the data."""

    def __getitem__(self, index: int) -> NextBasketExample:
        return with_age(super().__getitem__(index), 0.0)


class ItemTrendRecommender(NextBasketRecommender):
    """The recommender plus a per-item trend on the target basket's age (module docstring),
    read from the last feature column of each example's first history row."""

    def __init__(self, num_items: int) -> None:
        super().__init__(num_items)
        self.item_trend = nn.Parameter(torch.zeros(num_items))

    def forward(self, batch: NextBasketBatch) -> torch.Tensor:
        """Catalogue logits with ``a_i · age`` added."""
        plain, age = _split_age(batch)
        return super().forward(plain) + age.unsqueeze(1) * self.item_trend

    def per_example_gradients(
        self, batch: NextBasketBatch, logit_grads: torch.Tensor
    ) -> dict[nn.Parameter, torch.Tensor]:
        """The parent's, plus the trend's: ``∂loss_b/∂a_i = ∂loss_b/∂s_bi · age_b``."""
        plain, age = _split_age(batch)
        grads = super().per_example_gradients(plain, logit_grads)
        return grads | {self.item_trend: logit_grads * age.unsqueeze(1)}


def _split_age(batch: NextBasketBatch) -> tuple[NextBasketBatch, torch.Tensor]:
    """The batch without its age column, and each example's age ``(B,)``."""
    features = batch["features"]
    if features.shape[1] == NUM_FEATURES:  # an empty Poisson batch, built without ages
        return batch, features.new_zeros(len(batch["history_offsets"]))
    age = features[batch["history_offsets"], -1]
    return NextBasketBatch(**{**batch, "features": features[:, :-1]}), age


def validation_ndcg(
    candidate: Candidate,
    split: NextBasketSplit,
    histories: dict,
    epsilon: float,
    seed: int,
    epochs: int | None,
) -> float:
    """Validation NDCG@10 of ``candidate`` trained with DP at ``epsilon`` (its settings
    entry; ``epochs`` replaces the entry's epochs when given) from training seed ``seed``."""
    entry = centralized_dp_settings(MODEL.name, epsilon)
    if epochs is not None:
        entry = entry.with_overrides({f"{MODEL.name}.local-epochs": epochs})
    settings = entry.training()
    examples, evaluation_examples = (TrainingExamples, EvaluationExamples)
    if candidate.item_trend:
        examples, evaluation_examples = (DatedTrainingExamples, DatedEvaluationExamples)
    training = examples(histories, seed=seed, target_window=entry.target_window())
    customers = split.train[schema.CUSTOMER].nunique()
    plan = centralized_dp_plan(epsilon, len(training), customers, settings)
    model, _ = fit_recommender(
        len(split.items), training, settings, seed, plan.noise_multiplier, build=candidate.build
    )
    evaluation = evaluation_examples(histories, split.test_baskets, split.items)
    scores = score_examples(model, evaluation)
    return float(evaluate_next_basket(split, scores, TOP_K).loc[OVERALL, METRIC])


def markdown(
    command: str,
    results: dict[tuple[str, float], list[float]],
    baseline: float,
    seeds: Sequence[int],
    epsilons: Sequence[float],
    customers: int,
    seconds: float,
) -> str:
    """The section: one row per candidate and ε, and the baseline."""
    lines = [
        "## Recommender candidates on validation (issue #12)",
        "",
        f"Command: `{command}`; bundled data, next-basket validation protocol "
        f"({customers:,} validation customers; test invoices removed, the test split never "
        f"read), centralized DP with each ε's settings-file entry, training seeds "
        f"{', '.join(map(str, seeds))}. Δ is against the current model at the same ε.",
        "",
        "| candidate | ε | NDCG@10 (mean) | min–max over seeds | Δ mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for epsilon in epsilons:
        current = float(np.mean(results[(CANDIDATES[0].name, epsilon)]))
        for name in dict.fromkeys(name for name, _ in results):
            scores = results[(name, epsilon)]
            lines.append(
                f"| {name} | {epsilon:g} | {np.mean(scores):.4f} | "
                f"{min(scores):.4f}–{max(scores):.4f} | {np.mean(scores) - current:+.4f} |"
            )
    lines += [
        f"| own history (repeat-buying baseline) | – | {baseline:.4f} | deterministic | |",
        "",
        f"Total time {seconds:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Train every candidate at every ε and seed; print the Markdown section."""
    parser = argparse.ArgumentParser(prog="python -m lab.benchmarks.recommender_candidates")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--candidates",
        nargs="+",
        choices=[c.name for c in CANDIDATES],
        default=[c.name for c in CANDIDATES],
        help="which candidates to train (default: all)",
    )
    parser.add_argument("--epochs", type=int, help="replace the entries' epochs (quick runs)")
    args = parser.parse_args(argv)
    argv_shown = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python -m lab.benchmarks.recommender_candidates", *argv_shown])
    torch.set_num_threads(1)  # tiny models on shared cores, as compare does
    started = time.perf_counter()
    split = split_next_basket_validation(assign_storefronts(ingest_bundled()))
    histories = build_histories(split.train, split.items)
    baseline = float(evaluate_next_basket(split, own_history_scores(split)).loc[OVERALL, METRIC])
    chosen = [c for c in CANDIDATES if c.name in args.candidates]
    if chosen[0] is not CANDIDATES[0]:
        chosen.insert(0, CANDIDATES[0])  # the reference every Δ is taken against
    results: dict[tuple[str, float], list[float]] = {}
    for epsilon in args.epsilons:
        for candidate in chosen:
            scores = []
            for seed in args.seeds:
                scores.append(
                    validation_ndcg(candidate, split, histories, epsilon, seed, args.epochs)
                )
                print(
                    f"[candidates] ε {epsilon:g} {candidate.name} seed {seed}: {scores[-1]:.4f}",
                    file=sys.stderr,
                )
            results[(candidate.name, epsilon)] = scores
    seconds = time.perf_counter() - started
    customers = len(split.test_customers)
    print(markdown(command, results, baseline, args.seeds, args.epsilons, customers, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
