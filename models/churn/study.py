"""The churn model's protocol on pooled order lines (:class:`models.study.PooledStudy`):
features and labels at the cutoff with the fixed holdout (or the validation cutoff and
holdout), one example per training customer, and the protocol's baselines."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from torch.utils.data import Dataset

from models import metrics
from models.churn.baselines import churn_baselines
from models.churn.model import ChurnModel, churn_dataset, evaluate_churn
from models.churn.protocol import churn_data
from models.churn.validation import churn_validation_data
from models.study import PooledStudy


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


def pooled_study(frame: pd.DataFrame, validation: bool = False) -> ChurnStudy:
    """The churn model's :class:`models.study.PooledStudy` of ``frame``."""
    return ChurnStudy(frame, validation)
