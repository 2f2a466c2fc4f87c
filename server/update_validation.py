"""Screening of site updates before they are aggregated.

A site update is the site's model weights after local training; the *update* in the
norm sense is ``client weights - global weights``. An update is rejected when

- the reply is malformed: arrays that cannot be read, a key set that differs from the
  global model's, an array of the wrong shape or dtype, metric keys other than the
  documented ones (:data:`common.wire.TRAIN_METRIC_KEYS`), or a weight
  (``num-examples``) that is not a positive whole number;
- any weight is NaN or infinite;
- its norm *per unit of local training* is far above the round's median (size-aware
  norm-ratio rule, below): ``norm_i / scale_i > max_norm_ratio * median_j(norm_j /
  scale_j)``. The median is only meaningful with at least ``min_replies_for_median``
  structurally valid updates (default 3: with two replies the median is their mean and
  one attacker moves it at will), so with fewer replies the ratio rule is skipped;
- its plain norm exceeds the absolute cap ``max_update_norm`` (when set; this is the
  rule that still applies to rounds with too few replies for the median).

**Size-aware norm ratio (random-walk DP-SGD step scale).** Norm bounding (Sun et al.
2019, "Can you really backdoor FL?") compares plain norms, which assumes every site
trains about as much. Here the UK storefront has ~40x the customers of the small ones,
so at one batch size it takes ~40x the local steps, and its honest update was 10-40x the
median norm: the plain rule threw away 90% of the federation's data. The server knows
what each site did: its reported ``num-examples`` n_i and the plan it sent (local
epochs E, batch size B) give the site's local steps s_i = E · ⌈n_i/B⌉ (as Opacus counts
them) and its expected batch b_i = q_i · n_i with q_i = 1/⌈n_i/B⌉; the site reports the
noise multiplier σ_i it trained with (it is the site's policy, not the server, that
decides it: :func:`privacy.planning.plan_site_run`).
One DP-SGD step (Abadi et al. 2016) moves the weights by lr · (mean clipped gradient,
norm ≤ C, + Gaussian noise of norm ≈ σ C √d / b) for d parameters, and s steps add up as
a random walk, so an honest update is about lr · C · :func:`step_scale`
``= √(s · (1 + d σ² / b²))`` (without DP σ = 0 and the scale is √s). Dividing by it makes
a tiny DP site (b = its 7 customers, noise-dominated) and the UK (b ≈ B, many steps)
comparable; lr and C are common to all sites and cancel in the ratio.

Measured on the bundled storefronts (7 sites, 7-2,427 training customers) with the
site code and RDP-planned noise (before PLD became the default accountant), 3 FedAvg
rounds each of churn (SGD lr 0.05, C 1) and the recommender (momentum lr 3, C 0.1, 2
local epochs), at ε = 8 and non-private, batch 64 and 500
(24 rounds, 168 honest updates): the plain norm ratio of the honest UK update exceeded
10 in 8 of the 24 rounds (up to 39.8: recommender, no DP, B 64). Per unit of scale the
worst honest ratio is 8.4 (UK, recommender round 1, no DP, B 500; 3.7 under DP), so all
168 pass at 10. A 50x boosted update of any one site is rejected in every round
(weakest: 17.9x the median). A sign-flipped x20 update is rejected in 155 of the 168
cases; the 13 that pass (7.2-9.8x) come from sites whose honest scaled norm is below
half the median (e.g. "Other" in churn at ε = 8, B 500). Plain √s (no noise term) fails
under DP: tiny sites have b = n, their noise-dominated updates spread 7x, and a 50x
boosted UK update scored only 3.5x the median. Linear s (signal-dominated bound) lets
a x20 flipped UK update through at 4.2x.

**Limits.** A norm rule bounds how far an accepted update can reach, not its direction:
an update flipped or rescaled within 10x of the median per scale passes, and only
robust aggregation (trimmed mean / median) limits its effect. ``num-examples`` is the
site's claim: inflating it raises the step allowance only as √s while lowering the
predicted noise (under DP in the noise-dominated regime it *shrinks* the allowance) —
but under weighted FedAvg it raises the aggregation weight one for one, and no norm
screening bounds that. The defences against weight inflation are the unweighted
trimmed-mean / median aggregation rules, the absolute cap ``max-update-norm``, and the
central team checking reported sizes against the storefronts it deployed. Likewise the
reported ``noise-multiplier``: a site claiming more noise than it added widens its own
allowance by √(1 + dσ²/b²); the same defences bound it. Without a plan in the train
config (no ``local-epochs`` and ``batch-size``) every site gets scale 1: the plain,
stricter rule.

Everything here is a function of numpy arrays and the plan; nothing needs a running server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.wire import BATCH_SIZE, LOCAL_EPOCHS, NOISE_MULTIPLIER, NUM_EXAMPLES, TRAIN_METRIC_KEYS
from privacy.planning import opacus_sample_rate, opacus_steps_per_epoch

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class ValidationPolicy:
    """Thresholds for rejecting updates.

    Parameters
    ----------
    max_norm_ratio : float
        Reject an update whose norm per unit of :func:`step_scale` exceeds this multiple
        of the round's median (run config ``max-norm-ratio``).
    min_replies_for_median : int
        Fewest structurally valid updates for which the median rule is applied.
    max_update_norm : float | None
        Absolute cap on the plain update norm, applied to every update when set.
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
    privacy_note: str = ""
    """Why the site planned the server's request down ("" if it did not)."""

    @property
    def num_examples(self) -> float:
        """The aggregation weight the site reported."""
        return float(self.metrics.get(NUM_EXAMPLES, float("nan")))

    @property
    def noise_multiplier(self) -> float:
        """The DP noise multiplier the site reported (0: trained without DP)."""
        return float(self.metrics.get(NOISE_MULTIPLIER, float("nan")))


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
    if not (math.isfinite(weight) and weight > 0 and weight == math.floor(weight)):
        # A count of customers: the step scale is computed from it.
        return "bad-num-examples", f"{NUM_EXAMPLES}={weight}"
    sigma = update.noise_multiplier
    if not (math.isfinite(sigma) and sigma >= 0):
        return "bad-noise-multiplier", f"{NOISE_MULTIPLIER}={sigma}"
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


def step_scale(
    local_steps: int, noise_multiplier: float, expected_batch_size: float, num_parameters: int
) -> float:
    """Expected norm of ``local_steps`` DP-SGD steps, in units of learning rate x clip norm.

    ``√(s · (1 + d σ² / b²))``: each step adds the mean clipped gradient (norm ≤ 1 in
    these units) plus Gaussian noise of norm ≈ σ √d / b, and s steps add up as a random
    walk. ``noise_multiplier = 0`` (no DP) gives √s.
    """
    noise = num_parameters * noise_multiplier**2 / expected_batch_size**2
    return math.sqrt(local_steps * (1.0 + noise))


@dataclass(frozen=True)
class RoundPlan:
    """The local training the server asked every site for in one round.

    With it the validator knows each site's steps, noise multiplier and expected batch
    from the site's reported ``num-examples`` alone (see the module docstring).
    """

    local_epochs: int
    batch_size: int
    num_parameters: int
    """Floating-point parameters of the model (d)."""

    @classmethod
    def from_train_config(
        cls, config: Mapping[str, Any], global_weights: Weights
    ) -> RoundPlan | None:
        """Read the plan from a train message's config; ``None`` if it lacks a plan key."""
        if any(key not in config for key in (LOCAL_EPOCHS, BATCH_SIZE)):
            return None
        return cls(
            local_epochs=int(config[LOCAL_EPOCHS]),
            batch_size=int(config[BATCH_SIZE]),
            num_parameters=sum(
                int(array.size)
                for array in global_weights.values()
                if np.issubdtype(array.dtype, np.inexact)
            ),
        )

    def site_scale(self, num_examples: int, noise_multiplier: float) -> float:
        """:func:`step_scale` of a site with ``num_examples`` training customers that
        trained with ``noise_multiplier`` (0: no DP)."""
        steps = self.local_epochs * opacus_steps_per_epoch(num_examples, self.batch_size)
        expected_batch = opacus_sample_rate(num_examples, self.batch_size) * num_examples
        return step_scale(steps, noise_multiplier, expected_batch, self.num_parameters)


def validate_updates(
    global_weights: Weights,
    updates: Sequence[SiteUpdate],
    policy: ValidationPolicy | None = None,
    plan: RoundPlan | None = None,
) -> tuple[list[SiteUpdate], list[Rejection]]:
    """Split a round's updates into accepted ones and rejections (with site and reason).

    Structural checks run first; the norm rules then compare only the structurally
    valid updates, so a malformed reply cannot shift the round's median. With a
    ``plan`` the ratio rule compares norms per :meth:`RoundPlan.site_scale`; without
    one, plain norms.
    """
    policy = policy or ValidationPolicy()
    rejections: list[Rejection] = []
    candidates: list[tuple[SiteUpdate, float, float]] = []
    for update in updates:
        problem = structural_problem(global_weights, update)
        scale = 1.0
        if problem is None and plan is not None:
            scale = plan.site_scale(int(update.num_examples), update.noise_multiplier)
        if problem is not None:
            rejections.append(Rejection(update.node_id, update.storefront, *problem))
        else:
            candidates.append((update, update_norm(global_weights, update.weights), scale))

    use_median = len(candidates) >= policy.min_replies_for_median
    scaled = [norm / scale for _, norm, scale in candidates]
    median = float(np.median(scaled)) if use_median else math.nan
    accepted: list[SiteUpdate] = []
    for (update, norm, scale), per_scale in zip(candidates, scaled, strict=True):
        if policy.max_update_norm is not None and norm > policy.max_update_norm:
            detail = f"norm {norm:.4g} > cap {policy.max_update_norm:.4g}"
            rejections.append(
                Rejection(update.node_id, update.storefront, "norm-above-cap", detail)
            )
        elif use_median and per_scale > policy.max_norm_ratio * median:
            detail = (
                f"norm {norm:.4g} / step scale {scale:.4g} = {per_scale:.4g} > "
                f"{policy.max_norm_ratio:g} x round median {median:.4g}"
            )
            rejections.append(Rejection(update.node_id, update.storefront, "norm-outlier", detail))
        else:
            accepted.append(update)
    return accepted, rejections
