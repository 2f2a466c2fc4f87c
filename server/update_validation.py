"""Screening of site updates before they are aggregated.

A site update is the site's model weights after local training; the *update* in the
norm sense is ``client weights - global weights``. An update is rejected when

- the reply is malformed: arrays that cannot be read, a key set that differs from the
  global model's, an array of the wrong shape or dtype, metric keys other than the
  documented ones (:data:`clients.messages.TRAIN_METRIC_KEYS`), or a weight
  (``num-examples``) that is not a positive finite number;
- any weight is NaN or infinite;
- its L2 norm is far above the round's median update norm (norm-ratio rule, in the
  spirit of norm bounding, Sun et al. 2019, "Can you really backdoor FL?"):
  ``norm > max_norm_ratio * median(norms)``. The median is only meaningful with at
  least ``min_replies_for_median`` structurally valid updates (default 3: with two
  replies the median is their mean and one attacker moves it at will), so with fewer
  replies the ratio rule is skipped;
- its norm exceeds the absolute cap ``max_update_norm`` (when set; this is the rule
  that still applies to rounds with too few replies for the median).

Everything here is a pure function of numpy arrays; nothing needs a running server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clients.messages import NUM_EXAMPLES, TRAIN_METRIC_KEYS

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ValidationPolicy:
    """Thresholds for rejecting updates.

    Parameters
    ----------
    max_norm_ratio : float
        Reject an update whose norm exceeds this multiple of the round's median norm.
    min_replies_for_median : int
        Fewest structurally valid updates for which the median rule is applied.
    max_update_norm : float | None
        Absolute cap on the update norm, applied to every update when set.
    """

    max_norm_ratio: float = 10.0
    min_replies_for_median: int = 3
    max_update_norm: float | None = None

    def __post_init__(self) -> None:
        if not self.max_norm_ratio > 1.0:
            raise ValueError(f"max_norm_ratio must be > 1, got {self.max_norm_ratio}")
        if self.min_replies_for_median < 3:
            raise ValueError("min_replies_for_median must be at least 3")
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ValueError(f"max_update_norm must be > 0, got {self.max_update_norm}")


@dataclass
class SiteUpdate:
    """One site's train reply, as the validator sees it."""

    node_id: int
    storefront: str
    weights: dict[str, np.ndarray]
    metrics: dict[str, float]
    reply: object = field(default=None, repr=False)
    """The original reply (e.g. a Flower ``Message``), handed back for accepted updates."""

    @property
    def num_examples(self) -> float:
        """The aggregation weight the site reported."""
        return float(self.metrics.get(NUM_EXAMPLES, float("nan")))


@dataclass(frozen=True)
class Rejection:
    """Why an update was not aggregated, and which site sent it."""

    node_id: int
    storefront: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason} from node {self.node_id} ({self.storefront}): {self.detail}"


def structural_problem(global_weights: Weights, update: SiteUpdate) -> tuple[str, str] | None:
    """Return ``(reason, detail)`` if the update cannot be aggregated at all, else ``None``."""
    keys, expected = set(update.weights), set(global_weights)
    if keys != expected:
        missing, extra = sorted(expected - keys), sorted(keys - expected)
        return "wrong-keys", f"missing {missing[:5]}, unexpected {extra[:5]}"
    for name, reference in global_weights.items():
        array = update.weights[name]
        if array.shape != reference.shape:
            return "wrong-shape", f"{name}: {array.shape} instead of {reference.shape}"
        if array.dtype != reference.dtype:
            return "wrong-dtype", f"{name}: {array.dtype} instead of {reference.dtype}"
    metric_keys = set(update.metrics)
    if metric_keys != TRAIN_METRIC_KEYS:
        return "wrong-metric-keys", (
            f"missing {sorted(TRAIN_METRIC_KEYS - metric_keys)}, "
            f"unexpected {sorted(metric_keys - TRAIN_METRIC_KEYS)}"
        )
    weight = update.num_examples
    if not (math.isfinite(weight) and weight > 0):
        return "bad-num-examples", f"{NUM_EXAMPLES}={weight}"
    for name, array in update.weights.items():
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            return "non-finite", f"{name} has {int((~np.isfinite(array)).sum())} NaN/inf values"
    return None


def update_norm(global_weights: Weights, client_weights: Weights) -> float:
    """L2 norm of ``client - global`` over all floating-point arrays, as one vector."""
    squared = 0.0
    for name, reference in global_weights.items():
        if np.issubdtype(reference.dtype, np.inexact):
            delta = client_weights[name].astype(np.float64) - reference.astype(np.float64)
            squared += float(np.square(delta).sum())
    return math.sqrt(squared)


def validate_updates(
    global_weights: Weights,
    updates: Sequence[SiteUpdate],
    policy: ValidationPolicy | None = None,
) -> tuple[list[SiteUpdate], list[Rejection]]:
    """Split a round's updates into accepted ones and rejections (with site and reason).

    Structural checks run first; the norm rules then compare only the structurally
    valid updates, so a malformed reply cannot shift the round's median.
    """
    policy = policy or ValidationPolicy()
    rejections: list[Rejection] = []
    candidates: list[tuple[SiteUpdate, float]] = []
    for update in updates:
        problem = structural_problem(global_weights, update)
        if problem is not None:
            rejections.append(Rejection(update.node_id, update.storefront, *problem))
        else:
            candidates.append((update, update_norm(global_weights, update.weights)))

    use_median = len(candidates) >= policy.min_replies_for_median
    median = float(np.median([norm for _, norm in candidates])) if use_median else math.nan
    accepted: list[SiteUpdate] = []
    for update, norm in candidates:
        if policy.max_update_norm is not None and norm > policy.max_update_norm:
            detail = f"norm {norm:.4g} > cap {policy.max_update_norm:.4g}"
            rejections.append(
                Rejection(update.node_id, update.storefront, "norm-above-cap", detail)
            )
        elif use_median and norm > policy.max_norm_ratio * median:
            detail = f"norm {norm:.4g} > {policy.max_norm_ratio:g} x round median {median:.4g}"
            rejections.append(Rejection(update.node_id, update.storefront, "norm-outlier", detail))
        else:
            accepted.append(update)
    return accepted, rejections
