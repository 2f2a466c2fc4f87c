"""The shared, non-private facts the server sends to every site, per model, from the run
config alone.

Each model declares the facts its sites must agree on
(:meth:`models.registry.FederatedModel.shared_facts`: the recommender's item catalogue,
the churn cutoff) and reads them from its run-config table: ``recommender.catalogue``
names the central team's catalogue file, ``churn.cutoff`` is a timestamp. A simulation
declares them there too, from its storefront split (:mod:`simulations.shared_facts`):
the ServerApp never reads a storefront's data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from models import schema
from models.registry import FederatedModel


def declared_facts(run_config: dict[str, Any], model: FederatedModel) -> dict[str, Any]:
    """The values of ``model``'s fact keys in its run-config table ("" where unset)."""
    return {key: run_config.get(f"{model.name}.{key}", "") for key in model.shared_fact_keys}


def shared_facts(run_config: dict[str, Any], model: FederatedModel) -> dict[str, Any]:
    """The facts of ``model`` for this run, as its run-config table declares them.

    Raises:
        ValueError: a declared value is invalid, or a fact the model needs is not declared.
    """
    declared = declared_facts(run_config, model)

    def undeclared(columns: Sequence[str] = schema.COLUMNS) -> pd.DataFrame:
        del columns
        missing = [f"{model.name}.{key}" for key, value in declared.items() if not value]
        raise ValueError(
            f"no {', '.join(missing)} in the run config: the central team sets it "
            "(fedshop-sim declares it from the storefront split in simulation)"
        )

    return model.shared_facts(declared, undeclared)
