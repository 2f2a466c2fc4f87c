"""A site's exact metrics of the global models it installed, on its own held-out customers.

What the server receives of an evaluation is noisy (:mod:`privacy.release`); the site
itself may know the exact figures for its own storefront — they never leave it, so they
spend no ε. At every install (delivered or copied) the site scores each installed model
on its held-out customers by the model's protocol
(:meth:`models.registry.FederatedModel.held_out_metrics`) and keeps them next to the
weights, in ``<site dir>/models/<run>/local-evaluation.json``;
``fedshop-site local-evaluation --data DIR`` shows them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from clients.model_store import LOCAL_EVALUATION, InstalledModels
from common.atomic_files import atomic_write
from models.registry import get_model


def local_metrics(installed: InstalledModels, orders: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per installed model: its exact metrics on the held-out customers of ``orders``, or
    why it could not be scored (the models are installed either way: scoring is the
    site's own information, not a condition of use)."""
    metrics = {}
    for name, module in installed.modules.items():
        model = get_model(name)
        try:
            data = model.site_data(orders, installed.facts[name])
            with torch.no_grad():
                module.eval()
                metrics[name] = model.held_out_metrics(module, [data.evaluation])
        except ValueError as error:
            metrics[name] = {"not-scored": str(error)}
    return metrics


def write_local_evaluation(installed: InstalledModels, orders: pd.DataFrame) -> Path:
    """Score the installed run on ``orders`` and keep the result in its folder."""
    path = installed.directory / LOCAL_EVALUATION
    text = json.dumps(local_metrics(installed, orders), indent=2, sort_keys=True, default=float)
    atomic_write(path, text + "\n")
    return path


def read_local_evaluation(installed: InstalledModels) -> dict[str, dict[str, Any]] | None:
    """What :func:`write_local_evaluation` kept for the run (``None``: not scored yet)."""
    path = installed.directory / LOCAL_EVALUATION
    return json.loads(path.read_text()) if path.is_file() else None
