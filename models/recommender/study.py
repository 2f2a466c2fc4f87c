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
from models.recommender.features import EvaluationExamples, TrainingExamples, build_histories
from models.recommender.model import NextBasketRecommender, score_examples
from models.recommender.protocol import NextBasketSplit, split_next_basket
from models.recommender.validation import split_next_basket_validation
from models.settings_per_epsilon import target_window
from models.study import PooledStudy


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
        return evaluate_recommender(module, self.split)

    def baselines(self) -> dict[str, pd.DataFrame]:
        """The next-basket baselines' tables on the same split."""
        return {
            name: evaluate_next_basket(self.split, scores(self.split))
            for name, scores in NEXT_BASKET_BASELINES.items()
        }


def pooled_study(frame: pd.DataFrame, validation: bool = False) -> RecommenderStudy:
    """The recommender's :class:`models.study.PooledStudy` of ``frame``."""
    return RecommenderStudy(frame, validation)
