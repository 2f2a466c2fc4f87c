"""RDP privacy accounting for DP-SGD with Poisson sampling, and noise calibration.

This module owns the numbers the project *reports*. ε for a list of DP training segments is
computed with the Rényi-DP (RDP) accountant of the Poisson-subsampled Gaussian mechanism
(Mironov, Talwar and Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
Mechanism"; the analysis behind Opacus's ``RDPAccountant``) and converted to (ε, δ)-DP with
Balle et al. 2020 ("Hypothesis testing interpretations and Rényi differential privacy",
Theorem 21), as Opacus and Google's dp_accounting do. RDP is reported, not PRV: it is fast
and stable at any ε, and it is an upper bound, so a budget checked with it is never overspent.

Segments may be heterogeneous (different sampling rates or noise multipliers); RDP composes
by adding the per-order RDP curves. The Opacus engine's own accountant is never used for
reporting. This module imports neither torch nor Opacus, so ledger checks start fast.
"""

from __future__ import annotations

import math
import numbers
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special

# The RDP orders α at which the privacy curve is evaluated: the integer orders of Google's
# dp_accounting RdpAccountant defaults. Integer orders have a closed form (a finite binomial
# sum, Mironov et al. 2019 §3.3), so independent accountants agree to rounding error. At
# fractional orders the series is alternating and accountants differ: dp_accounting 0.6 adds
# all terms unsigned and over-states RDP by up to 20 % near α = 1. Dropping fractional orders
# costs < 1 % noise at ε ≤ 3 and ≈ 1 % at ε = 8 (more only at ε ≳ 20, where α < 2 helps).
RDP_ORDERS: tuple[int, ...] = tuple(list(range(2, 64)) + [128, 256, 512, 1024])

# Calibration searches noise multipliers in this range; beyond the top even one step at
# sampling rate 1 is far below any useful ε, below the bottom training is not private.
_MIN_NOISE_MULTIPLIER = 1e-3
_MAX_NOISE_MULTIPLIER = 1e4


@dataclass(frozen=True)
class DPSegment:
    """A run of DP-SGD steps sharing one sampling rate and one noise multiplier.

    Attributes:
        sample_rate: Poisson sampling probability q of each example per step, in (0, 1].
            Record the rate the data loader really uses (see :func:`opacus_sample_rate`).
        noise_multiplier: σ, the ratio of the Gaussian noise std to the clipping norm (≥ 0;
            0 means no privacy and gives ε = ∞).
        steps: number of noisy optimizer steps (≥ 0), empty Poisson batches included.
    """

    sample_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral):
            raise ValueError(f"steps must be an integer, got {self.steps!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        _check_sample_rate(self.sample_rate)
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(
                f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}"
            )
        # Normalise numpy scalars so segments compare, hash and serialise as plain numbers.
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "sample_rate", float(self.sample_rate))
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))


def epsilon_for(segments: Iterable[DPSegment], delta: float) -> float:
    """ε of the composition of ``segments`` at ``delta``, by the RDP accountant.

    Segments with equal (sample rate, noise multiplier) are merged by adding their steps
    before the RDP curve is computed, so splitting a training into rounds does not change ε.

    Args:
        segments: DP training segments, in any order.
        delta: target δ in (0, 1).

    Returns:
        ε ≥ 0 (0.0 when no step was taken; ``math.inf`` if a segment has no noise).
    """
    _check_delta(delta)
    steps_by_mechanism: Counter[tuple[float, float]] = Counter()
    for segment in segments:
        steps_by_mechanism[(segment.sample_rate, segment.noise_multiplier)] += segment.steps
    steps_by_mechanism = +steps_by_mechanism  # drop mechanisms with zero steps
    if not steps_by_mechanism:
        return 0.0
    total_rdp = sum(
        steps * _rdp_per_step(sample_rate, noise_multiplier)
        for (sample_rate, noise_multiplier), steps in steps_by_mechanism.items()
    )
    return _epsilon_from_rdp(total_rdp, delta)


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    *,
    tolerance: float = 0.005,
) -> float:
    """Smallest noise multiplier (up to ``tolerance``) whose ε stays within the target.

    Calibrate once for a site's whole planned training (rounds × local epochs × steps per
    epoch), then train every round with the returned σ: the ledger's ε then reaches at most
    ``target_epsilon`` when the plan is complete.

    Binary search on log σ. The result satisfies
    ``(1 - tolerance) * target_epsilon <= epsilon_for([DPSegment(q, σ, steps)], delta)
    <= target_epsilon``: the target is approached from below, never exceeded. The one
    exception to the lower bound: at tiny sampling rates ε(σ) can drop from above the band
    straight to 0 (the Bretagnolle–Huber case of the conversion); the σ at that drop is
    returned, with ε below the target.

    Raises:
        ValueError: on invalid arguments, or if no σ in [1e-3, 1e4] reaches the target.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
    _check_delta(delta)
    _check_sample_rate(sample_rate)
    if not (0 < tolerance < 1):
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")

    def epsilon_at(noise_multiplier: float) -> float:
        return epsilon_for([DPSegment(sample_rate, noise_multiplier, steps)], delta)

    # Bracket: ε(low) > target >= ε(high); ε decreases as σ grows.
    high = 1.0
    while epsilon_at(high) > target_epsilon:
        high *= 2
        if high > _MAX_NOISE_MULTIPLIER:
            raise ValueError(
                f"target ε={target_epsilon} at δ={delta} is unreachable for sample rate "
                f"{sample_rate} and {steps} steps (σ > {_MAX_NOISE_MULTIPLIER} needed)"
            )
    low = high / 2
    while epsilon_at(low) <= target_epsilon:
        high, low = low, low / 2
        if low < _MIN_NOISE_MULTIPLIER:
            # Even almost no noise stays within budget: ε is far below target anyway.
            return high

    # Stop when ε(high) is close enough, or when floating point cannot split the bracket.
    while epsilon_at(high) < (1 - tolerance) * target_epsilon and high / low > 1 + 1e-12:
        middle = math.sqrt(low * high)
        if epsilon_at(middle) > target_epsilon:
            low = middle
        else:
            high = middle
    return high


def default_delta(n_customers: int) -> float:
    """The project's default δ for a site: min(1e-5, 1 / (10 · customers))."""
    if isinstance(n_customers, bool) or not isinstance(n_customers, numbers.Integral):
        raise ValueError(f"n_customers must be an integer, got {n_customers!r}")
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    return min(1e-5, 1.0 / (10 * n_customers))


def opacus_sample_rate(n_examples: int, batch_size: int) -> float:
    """The Poisson sampling rate Opacus's ``DPDataLoader`` really uses: 1 / ⌈n / B⌉.

    ``DPDataLoader.from_data_loader`` sets ``sample_rate = 1 / len(data_loader)`` and a
    plain ``DataLoader`` (``drop_last=False``) has ⌈n / B⌉ batches; this is not B / n.
    """
    _check_positive_int("n_examples", n_examples)
    _check_positive_int("batch_size", batch_size)
    return 1.0 / math.ceil(n_examples / batch_size)


def opacus_steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """How many batches one pass over Opacus's ``DPDataLoader`` yields.

    Its sampler draws ``int(1 / sample_rate)`` batches, which floating point makes one less
    than ⌈n / B⌉ for some sizes (e.g. 1 / (1 / 93) = 92.99…). Plan steps with this number.
    """
    return int(1 / opacus_sample_rate(n_examples, batch_size))


@lru_cache(maxsize=512)
def _rdp_per_step(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one step of the sampled Gaussian mechanism at every order in RDP_ORDERS.

    For integer α (Mironov, Talwar and Zhang 2019, §3.3):
    A_α = Σ_{k=0..α} C(α, k) (1 - q)^(α - k) q^k exp((k² - k) / (2σ²)), RDP(α) = log A_α / (α - 1),
    summed in log space. Without subsampling (q = 1) it is the Gaussian mechanism's α / (2σ²).
    """
    orders = np.asarray(RDP_ORDERS, dtype=np.float64)
    if noise_multiplier == 0:
        rdp = np.full_like(orders, np.inf)
    elif sample_rate == 1:
        rdp = orders / (2 * noise_multiplier**2)
    else:
        rdp = np.array(
            [_log_a(order, sample_rate, noise_multiplier) / (order - 1) for order in RDP_ORDERS]
        )
    rdp.flags.writeable = False  # cached and shared between callers
    return rdp


def _log_a(order: int, sample_rate: float, noise_multiplier: float) -> float:
    k = np.arange(order + 1, dtype=np.float64)
    log_binomial = (
        special.gammaln(order + 1) - special.gammaln(k + 1) - special.gammaln(order - k + 1)
    )
    log_terms = (
        log_binomial
        + k * math.log(sample_rate)
        + (order - k) * math.log1p(-sample_rate)
        + (k * k - k) / (2 * noise_multiplier**2)
    )
    return float(special.logsumexp(log_terms))


def _epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """Convert an RDP curve over RDP_ORDERS to the smallest ε it certifies at ``delta``.

    Per order α with RDP value r: ε(α) = r + log((α - 1) / α) - (log δ + log α) / (α - 1)
    (Balle et al. 2020, Theorem 21; Opacus's ``get_privacy_spent``). When r is so small that
    1 - exp(-r) < δ², the Bretagnolle–Huber bound TV ≤ sqrt(1 - exp(-KL)) with KL ≤ r already
    gives (0, δ)-DP; without that case tiny sampling rates would report a spurious ε ≈ 1.
    Both cases are what Google's dp_accounting ``compute_epsilon`` does.
    """
    orders = np.asarray(RDP_ORDERS)
    with np.errstate(invalid="ignore", over="ignore"):
        epsilons = rdp + np.log1p(-1 / orders) - (np.log(delta) + np.log(orders)) / (orders - 1)
    epsilons = np.where(delta**2 + np.expm1(-rdp) > 0, 0.0, epsilons)
    epsilons = np.where(np.isnan(epsilons), np.inf, epsilons)
    return max(float(epsilons.min()), 0.0)


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, numbers.Real) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def _check_sample_rate(sample_rate: float) -> None:
    if not (isinstance(sample_rate, numbers.Real) and 0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
