"""The files of a run directory that the ServerApp writes and the reports read."""

from __future__ import annotations

ROUNDS_LOG = "rounds.jsonl"
"""One JSON record per model and round: sites accepted, declined, failed, their privacy
reports, train and pooled evaluation metrics."""
RESOLVED_CONFIG = "config.json"
"""The run's resolved run config: what it was given, with the settings chosen on
validation filled in, and under :data:`VALIDATED_SETTINGS` which entry each model's are."""
VALIDATED_SETTINGS = "validated-settings"
DELIVERY_LOG = "delivery.json"
"""Which sites installed the run's delivered model bundle, and which did not."""
EXACT_EVALUATION = "exact-evaluation.json"
"""Simulation only: the final models' exact metrics on every storefront's held-out
customers (:mod:`simulations.exact_evaluation`), beside the server's noisy estimates."""
