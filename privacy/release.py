"""The release mechanism: every value a site sends other than its DP-SGD weights.

A *release* answers a fixed list of queries over one group of the site's customers — an
evaluation's metric sums, the sizes of the training and held-out cohorts, later the
behaviour statistics — and is the only way such a value leaves a site. Design it as if
the server were hostile: it chooses the weights that score the customers and the facts
that pick them, so nothing here may trust that a customer's value is "reasonable".

**Bounded contribution, whatever the server sent.** Each query fixes how much one
customer can move it, before anything is summed:

- :class:`BoundedSum`: every customer's value is clamped to [0, 1] (a value that is not
  finite contributes 0) and counted in units of ``1 / RESOLUTION`` with unbiased
  stochastic rounding, so one customer moves the sum by at most ``RESOLUTION`` units;
- :class:`Histogram`: every customer is counted in at most one cell of a grid the site
  fixes (an index outside it, e.g. from a non-finite score, is in none), so one customer
  moves one cell by one.

**Noise from a vetted library.** OpenDP builds each query as one measurement — clamp and
sum, or count by categories, then discrete Gaussian noise drawn exactly on the integers
(Canonne, Kamath and Steinke 2020, "The Discrete Gaussian for Differential Privacy"; no
floating-point noise to attack, cf. Mironov 2012, Jin et al. 2022). Every query of a
release gets the noise scale ``z · Δ`` for its sensitivity Δ and the release's noise
multiplier z, so its released value has standard deviation ``z`` in the query's own
units (customers, or units of a [0, 1] value) — the ``noise-sd`` a server uses to state
each estimate's spread. Before any noise is drawn, the measurement's own privacy map
(zCDP ρ for one customer added or removed) is checked against ρ = 1/(2z²), the bound the
ledger's accountant uses: a mismatch fails closed.

**Accounted like a DP-SGD step.** A release is :func:`segments` of the
:data:`~privacy.accountants.base.DISCRETE_GAUSSIAN` mechanism, one per sensitivity, that
the site's ledger records *before* the noise is drawn and its accountant composes with
the DP-SGD steps inside the same lifetime cap (:mod:`privacy.ledger`). The neighbouring
relation is add-or-remove-one customer, as for DP-SGD. :func:`calibrate` finds the noise
multiplier for a budget.

Nothing here knows a model: a model declares its queries and computes each customer's
value; the site (:mod:`clients.site_task`) reserves, releases and records.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from privacy.accountants import DPSegment, create_accountant
from privacy.accountants.base import DISCRETE_GAUSSIAN

RESOLUTION = 100
"""Units of a :class:`BoundedSum` per 1.0 of a customer's value."""

_RHO_TOLERANCE = 1e-9


@dataclass(frozen=True)
class BoundedSum:
    """The sum over customers of a value in [0, 1] (e.g. a customer's NDCG@10)."""

    name: str
    sensitivity = RESOLUTION
    """How many units one customer can add: 1.0 in :data:`RESOLUTION` units."""

    @staticmethod
    def bounded(values: np.ndarray) -> np.ndarray:
        """Each customer's value clamped to [0, 1], a non-finite one 0."""
        values = np.asarray(values, dtype=np.float64)
        return np.clip(np.where(np.isfinite(values), values, 0.0), 0.0, 1.0)

    def units(self, values: np.ndarray, rng: np.random.Generator) -> list[int]:
        """Each customer's :meth:`bounded` value in units, stochastically rounded (unbiased:
        the expected units are ``value · RESOLUTION``)."""
        scaled = self.bounded(values) * RESOLUTION
        low = np.floor(scaled)
        return (low + (rng.random(scaled.shape) < scaled - low)).astype(np.int64).tolist()

    def measurement(self, scale: float) -> Any:
        """OpenDP: clamp every customer's units to [0, RESOLUTION], sum, discrete Gaussian."""
        dp = _opendp()
        space = dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance()
        return (
            dp.t.make_clamp(*space, bounds=(0, RESOLUTION))
            >> dp.t.then_sum()
            >> dp.m.then_gaussian(scale=scale)
        )

    def exact(self, values: np.ndarray) -> float:
        """The noise-free sum of the bounded values (for the site's own use: never sent)."""
        return float(self.bounded(values).sum())

    def decode(self, noisy: Any) -> float:
        """The released value in the query's own units."""
        return float(noisy) / RESOLUTION


@dataclass(frozen=True)
class Histogram:
    """How many customers fall in each of ``cells`` cells (each customer in at most one)."""

    name: str
    cells: int
    sensitivity = 1
    """One customer moves one cell by one."""

    def __post_init__(self) -> None:
        if isinstance(self.cells, bool) or not isinstance(self.cells, int) or self.cells < 1:
            raise ValueError(f"histogram {self.name!r} needs at least one cell, got {self.cells!r}")

    def units(self, values: np.ndarray, rng: np.random.Generator) -> list[int]:
        """Each customer's cell, or -1 (no cell) for anything outside ``0 .. cells - 1``."""
        del rng
        values = np.asarray(values, dtype=np.float64)
        inside = np.isfinite(values) & (values >= 0) & (values < self.cells)
        inside &= values == np.floor(np.where(inside, values, 0.0))
        return np.where(inside, values, -1).astype(np.int64).tolist()

    def measurement(self, scale: float) -> Any:
        """OpenDP: count customers by cell (others dropped), discrete Gaussian per cell."""
        dp = _opendp()
        space = dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance()
        return dp.t.make_count_by_categories(
            *space, categories=list(range(self.cells)), null_category=False, MO=dp.L2Distance[int]
        ) >> dp.m.then_gaussian(scale=scale)

    def exact(self, values: np.ndarray) -> list[float]:
        """The noise-free counts (for the site's own use: never sent)."""
        cells = np.asarray(self.units(values, np.random.default_rng(0)), dtype=np.int64)
        return np.bincount(cells[cells >= 0], minlength=self.cells).astype(float).tolist()

    def decode(self, noisy: Any) -> list[float]:
        """The released counts."""
        return [float(count) for count in noisy]


Query = BoundedSum | Histogram


def segments(
    queries: Sequence[Query], noise_multiplier: float, repeats: int = 1
) -> list[DPSegment]:
    """What ``repeats`` releases of ``queries`` at ``noise_multiplier`` add to a ledger: one
    :data:`~privacy.accountants.base.DISCRETE_GAUSSIAN` segment per sensitivity, a step per
    noisy sum."""
    by_sensitivity: dict[int, int] = {}
    for query in queries:
        by_sensitivity[query.sensitivity] = by_sensitivity.get(query.sensitivity, 0) + repeats
    return [
        DPSegment(1.0, noise_multiplier, count, DISCRETE_GAUSSIAN, sensitivity)
        for sensitivity, count in sorted(by_sensitivity.items())
    ]


def release(
    queries: Sequence[Query],
    values: Mapping[str, np.ndarray],
    noise_multiplier: float,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Every query's noisy answer, by query name (see the module docstring).

    ``values`` holds one value per customer of the group for each query (a score in [0, 1]
    for a sum, a cell index for a histogram). Reserve :func:`segments` in the ledger first.

    Raises:
        ValueError: a query without values, values of different lengths, or an invalid
            noise multiplier.
        RuntimeError: OpenDP's privacy map disagrees with the accounted ρ (fail closed).
    """
    all_units = _units(queries, values, rng)
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ValueError(f"noise_multiplier must be finite and > 0, got {noise_multiplier!r}")
    answers = {}
    for query in queries:
        measurement = _checked_measurement(query, noise_multiplier)
        answers[query.name] = query.decode(measurement(all_units[query.name]))
    return answers


def exact_values(queries: Sequence[Query], values: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """What :func:`release` answers without noise or rounding, for the site's own use (its
    exact local metrics) and a researcher's simulation; these numbers never leave a site."""
    _check_values(queries, values)
    return {
        query.name: query.exact(np.asarray(values[query.name]).reshape(-1)) for query in queries
    }


def calibrate(
    queries: Sequence[Query],
    epsilon: float,
    delta: float,
    *,
    repeats: int = 1,
    accountant: str,
) -> float:
    """The noise multiplier z at which ``repeats`` releases of ``queries`` spend at most
    ``epsilon`` (alone, at ``delta``) by ``accountant``; composed with everything else in
    the ledger they cost less at the margin.

    Raises:
        ValueError: invalid arguments, or no z reaches the budget.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a whole number >= 1, got {repeats!r}")
    if not queries:
        raise ValueError("a release needs at least one query")
    return _calibrated(tuple(queries), float(epsilon), float(delta), repeats, accountant)


@lru_cache(maxsize=256)
def _calibrated(
    queries: tuple[Query, ...], epsilon: float, delta: float, repeats: int, accountant: str
) -> float:
    # Cached by what z depends on: every message of a run (and every site with the same
    # policy) asks for the same release shape and budget.
    return create_accountant(accountant).calibrate(
        epsilon, delta, lambda multiplier: segments(queries, multiplier, repeats)
    )


def _units(
    queries: Sequence[Query], values: Mapping[str, np.ndarray], rng: np.random.Generator
) -> dict[str, list[int]]:
    _check_values(queries, values)
    return {q.name: q.units(np.asarray(values[q.name]).reshape(-1), rng) for q in queries}


def _check_values(queries: Sequence[Query], values: Mapping[str, np.ndarray]) -> None:
    names = [query.name for query in queries]
    if len(set(names)) != len(names):
        raise ValueError(f"query names repeat: {names}")
    missing = [name for name in names if name not in values]
    if missing:
        raise ValueError(f"no values for the queries {missing}")
    lengths = {len(np.asarray(values[name]).reshape(-1)) for name in names}
    if len(lengths) > 1:
        raise ValueError(f"every query needs one value per customer, got lengths {lengths}")


def _checked_measurement(query: Query, noise_multiplier: float) -> Any:
    """OpenDP's measurement of ``query`` at scale z·Δ, after checking that its privacy map
    for one customer is the ρ = 1/(2z²) the ledger accounts."""
    measurement = query.measurement(noise_multiplier * query.sensitivity)
    rho = measurement.map(1)
    accounted = 1.0 / (2.0 * noise_multiplier**2)
    if not abs(rho - accounted) <= _RHO_TOLERANCE * max(1.0, accounted):
        raise RuntimeError(
            f"release {query.name!r}: OpenDP's privacy map gives ρ = {rho!r} for one customer, "
            f"the ledger accounts {accounted!r}; nothing released"
        )
    return measurement


@lru_cache(maxsize=1)
def _opendp() -> Any:
    """OpenDP's API with its contrib measurements enabled (imported when first needed)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp
