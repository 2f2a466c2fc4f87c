"""The churn validation protocol: the test protocol moved one horizon back in time.

Validation cutoff = test cutoff − 90 days (:data:`models.churn.protocol.HORIZON`). Only
order lines at or before the *test* cutoff are read, so the validation population,
features and labels know nothing of the test label window:

- population: customers with a purchase at or before the validation cutoff;
- label: no purchase in the 90 days after it (up to the test cutoff);
- features: rows at or before the validation cutoff;
- held out: the same stratified, seeded 20 % per storefront rule
  (:func:`models.churn.protocol.holdout_mask`) on the validation labels.

Why an earlier cutoff rather than a held-out share of the training customers: the test
labels are purchases after the test cutoff, and a held-out share of training customers
would still be labelled by them; tuning on it would choose settings with knowledge of the
very period the test scores. The earlier cutoff reads nothing after the test cutoff, and
asks the question deployment asks (who of today's customers stops buying in the next 90
days?) one horizon earlier, so it also sees the seasonal drift a model faces in use. Its
population is smaller (customers who had bought by then). A site computes it from its own
orders and the shared validation cutoff alone, as it does the test protocol.
"""

from __future__ import annotations

import pandas as pd

from models import schema
from models.churn.protocol import (
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    HORIZON,
    ChurnData,
    churn_cutoff,
    churn_data,
)


def validation_cutoff(test_cutoff: pd.Timestamp) -> pd.Timestamp:
    """The validation cutoff: one label horizon (90 days) before the test cutoff."""
    return test_cutoff - HORIZON


def before_test_labels(frame: pd.DataFrame, test_cutoff: pd.Timestamp) -> pd.DataFrame:
    """The order lines at or before the test cutoff: all the validation protocol reads."""
    return frame[frame[schema.TIMESTAMP] <= test_cutoff].reset_index(drop=True)


def churn_validation_data(
    frame: pd.DataFrame,
    fraction: float = HOLDOUT_FRACTION,
    seed: int = HOLDOUT_SEED,
    test_cutoff: pd.Timestamp | None = None,
) -> ChurnData:
    """The validation protocol (module docstring) on order lines in the canonical schema.

    ``test_cutoff`` defaults to the frame's own (:func:`models.churn.protocol.churn_cutoff`,
    on all its rows); the result's ``cutoff`` is the validation cutoff.
    """
    if test_cutoff is None:
        test_cutoff = churn_cutoff(frame)
    return churn_data(
        before_test_labels(frame, test_cutoff),
        fraction,
        seed,
        cutoff=validation_cutoff(test_cutoff),
    )
