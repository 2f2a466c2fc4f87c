"""ε by accountants independent of :mod:`privacy.accountants`, for tests.

- ``rdp``: Google's ``dp_accounting`` RDP accountant. Same RDP orders as ours (an
  accountant parameter, not part of the mechanism); everything else — the RDP of the
  subsampled Gaussian, composition, conversion — is dp_accounting's.
- ``pld``: Opacus's PRV accountant (Gopi, Lee and Wutschitz 2021), a different numerical
  method for the same tight privacy curve; its estimate is within ``PRV_EPS_ERROR`` of the
  true ε, so a correct PLD ε lies within :data:`PLD_TOLERANCE` of it.
"""

from __future__ import annotations

import dp_accounting
from dp_accounting.rdp import RdpAccountant
from opacus.accountants import PRVAccountant

from privacy.accountants import DPSegment
from privacy.accountants.rdp import RDP_ORDERS

PRV_EPS_ERROR = 0.01
PLD_TOLERANCE = 2 * PRV_EPS_ERROR
"""Absolute ε difference allowed between our PLD and the PRV oracle."""


def independent_epsilon(segments: list[DPSegment], delta: float, accountant: str = "rdp") -> float:
    """ε of ``segments`` (each a self-composed Poisson-sampled Gaussian) by the oracle of
    the accountant called ``accountant`` (see the module docstring)."""
    steps = [segment for segment in segments if segment.steps > 0]  # no step is no event
    if accountant == "pld":
        prv = PRVAccountant()
        prv.history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in steps]
        return prv.get_epsilon(delta, eps_error=PRV_EPS_ERROR) if steps else 0.0
    if accountant != "rdp":
        raise ValueError(f"no independent accountant for {accountant!r}")
    rdp = RdpAccountant(orders=RDP_ORDERS)
    for segment in steps:
        event = dp_accounting.PoissonSampledDpEvent(
            segment.sample_rate, dp_accounting.GaussianDpEvent(segment.noise_multiplier)
        )
        rdp.compose(event, segment.steps)
    return rdp.get_epsilon(delta)


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
