"""From a privacy budget to a DP-SGD plan: sampling rate, steps, δ and noise multiplier.

User-level DP (one example per customer) at a site: the noise multiplier σ is calibrated
*once* for the site's whole planned training — ``planned_rounds × local_epochs × steps
per epoch`` at the sampling rate Opacus really uses, 1/⌈n/B⌉ — to the budget (ε, δ) by the
named accountant, so that every round trains with the same σ and the ledger reaches at
most ε when the plan is complete. A centralized run is the one-round case. Calibration is
deterministic: recomputing it (each message may run in a fresh process, and the server
recomputes a site's plan to screen its update) gives the same σ.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import lru_cache

from privacy.accountants import DEFAULT_ACCOUNTANT, DPSegment, create_accountant


@dataclass(frozen=True)
class DPPlan:
    """The DP parameters of one site's whole planned training of one model."""

    epsilon_budget: float
    """The ε the plan spends when complete."""
    customers: int
    """Training customers n (one example each)."""
    delta: float
    sample_rate: float
    noise_multiplier: float
    steps_per_round: int
    planned_rounds: int
    accountant: str
    """The accountant σ was calibrated with (a name of :data:`privacy.accountants.ACCOUNTANTS`)."""

    @property
    def round_segment(self) -> DPSegment:
        """The segment one round of local training adds to the ledger."""
        return DPSegment(self.sample_rate, self.noise_multiplier, self.steps_per_round)

    @property
    def expected_batch_size(self) -> float:
        """Customers per Poisson batch on average, ``q · n`` (Opacus's averaging denominator
        up to rounding)."""
        return self.sample_rate * self.customers

    def epsilon(self, segments: list[DPSegment]) -> float:
        """ε of ``segments`` by this plan's accountant at its δ."""
        return create_accountant(self.accountant).epsilon(segments, self.delta)


def plan_dp(
    *,
    n_customers: int,
    batch_size: int,
    local_epochs: int,
    planned_rounds: int,
    epsilon_budget: float,
    delta: float | None = None,
    accountant: str = DEFAULT_ACCOUNTANT,
) -> DPPlan:
    """Calibrate σ once for ``planned_rounds × local_epochs`` epochs at the site's size.

    ``delta`` defaults to :func:`default_delta` of the customers.

    Raises:
        ValueError: invalid arguments, or no σ reaches the budget at this size.
    """
    return _plan_dp(
        n_customers,
        batch_size,
        local_epochs,
        planned_rounds,
        float(epsilon_budget),
        default_delta(n_customers) if delta is None else float(delta),
        accountant,
    )


@lru_cache(maxsize=1024)
def _plan_dp(
    n_customers: int,
    batch_size: int,
    local_epochs: int,
    planned_rounds: int,
    epsilon_budget: float,
    delta: float,
    accountant: str,
) -> DPPlan:
    # Cached: a PLD calibration takes ~2 s, and a simulation process or the server's
    # screening plans the same sizes every round.
    _check_positive_int("local_epochs", local_epochs)
    _check_positive_int("planned_rounds", planned_rounds)
    sample_rate = opacus_sample_rate(n_customers, batch_size)
    steps_per_round = local_epochs * opacus_steps_per_epoch(n_customers, batch_size)
    noise_multiplier = create_accountant(accountant).calibrate_noise_multiplier(
        epsilon_budget, delta, sample_rate, steps_per_round * planned_rounds
    )
    return DPPlan(
        epsilon_budget=epsilon_budget,
        customers=n_customers,
        delta=delta,
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        steps_per_round=steps_per_round,
        planned_rounds=planned_rounds,
        accountant=accountant,
    )


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


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
