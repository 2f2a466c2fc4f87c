"""Reference baselines of the churn protocol (docs/protocols.md, "Tasks and how they are
judged"): scikit-learn logistic regression on log1p of the nine protocol features,
gradient boosting on the raw features, and recency alone, each scored by stratified,
seeded 5-fold cross-validation over the whole churn population.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits

from models import metrics
from models.churn.protocol import ChurnData

CV_FOLDS = 5
CV_SEED = 0


def logistic_regression() -> object:
    """The reference churn model: standardised log1p features, L2 logistic regression."""
    return make_pipeline(
        FunctionTransformer(np.log1p), StandardScaler(), LogisticRegression(max_iter=1000)
    )


def gradient_boosting() -> object:
    """Histogram gradient boosting with scikit-learn defaults (seeded)."""
    return HistGradientBoostingClassifier(random_state=CV_SEED)


def cross_validated_churn_scores(
    model: object, features: pd.DataFrame, labels: np.ndarray
) -> np.ndarray:
    """Out-of-fold churn probabilities of ``model`` under stratified, seeded 5-fold CV."""
    folds = StratifiedKFold(n_splits=CV_FOLDS, shuffle=True, random_state=CV_SEED)
    return cross_val_predict(model, features, labels, cv=folds, method="predict_proba")[:, 1]


def churn_baselines(data: ChurnData) -> pd.DataFrame:
    """ROC-AUC, PR-AUC and Brier of the churn baselines (5-fold CV on the whole population).

    Recency alone is a ranking, not a probability, so it has an AUC but no Brier score.
    """
    # Folds are drawn over customers in first-invoice order, which no site key changes.
    order = np.argsort(data.first_invoice.to_numpy(dtype=str), kind="stable")
    features, labels = data.features.iloc[order], data.labels.to_numpy()[order]
    rows = {}
    # One thread: on a few thousand rows, parallel threads only contend with each other.
    for name, model in (
        ("logistic regression (log1p)", logistic_regression()),
        ("gradient boosting", gradient_boosting()),
    ):
        with threadpool_limits(1):
            scores = cross_validated_churn_scores(model, features, labels)
        rows[name] = {
            "roc-auc": metrics.roc_auc(scores, labels),
            "pr-auc": metrics.pr_auc(scores, labels),
            "brier": metrics.brier(scores, labels),
        }
    recency = features["recency"].to_numpy()
    rows["recency alone"] = {
        "roc-auc": metrics.roc_auc(recency, labels),
        "pr-auc": metrics.pr_auc(recency, labels),
        "brier": float("nan"),
    }
    return pd.DataFrame.from_dict(rows, orient="index")
