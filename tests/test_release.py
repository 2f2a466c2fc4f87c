"""The release mechanism: contributions bounded whatever the values, OpenDP's discrete
Gaussian noise of the stated size, its privacy map equal to what the ledger accounts, and
calibration that spends at most the budget."""

import math

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution

from privacy import release
from privacy.accountants import create_accountant
from privacy.accountants.base import DISCRETE_GAUSSIAN
from privacy.release import RESOLUTION, BoundedSum, Histogram

RNG = np.random.default_rng(7)


def test_a_bounded_sum_counts_each_customer_at_most_once_whatever_the_value() -> None:
    query = BoundedSum("s")
    values = np.array([-3.0, 0.25, 1.0, 7.5, np.nan, np.inf, -np.inf])
    units = query.units(values, RNG)
    assert units[0] == 0 and units[2] == RESOLUTION and units[3] == RESOLUTION
    assert units[4:] == [0, 0, 0]  # non-finite contributes 0, not the bound
    assert all(0 <= unit <= RESOLUTION for unit in units)
    assert query.exact(values) == pytest.approx(0.25 + 1.0 + 1.0)


def test_stochastic_rounding_is_unbiased() -> None:
    query = BoundedSum("s")
    values = np.full(20_000, 1 / 3)
    units = np.array(query.units(values, np.random.default_rng(1)))
    assert set(units) == {33, 34}
    assert units.mean() / RESOLUTION == pytest.approx(1 / 3, abs=2e-4)


def test_a_histogram_puts_a_customer_in_one_cell_or_none() -> None:
    query = Histogram("h", 4)
    cells = query.units(np.array([0, 3, 4, -1, 1.5, np.nan, 2]), RNG)
    assert cells == [0, 3, -1, -1, -1, -1, 2]
    assert query.exact(np.array([0, 3, 4, 2, 2])) == [1.0, 0.0, 2.0, 1.0]


def test_noise_has_the_stated_standard_deviation_and_no_bias() -> None:
    queries = (BoundedSum("s"), Histogram("h", 3))
    values = {"s": np.full(50, 0.5), "h": np.array([0] * 30 + [2] * 20)}
    answers = [release.release(queries, values, 2.0, RNG) for _ in range(400)]
    sums = np.array([a["s"] for a in answers])
    cells = np.array([a["h"] for a in answers])
    assert sums.mean() == pytest.approx(25.0, abs=0.4)
    assert sums.std() == pytest.approx(2.0, rel=0.15)  # z in the query's own units
    assert cells.mean(axis=0) == pytest.approx([30, 0, 20], abs=0.4)
    assert cells.std(axis=0) == pytest.approx([2.0] * 3, rel=0.15)
    assert (cells == np.round(cells)).all()  # discrete noise: whole counts


def test_opendp_privacy_map_is_what_the_ledger_accounts() -> None:
    for query in (BoundedSum("s"), Histogram("h", 5)):
        for multiplier in (0.7, 3.0):
            measurement = query.measurement(multiplier * query.sensitivity)
            assert measurement.map(1) == pytest.approx(1 / (2 * multiplier**2), rel=1e-12)


def test_a_release_refuses_misshapen_values_and_invalid_noise() -> None:
    queries = (BoundedSum("a"), BoundedSum("b"))
    with pytest.raises(ValueError, match="no values for the queries"):
        release.release(queries, {"a": np.zeros(3)}, 1.0, RNG)
    with pytest.raises(ValueError, match="one value per customer"):
        release.release(queries, {"a": np.zeros(3), "b": np.zeros(4)}, 1.0, RNG)
    with pytest.raises(ValueError, match="noise_multiplier"):
        release.release(queries, {"a": np.zeros(3), "b": np.zeros(3)}, 0.0, RNG)


def test_segments_group_queries_by_sensitivity() -> None:
    queries = (BoundedSum("a"), Histogram("h", 4), BoundedSum("b"))
    segments = release.segments(queries, 3.0, repeats=2)
    assert [(s.sensitivity, s.steps) for s in segments] == [(1, 2), (RESOLUTION, 4)]
    assert all(s.mechanism == DISCRETE_GAUSSIAN and s.sample_rate == 1 for s in segments)


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
@pytest.mark.parametrize("repeats", [1, 4])
def test_calibration_spends_the_budget_from_below(accountant: str, repeats: int) -> None:
    queries = (BoundedSum("a"), BoundedSum("b"), Histogram("h", 20))
    multiplier = release.calibrate(queries, 2.0, 1e-6, repeats=repeats, accountant=accountant)
    spent = create_accountant(accountant).epsilon(
        release.segments(queries, multiplier, repeats), 1e-6
    )
    assert 0.99 * 2.0 <= spent <= 2.0
    assert release.calibrate(queries, 1.0, 1e-6, repeats=repeats, accountant=accountant) > (
        multiplier
    )


def test_a_release_is_accounted_as_the_exact_discrete_gaussian() -> None:
    """Independent of our composition code: dp_accounting's discrete-Gaussian PLD, composed
    by hand, gives the ε the PLD accountant reports for a release's segments."""
    queries = (BoundedSum("a"), Histogram("h", 3))
    multiplier = 2.5
    ours = create_accountant("pld").epsilon(release.segments(queries, multiplier, 3), 1e-6)
    parts = [
        privacy_loss_distribution.from_discrete_gaussian_mechanism(
            sigma=multiplier * sensitivity,
            sensitivity=sensitivity,
            value_discretization_interval=1e-3,
        ).self_compose(3)
        for sensitivity in (1, RESOLUTION)
    ]
    theirs = parts[0].compose(parts[1]).get_epsilon_for_delta(1e-6)
    assert ours == pytest.approx(theirs, rel=1e-9)
    # The discrete Gaussian is not the continuous one: at the default cohort noise (5
    # customers) accounting it as continuous would under-state it.
    continuous = privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=5.0, value_discretization_interval=1e-3
    ).get_epsilon_for_delta(1e-6)
    discrete = create_accountant("pld").epsilon(release.segments((Histogram("h", 1),), 5.0), 1e-6)
    assert math.isfinite(discrete) and discrete > continuous
