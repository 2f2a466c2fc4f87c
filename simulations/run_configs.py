"""The run configs of the simulation jobs: the main job's, and the comparison's runs.

Overrides of the app's ``[tool.flwr.app.config]`` (``pyproject.toml``), kept apart from
the modules that run them so the command line can read them without the training stack.
"""

from __future__ import annotations

from typing import Any

MAIN_RUN_CONFIG: dict[str, Any] = {
    "models": "churn,recommender",
    "epsilon": 8.0,
    "num-server-rounds": 4,
    "churn.local-epochs": 2,
    "recommender.local-epochs": 5,
}
"""The main job (``fedshop-sim main``) and the comparison's federated DP runs (with their
own ε): both models under DP at ε = 8 per site and model, 4 rounds; the
per-model settings of ``pyproject.toml`` (recommender: momentum SGD, lr 3, batch 500,
clip 0.1; churn: SGD, lr 0.05, batch 64, clip 1) with 5 and 2 local epochs."""

PLAIN_RUN_CONFIG: dict[str, Any] = {
    **MAIN_RUN_CONFIG,
    "epsilon": 0.0,
    "recommender.optimizer": "adam",
    "recommender.learning-rate": 0.01,
    "recommender.batch-size": 64,
}
"""Non-private federated training: the recommender with the centralized non-private
reference's Adam settings, otherwise as :data:`MAIN_RUN_CONFIG`."""

QUICK_OVERRIDES: dict[str, Any] = {
    "num-server-rounds": 1,
    "churn.local-epochs": 1,
    "recommender.local-epochs": 1,
}
"""One round of one local epoch per model (smoke tests)."""
