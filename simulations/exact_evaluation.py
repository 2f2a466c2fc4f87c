"""The exact metrics of a simulated federation's final models, for the researcher.

A site sends the server only noisy answers (:mod:`privacy.release`), so the server's
pooled metrics are estimates with a spread. A simulation holds every storefront's data,
so the researcher can also score the final global weights exactly, on every storefront's
held-out customers by the model's own protocol
(:meth:`models.registry.FederatedModel.held_out_metrics`): the figures the comparison,
the tuning searches and the main job's report use, and what the server's estimates are
judged against. Nothing here runs at a site or leaves one.

:func:`write_exact_evaluation` keeps them in ``<run-dir>/exact-evaluation.json`` in the
server's flat naming (overall ``<metric>``, ``<storefront>/<metric>``), per model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from clients.site_data import storefront_slugs
from common import wire
from common.atomic_files import atomic_write
from models import schema
from models.registry import Facts, get_model
from server.bundle import BUNDLE_DIR, load_bundle
from server.run_files import EXACT_EVALUATION


def exact_metrics(
    storefronts_dir: Path, model_name: str, weights: Mapping[str, np.ndarray], facts: Facts
) -> dict[str, Any]:
    """``model_name``'s exact metrics with ``weights`` over every storefront of the split:
    pooled under the metric's name, per storefront as ``<storefront>/<metric>``."""
    model = get_model(model_name)
    module = model.build(facts)
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()})
    module.eval()
    result: dict[str, Any] = {}
    evaluations = []
    with torch.no_grad():
        for slug in storefront_slugs(storefronts_dir):
            orders = pd.read_parquet(Path(storefronts_dir) / slug / schema.ORDERS_FILE)
            evaluation = model.site_data(orders, facts).evaluation
            if model.held_out_size(evaluation) == 0:
                continue
            storefront = str(orders[schema.STOREFRONT].iloc[0])
            for name, value in model.held_out_metrics(module, [evaluation]).items():
                result[f"{storefront}/{name}"] = value
            evaluations.append(evaluation)
        result.update(model.held_out_metrics(module, evaluations))
    return result


def write_exact_evaluation(storefronts_dir: Path, run_dir: Path) -> Path:
    """Score the run's final bundle exactly on the split (module docstring)."""
    manifest, weights = load_bundle(Path(run_dir) / BUNDLE_DIR)
    per_model = {}
    for name, entry in manifest[wire.MANIFEST_MODELS].items():
        facts = get_model(name).facts_from_artefacts(entry[wire.ARTEFACTS])
        per_model[name] = exact_metrics(storefronts_dir, name, weights[name], facts)
    path = Path(run_dir) / EXACT_EVALUATION
    atomic_write(path, json.dumps(per_model, indent=2, sort_keys=True, default=float) + "\n")
    return path
