"""What every privacy accountant offers: ε of a list of DP segments, and noise calibration.

In the manner of Opacus's ``IAccountant``: an :class:`Accountant` turns the mechanisms a site
really ran into an (ε, δ) guarantee. Two mechanisms are known, each grouped into
:class:`DPSegment` runs of one setting:

- :data:`SUBSAMPLED_GAUSSIAN`: DP-SGD steps, each a Poisson-subsampled Gaussian mechanism
  (sampling rate, noise multiplier);
- :data:`DISCRETE_GAUSSIAN`: the site's releases (:mod:`privacy.release`), each a sum of
  bounded integer contributions with discrete Gaussian noise of scale
  ``noise_multiplier · sensitivity`` (Canonne, Kamath and Steinke 2020), no subsampling.

An accountant is stateless: the steps live in the site's ledger (:mod:`privacy.ledger`),
which records which accountant planned each segment, and any accountant can recompute ε
from those rows.

Every accountant here returns an *upper bound* on the true ε of the composition (the
"pessimistic" side of its approximation), so a budget checked with it is never overspent.
Two accountants can give different ε for the same steps; both are valid, the smaller is
the tighter. :meth:`Accountant.calibrate` is shared: a search on σ of the accountant's own
ε.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

SUBSAMPLED_GAUSSIAN = "subsampled-gaussian"
DISCRETE_GAUSSIAN = "discrete-gaussian"
MECHANISMS = (SUBSAMPLED_GAUSSIAN, DISCRETE_GAUSSIAN)

# Calibration searches noise multipliers in this range; beyond the top even one step at
# sampling rate 1 is far below any useful ε, below the bottom training is not private.
_MIN_NOISE_MULTIPLIER = 1e-3
_MAX_NOISE_MULTIPLIER = 1e4


@dataclass(frozen=True)
class DPSegment:
    """A run of steps of one mechanism with one setting.

    Attributes:
        sample_rate: Poisson sampling probability q of each example per step, in (0, 1].
            Record the rate the data loader really uses
            (:func:`privacy.planning.opacus_sample_rate`); 1 for a release.
        noise_multiplier: σ, the ratio of the noise std to the sensitivity (the clipping
            norm of DP-SGD); ≥ 0, and 0 means no privacy (ε = ∞).
        steps: number of noisy optimizer steps (≥ 0), empty Poisson batches included; for
            a release, the number of noisy sums released.
        mechanism: one of :data:`MECHANISMS`.
        sensitivity: a release's per-customer bound on each sum, in the integer units the
            discrete noise is drawn in (so the noise scale is ``noise_multiplier ·
            sensitivity``); 1 for DP-SGD, where the multiplier alone matters.
    """

    sample_rate: float
    noise_multiplier: float
    steps: int
    mechanism: str = SUBSAMPLED_GAUSSIAN
    sensitivity: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, numbers.Integral):
            raise ValueError(f"steps must be an integer, got {self.steps!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        check_sample_rate(self.sample_rate)
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(
                f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier!r}"
            )
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        sensitivity = self.sensitivity
        if isinstance(sensitivity, bool) or not isinstance(sensitivity, numbers.Integral):
            raise ValueError(f"sensitivity must be an integer, got {sensitivity!r}")
        if sensitivity < 1:
            raise ValueError(f"sensitivity must be >= 1, got {sensitivity}")
        if self.mechanism == DISCRETE_GAUSSIAN and self.sample_rate != 1:
            raise ValueError("a release is not subsampled: its sample_rate must be 1")
        # Normalise numpy scalars so segments compare, hash and serialise as plain numbers.
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "sample_rate", float(self.sample_rate))
        object.__setattr__(self, "noise_multiplier", float(self.noise_multiplier))
        object.__setattr__(self, "sensitivity", int(sensitivity))

    @property
    def setting(self) -> Setting:
        """What the segment ran, without how often: segments of one setting compose by
        adding their steps."""
        return Setting(self.mechanism, self.sample_rate, self.noise_multiplier, self.sensitivity)


class Setting(NamedTuple):
    """One mechanism with its parameters (a :class:`DPSegment` without its steps)."""

    mechanism: str
    sample_rate: float
    noise_multiplier: float
    sensitivity: int


class Accountant(ABC):
    """An (ε, δ) accountant for compositions of Poisson-subsampled Gaussian mechanisms."""

    name: str
    """Short name recorded in the ledger (``"rdp"``, ``"pld"``)."""
    description: str
    """One line for reports: the analysis and its source."""

    def epsilon(self, segments: Iterable[DPSegment], delta: float) -> float:
        """ε of the composition of ``segments`` at ``delta``.

        Segments of one :attr:`DPSegment.setting` are merged by adding their steps, so
        splitting a training into rounds does not change ε.

        Returns:
            ε ≥ 0 (0.0 when no step was taken; ``math.inf`` if a segment has no noise).
        """
        check_delta(delta)
        steps = Counter()
        for segment in segments:
            steps[segment.setting] += segment.steps
        steps = +steps  # drop mechanisms with zero steps
        if not steps:
            return 0.0
        if any(setting.noise_multiplier == 0 for setting in steps):
            return math.inf
        return self._epsilon(dict(steps), delta)

    @abstractmethod
    def _epsilon(self, steps: dict[Setting, int], delta: float) -> float:
        """ε of ``{setting with σ > 0: steps}`` (at least one step) at ``delta``."""

    def calibrate_noise_multiplier(
        self,
        target_epsilon: float,
        delta: float,
        sample_rate: float,
        steps: int,
        *,
        prior: Iterable[DPSegment] = (),
        tolerance: float = 0.005,
    ) -> float:
        """Smallest noise multiplier (up to ``tolerance``) whose ε stays within the target.

        Calibrate once for a site's whole planned training (rounds × local epochs × steps per
        epoch), then train every round with the returned σ: the ledger's ε then reaches at
        most ``target_epsilon`` when the plan is complete. ``prior`` are segments already
        spent or planned apart from these steps (earlier runs, the run's releases): the
        target is then the ε of all of them composed with the planned ones, so a site's
        lifetime cap holds exactly, whatever came before.

        The result satisfies ``(1 - tolerance) * target_epsilon <=
        epsilon([*prior, DPSegment(q, σ, steps)], delta) <= target_epsilon`` (see
        :meth:`calibrate`).

        Raises:
            ValueError: on invalid arguments, or if no σ in [1e-3, 1e4] reaches the target.
        """
        check_sample_rate(sample_rate)
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        prior = list(prior)
        if prior and self.epsilon(prior, delta) >= target_epsilon:
            raise ValueError(
                f"target ε={target_epsilon} at δ={delta} is already spent by earlier training "
                f"(ε = {self.epsilon(prior, delta):.4g})"
            )
        return self.calibrate(
            target_epsilon,
            delta,
            lambda noise_multiplier: [*prior, DPSegment(sample_rate, noise_multiplier, steps)],
            tolerance=tolerance,
            description=f"sample rate {sample_rate} and {steps} steps",
        )

    def calibrate(
        self,
        target_epsilon: float,
        delta: float,
        planned: Callable[[float], list[DPSegment]],
        *,
        tolerance: float = 0.005,
        description: str = "the planned steps",
    ) -> float:
        """Smallest noise multiplier σ (up to ``tolerance``) at which the segments
        ``planned(σ)`` — everything to be composed, ε decreasing in σ — stay within
        ``target_epsilon`` at ``delta``.

        Binary search on log σ. The result satisfies ``(1 - tolerance) * target_epsilon <=
        epsilon(planned(σ), delta) <= target_epsilon``: the target is approached from below,
        never exceeded. The one exception to the lower bound: at tiny sampling rates ε(σ)
        can drop from above the band straight to 0; the σ at that drop is returned, with ε
        below the target.

        Raises:
            ValueError: on invalid arguments, if what does not depend on σ already spends
                the target, or if no σ in [1e-3, 1e4] reaches it.
        """
        if not (math.isfinite(target_epsilon) and target_epsilon > 0):
            raise ValueError(f"target_epsilon must be finite and > 0, got {target_epsilon!r}")
        check_delta(delta)
        if not (0 < tolerance < 1):
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")

        def epsilon_at(noise_multiplier: float) -> float:
            return self.epsilon(planned(noise_multiplier), delta)

        # Bracket: ε(low) > target >= ε(high); ε decreases as σ grows.
        high = 1.0
        while epsilon_at(high) > target_epsilon:
            high *= 2
            if high > _MAX_NOISE_MULTIPLIER:
                raise ValueError(
                    f"target ε={target_epsilon} at δ={delta} is unreachable for {description} "
                    f"(σ > {_MAX_NOISE_MULTIPLIER} needed, or earlier spending leaves too little)"
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


def check_delta(delta: float) -> None:
    """Refuse a δ outside (0, 1)."""
    if not (isinstance(delta, numbers.Real) and 0 < delta < 1):
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


def check_sample_rate(sample_rate: float) -> None:
    """Refuse a sampling rate outside (0, 1]."""
    if not (isinstance(sample_rate, numbers.Real) and 0 < sample_rate <= 1):
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
