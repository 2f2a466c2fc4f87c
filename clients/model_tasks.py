"""What a site needs to know about each federated model: data, network, loss, evaluation.

A :class:`ModelTask` ties a model of :mod:`models` to the site's round: it splits the
site's order lines into per-customer training examples and held-out evaluation data by
the model's fixed protocol, builds the plain torch module (the global weights are then
loaded into it), gives the per-example loss DP-SGD clips, and evaluates into the
aggregate-only metrics of :data:`clients.messages.EVALUATE_METRIC_KEYS` — sums and
counts, nothing per customer. :data:`MODEL_TASKS` maps the wire's model name to its task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass(frozen=True)
class SiteSplit:
    """One site's data for one model, split by the model's fixed protocol."""

    train: Dataset
    """Exactly one example per training customer (user-level DP)."""
    evaluation: Any
    """The held-out customers, in whatever form the task's ``evaluate`` reads."""


@dataclass(frozen=True)
class ModelTask:
    """How a site prepares, trains and evaluates one model."""

    name: str
    prepare: Callable[[pd.DataFrame], SiteSplit]
    """Order lines of the site -> training examples and held-out data."""
    build: Callable[[], nn.Module]
    """A fresh plain module with the global architecture (weights are loaded after)."""
    per_example_loss: Callable[[nn.Module, Any], torch.Tensor]
    """One loss per example of a batch (no reduction), as DP-SGD clips it."""
    evaluate: Callable[[nn.Module, Any], dict[str, Any]]
    """Held-out data -> exactly the model's evaluate metric keys (sums and counts)."""
    collate_fn: Callable[[list], Any] | None = None
    grad_sample_mode: str = "hooks"
    """Opacus per-example gradient mode (see :mod:`privacy.dp`)."""


MODEL_TASKS: dict[str, ModelTask] = {}
"""Every model a site can train, by the name the server sends in the train config."""
