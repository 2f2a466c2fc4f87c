"""A simulated run's shared facts, derived from its whole storefront split and declared
in its run config, so that the ServerApp reads them as a deployment's
(:mod:`server.shared_facts`).

Each model derives what its run-config table leaves empty from all storefronts' order
lines (:meth:`models.registry.FederatedModel.shared_facts`): the recommender's catalogue
(written to a file, one item per line, which ``recommender.catalogue`` names), the churn
cutoff. The split is read only for the columns a model asks for and not kept
(:class:`models.registry.WholeSplit`: at a million customers the whole split is 20M
lines, ~4.5 GiB as one frame). Tuned settings that are also facts (the recommender's
target window) are left to the ServerApp, which fills them from the validated entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common import wire
from common.atomic_files import atomic_write
from models import schema
from models.registry import BUILTIN_MODELS, FederatedModel, get_model, model_names
from models.schema import ORDERS_FILE
from models.settings_per_epsilon import federated_run_config, settings_epsilon
from server.shared_facts import declared_facts

FACTS_DIR = "shared-facts"
"""Where in the run directory a simulation writes the facts that are files."""


def split_facts(
    model: FederatedModel, declared: Mapping[str, Any], storefronts_dir: Path
) -> dict[str, Any]:
    """``model``'s facts: ``declared`` where set, else derived from the split."""

    def whole_split(columns: Sequence[str] = schema.COLUMNS) -> pd.DataFrame:
        return split_columns(storefronts_dir, columns)

    return model.shared_facts(declared, whole_split)


def declare_shared_facts(
    run_config: Mapping[str, Any], storefronts_dir: Path, run_dir: Path
) -> dict[str, Any]:
    """Run-config values declaring every fact of the run's models that ``run_config``
    leaves empty, derived from the split; a list (the catalogue) is written under
    ``run_dir/shared-facts/`` and declared by its path.

    Raises:
        ValueError: an unknown model, a bad declared value, or an empty split.
    """
    epsilon = settings_epsilon(float(run_config.get(wire.EPSILON_BUDGET, 0.0)))
    names = model_names(run_config.get("models", ",".join(BUILTIN_MODELS)))
    tuned = federated_run_config(names, epsilon)
    declarations: dict[str, Any] = {}
    for name in names:
        model = get_model(name)
        declared = declared_facts(dict(run_config), model)
        empty = [
            key
            for key, value in declared.items()
            if str(value).strip() == "" and f"{name}.{key}" not in tuned
        ]
        if not empty:
            continue
        facts = split_facts(model, declared, storefronts_dir)
        for key in empty:
            value = facts[key]
            if isinstance(value, list):
                path = Path(run_dir) / FACTS_DIR / f"{name}.{key}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, "".join(f"{item}\n" for item in value))
                value = str(path)
            declarations[f"{name}.{key}"] = value
    return declarations


def with_split_facts(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """``run_config`` with the facts it leaves empty declared from its ``storefronts-dir``
    split (files under its ``run-dir``): how every simulated run config reaches a
    ServerApp.

    Raises:
        ValueError: as :func:`declare_shared_facts`.
    """
    split, run_dir = Path(str(run_config["storefronts-dir"])), Path(str(run_config["run-dir"]))
    return {**run_config, **declare_shared_facts(run_config, split, run_dir)}


def split_columns(storefronts_dir: Path | str, columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` of every storefront's order lines of a split, in one frame; string
    columns as categoricals (see :class:`models.registry.WholeSplit`).

    Raises:
        ValueError: a column outside the canonical schema, or no storefront in the split.
    """
    unknown = [column for column in columns if column not in schema.COLUMNS]
    if unknown:
        raise ValueError(f"no column(s) {', '.join(unknown)} in the canonical schema")
    paths = sorted(Path(storefronts_dir).glob(f"*/{ORDERS_FILE}"))
    if not paths:
        raise ValueError(f"{storefronts_dir} holds no storefront ({ORDERS_FILE})")
    strings = [c for c in columns if schema.ARROW_SCHEMA.field(c).type == pa.string()]
    tables = [pq.read_table(path, columns=list(columns), read_dictionary=strings) for path in paths]
    return pa.concat_tables(tables).unify_dictionaries().to_pandas()
