"""ε by Google's ``dp_accounting``, independent of :mod:`privacy.accountant`, for tests."""

from __future__ import annotations

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from privacy.accountant import RDP_ORDERS, DPSegment


def independent_epsilon(segments: list[DPSegment], delta: float) -> float:
    """ε from Google's dp_accounting: each segment is a self-composed Poisson-sampled Gaussian.

    Same RDP orders as ours (an accountant parameter, not part of the mechanism); everything
    else — the RDP of the subsampled Gaussian, composition, conversion — is dp_accounting's.
    """
    accountant = RdpAccountant(orders=RDP_ORDERS)
    for segment in segments:
        if segment.steps == 0:
            continue  # dp_accounting rejects a zero count; no step is no event
        event = dp_accounting.PoissonSampledDpEvent(
            segment.sample_rate, dp_accounting.GaussianDpEvent(segment.noise_multiplier)
        )
        accountant.compose(event, segment.steps)
    return accountant.get_epsilon(delta)
