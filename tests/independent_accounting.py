"""ε by accountants independent of :mod:`privacy.accountants`, for tests.

- ``rdp``: Google's ``dp_accounting`` RDP accountant. Same RDP orders as ours (an
  accountant parameter, not part of the mechanism); everything else — the RDP of the
  subsampled Gaussian, composition, conversion — is dp_accounting's.
- ``pld``: Opacus's PRV accountant (Gopi, Lee and Wutschitz 2021), a different numerical
  method for the same tight privacy curve; its estimate is within ``PRV_EPS_ERROR`` of the
  true ε, so a correct PLD ε lies within :data:`PLD_TOLERANCE` of it.

A release's segments (the discrete Gaussian mechanism, :mod:`privacy.release`), which
neither oracle models as such: ``rdp`` composes them as zCDP events (ρ = 1/(2z²), Canonne,
Kamath and Steinke 2020); ``pld`` composes dp_accounting's discrete-Gaussian PLD of each
with dp_accounting's PLD of the DP-SGD steps, step by step here rather than by our code.
"""

from __future__ import annotations

import dp_accounting
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import PRVAccountant

from privacy.accountants import DPSegment
from privacy.accountants.base import DISCRETE_GAUSSIAN
from privacy.accountants.rdp import RDP_ORDERS

PRV_EPS_ERROR = 0.01
PLD_TOLERANCE = 2 * PRV_EPS_ERROR
"""Absolute ε difference allowed between our PLD and the PRV oracle."""


def independent_epsilon(segments: list[DPSegment], delta: float, accountant: str = "rdp") -> float:
    """ε of ``segments`` (each a self-composed Poisson-sampled Gaussian, or a release) by the
    oracle of the accountant called ``accountant`` (see the module docstring)."""
    steps = [segment for segment in segments if segment.steps > 0]  # no step is no event
    if accountant == "pld" and any(s.mechanism == DISCRETE_GAUSSIAN for s in steps):
        total = None
        for segment in steps:
            distribution = _pld(segment).self_compose(segment.steps)
            total = distribution if total is None else total.compose(distribution)
        return max(float(total.get_epsilon_for_delta(delta)), 0.0)
    if accountant == "pld":
        prv = PRVAccountant()
        prv.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in steps]
        return prv.get_epsilon(delta, eps_error=PRV_EPS_ERROR) if steps else 0.0
    if accountant != "rdp":
        raise ValueError(f"no independent accountant for {accountant!r}")
    rdp = RdpAccountant(orders=RDP_ORDERS)
    for segment in steps:
        if segment.mechanism == DISCRETE_GAUSSIAN:
            event = dp_accounting.ZCDpEvent(1 / (2 * segment.noise_multiplier**2))
        else:
            event = dp_accounting.PoissonSampledDpEvent(
                segment.sample_rate, dp_accounting.GaussianDpEvent(segment.noise_multiplier)
            )
        rdp.compose(event, segment.steps)
    return rdp.get_epsilon(delta)


def _pld(segment: DPSegment):
    """dp_accounting's PLD of one step of ``segment``, on our accountant's grid."""
    if segment.mechanism == DISCRETE_GAUSSIAN:
        return privacy_loss_distribution.from_discrete_gaussian_mechanism(
            sigma=segment.noise_multiplier * segment.sensitivity,
            sensitivity=segment.sensitivity,
            value_discretization_interval=1e-3,
        )
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=segment.noise_multiplier,
        sampling_prob=segment.sample_rate,
        value_discretization_interval=1e-3,
    )


def matches_independent(ours: float, segments: list[DPSegment], delta: float, accountant: str):
    """Whether ``ours`` is the ε the oracle of ``accountant`` gives for ``segments``."""
    theirs = independent_epsilon(segments, delta, accountant)
    if accountant == "pld":
        return abs(ours - theirs) <= PLD_TOLERANCE
    return abs(ours - theirs) <= 1e-6 * max(abs(theirs), 1e-12)


def matches_ledger_oracle(ours: float, entries: list, delta: float) -> bool:
    """Whether ``ours`` is the ε the oracle of the one accountant ledger ``entries`` name
    gives for their segments."""
    [accountant] = {entry.accountant for entry in entries}
    return matches_independent(ours, [entry.segment for entry in entries], delta, accountant)
