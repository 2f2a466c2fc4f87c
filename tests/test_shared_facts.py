"""The facts the server shares with every site: one catalogue, one churn cutoff."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from models import schema
from models.churn_protocol import HORIZON
from server.shared_facts import churn_cutoff_for
from simulations.storefronts import prepare_storefronts
from simulations.synthetic import generate_orders


def test_simulated_cutoff_is_the_whole_splits_last_timestamp_minus_the_horizon(
    tmp_path: Path,
) -> None:
    frame = generate_orders(n_storefronts=3, n_customers=120, n_items=50, seed=3)
    prepare_storefronts(frame, tmp_path / "split")
    cutoff = pd.Timestamp(churn_cutoff_for({"storefronts-dir": str(tmp_path / "split")}))
    assert cutoff == frame[schema.TIMESTAMP].max() - HORIZON
    # a small storefront's own last purchase is earlier: its own cutoff would differ
    per_storefront_last = frame.groupby(schema.STOREFRONT)[schema.TIMESTAMP].max()
    assert (per_storefront_last - HORIZON).min() < cutoff


def test_declared_cutoff_is_normalised_to_utc_and_bad_values_are_refused() -> None:
    declared = churn_cutoff_for({"churn-cutoff": "2011-09-10T13:50:00+01:00"})
    assert pd.Timestamp(declared) == pd.Timestamp("2011-09-10 12:50", tz="UTC")
    with pytest.raises(ValueError, match="churn-cutoff.*not an ISO-8601"):
        churn_cutoff_for({"churn-cutoff": "last tuesday"})
    with pytest.raises(ValueError, match="no 'churn-cutoff'.*storefronts-dir"):
        churn_cutoff_for({})
