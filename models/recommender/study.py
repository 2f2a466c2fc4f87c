"""The recommender's protocol on pooled order lines (:class:`models.study.PooledStudy`):
the next-basket split (or its validation split), one example per training customer with
the target window the settings name, the whole catalogue ranked for every test customer,
and the protocol's baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from torch.utils.data import Dataset

from models import schema
from models.recommender.baselines import NEXT_BASKET_BASELINES, evaluate_next_basket
from models.recommender.features import (
    CustomerHistory,
    EvaluationExamples,
    TrainingExamples,
    build_histories,
)
from models.recommender.model import NextBasketRecommender, score_examples
from models.recommender.protocol import NextBasketSplit, split_next_basket
from models.recommender.validation import split_next_basket_validation, without_test_invoices
from models.settings_per_epsilon import target_window
from models.study import PooledStudy


def evaluate_recommender(
    model: NextBasketRecommender,
    split: NextBasketSplit,
    k: int = 10,
    histories: Mapping[str, CustomerHistory] | None = None,
) -> pd.DataFrame:
    """HR@k, Recall@k and NDCG@k on the fixed next-basket protocol: overall, outside the UK
    and per home storefront (rows; columns ``customers``, ``hr@k``, ``recall@k``,
    ``ndcg@k``), ranking the whole catalogue ``split.items`` from each test customer's whole
    training history (``histories``: the split's, when the caller has built them)."""
    if model.num_items != len(split.items):
        raise ValueError(
            f"model scores {model.num_items} items but the split's catalogue has {len(split.items)}"
        )
    if histories is None:
        histories = build_histories(split.train, split.items)
    examples = EvaluationExamples(histories, split.test_baskets, split.items)
    return evaluate_next_basket(split, score_examples(model, examples), k)


class RecommenderStudy(PooledStudy):
    """The next-basket protocol on pooled order lines."""

    def __init__(self, frame: pd.DataFrame, validation: bool = False) -> None:
        self.split = (split_next_basket_validation if validation else split_next_basket)(frame)
        self.histories = build_histories(self.split.train, self.split.items)
        self.customers = int(self.split.train[schema.CUSTOMER].nunique())

    def storefronts(self) -> list[str]:
        """Home storefronts with training examples and test customers, largest first."""
        homes = self.split.home_storefront
        tested = set(self.split.test_storefronts())
        trained = {homes.get(customer) for customer in self.histories}
        return [s for s in homes.value_counts().index if s in tested and s in trained]

    def examples(
        self, settings: Mapping[str, Any], seed: int, storefront: str | None = None
    ) -> Dataset:
        """Training examples of every customer (of ``storefront`` only) under the
        settings' target window."""
        histories = self.histories
        if storefront is not None:
            homes = self.split.home_storefront
            histories = {c: h for c, h in histories.items() if homes.get(c) == storefront}
        return TrainingExamples(histories, seed=seed, target_window=target_window(settings))

    def build(self) -> NextBasketRecommender:
        """A fresh recommender over the split's catalogue."""
        return NextBasketRecommender(len(self.split.items))

    def score(self, module: NextBasketRecommender) -> pd.DataFrame:
        """HR, Recall and NDCG@10 overall, outside the UK and per home storefront."""
        return evaluate_recommender(module, self.split, histories=self.histories)

    def baselines(self) -> dict[str, pd.DataFrame]:
        """The next-basket baselines' tables on the same split."""
        return {
            name: evaluate_next_basket(self.split, scores(self.split))
            for name, scores in NEXT_BASKET_BASELINES.items()
        }


SEARCH_SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "centralized": {
        "local-epochs": (10, 20, 30),
        "optimizer": ("momentum",),
        "learning-rate": (0.3, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0),
        "batch-size": (250, 500, 1000),
        "max-grad-norm": (0.03, 0.1, 0.3, 1.0),
        "target-window": (1, 2, 3, "all"),
    },
    # ε = 1's first search chose the grid's edge in three settings (lr 2, batch 1,000,
    # clip 0.3): the grid goes one step further each way.
    "federated": {
        "local-epochs": (1, 2, 3, 5, 8),
        "optimizer": ("momentum",),
        "learning-rate": (0.5, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 12.0),
        "batch-size": (250, 500, 1000, 2000),
        "max-grad-norm": (0.03, 0.1, 0.3, 1.0),
        "target-window": (1, 2, 3, "all"),
    },
}
"""Per mode: setting (run-config spelling) -> the values ``python -m lab tune`` tries
under DP."""
NON_PRIVATE_SPACES: dict[str, dict[str, tuple[Any, ...]]] = {
    "centralized": {
        "local-epochs": (10, 20, 40),
        "optimizer": ("adam",),
        "learning-rate": (0.003, 0.01, 0.03),
        "batch-size": (32, 64, 128, 256),
        "max-grad-norm": (1.0,),
        "target-window": (1, 2, 3, "all"),
    },
    "federated": {
        "local-epochs": (1, 2, 5, 10),
        "optimizer": ("adam",),
        "learning-rate": (0.003, 0.01, 0.03),
        "batch-size": (32, 64, 128, 256),
        "max-grad-norm": (1.0,),
        "target-window": (1, 2, 3, "all"),
    },
}
"""Per mode: the values tried without DP (``max-grad-norm`` unused there, held at one)."""
VALIDATION = (
    "validation (second-to-last invoice of each test customer; test invoices removed from "
    "everything the model sees)"
)
"""What ``chosen-on`` says of settings tuned on the validation split."""


def validation_orders(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The order lines a federation on the validation split trains on (every test invoice
    removed), and the run-config facts it needs (none)."""
    return without_test_invoices(frame), {}


def pooled_study(frame: pd.DataFrame, validation: bool = False) -> RecommenderStudy:
    """The recommender's :class:`models.study.PooledStudy` of ``frame``."""
    return RecommenderStudy(frame, validation)
