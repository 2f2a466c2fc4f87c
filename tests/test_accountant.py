"""Both accountants agree with independent ones (RDP: Google's dp_accounting; PLD: Opacus's
PRV accountant), PLD is the tighter, and calibration lands just below ε."""

import math

import pytest
from independent_accounting import PLD_TOLERANCE, independent_epsilon

from privacy import planning
from privacy.accountants import DEFAULT_ACCOUNTANT, DPSegment, create_accountant
from privacy.accountants.pld import MIN_NOISE_MULTIPLIER
from privacy.planning import default_delta, opacus_sample_rate, opacus_steps_per_epoch

RDP = create_accountant("rdp")
PLD = create_accountant("pld")
epsilon_for = RDP.epsilon
calibrate_noise_multiplier = RDP.calibrate_noise_multiplier


@pytest.mark.parametrize(
    "segment",
    [
        DPSegment(0.01, 1.0, 1000),
        DPSegment(1 / 93, 0.7, 9300),
        DPSegment(0.25, 3.0, 40),
        DPSegment(0.5, 12.0, 200),
        DPSegment(1.0, 5.0, 10),
        DPSegment(0.01, 0.4, 1000),  # ε ≈ 50
        DPSegment(1e-6, 0.5, 100_000),  # tiny sampling rate
    ],
)
def test_single_segment_matches_dp_accounting(segment: DPSegment) -> None:
    ours = epsilon_for([segment], 1e-5)
    theirs = independent_epsilon([segment], 1e-5)
    assert ours > 0
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_mixed_segments_match_dp_accounting() -> None:
    segments = [
        DPSegment(0.01, 1.1, 500),
        DPSegment(0.02, 0.8, 300),
        DPSegment(0.01, 1.1, 250),  # same mechanism again, later round
        DPSegment(1.0, 6.0, 5),
        DPSegment(0.2, 2.0, 0),
    ]
    for delta in (1e-5, 1e-7, 0.01):
        ours = epsilon_for(segments, delta)
        assert ours == pytest.approx(independent_epsilon(segments, delta), rel=1e-6)
    # Composition adds privacy loss: the mix costs more than any part alone.
    assert epsilon_for(segments, 1e-5) > max(epsilon_for([s], 1e-5) for s in segments)


def test_splitting_a_training_into_rounds_does_not_change_epsilon() -> None:
    whole = epsilon_for([DPSegment(0.01, 0.9, 3000)], 1e-5)
    rounds = epsilon_for([DPSegment(0.01, 0.9, 300)] * 10, 1e-5)
    assert rounds == whole


def test_epsilon_is_monotone_in_steps() -> None:
    epsilons = [epsilon_for([DPSegment(0.02, 0.9, steps)], 1e-5) for steps in range(0, 2001, 50)]
    assert epsilons[0] == 0.0
    assert all(later >= earlier for earlier, later in zip(epsilons, epsilons[1:], strict=False))
    assert epsilons[-1] > 2 * epsilons[1]


def test_no_steps_or_no_noise() -> None:
    assert epsilon_for([], 1e-5) == 0.0
    assert epsilon_for([DPSegment(0.1, 1.0, 0)], 1e-5) == 0.0
    assert epsilon_for([DPSegment(0.1, 0.0, 1), DPSegment(0.1, 1.0, 10)], 1e-5) == math.inf


def test_tiny_sampling_rate_gives_tiny_finite_epsilon() -> None:
    tiny = epsilon_for([DPSegment(1e-9, 1.0, 1000)], 1e-5)
    assert tiny == independent_epsilon([DPSegment(1e-9, 1.0, 1000)], 1e-5)
    assert 0 <= tiny < 1e-3


@pytest.mark.parametrize(
    ("target", "sample_rate", "steps"),
    [(1.0, 0.01, 3000), (3.0, 0.01, 3000), (8.0, 1 / 93, 9200), (50.0, 0.01, 1000), (2.0, 0.5, 30)],
)
def test_calibration_hits_target_from_below(target: float, sample_rate: float, steps: int) -> None:
    delta = 1e-5
    sigma = calibrate_noise_multiplier(target, delta, sample_rate, steps)
    achieved = epsilon_for([DPSegment(sample_rate, sigma, steps)], delta)
    assert 0.99 * target <= achieved <= target
    assert independent_epsilon([DPSegment(sample_rate, sigma, steps)], delta) <= target
    # A little less noise would break the budget: σ is (nearly) the smallest that fits.
    assert epsilon_for([DPSegment(sample_rate, 0.97 * sigma, steps)], delta) > target


def test_calibration_needs_more_noise_for_more_steps_and_smaller_budgets() -> None:
    short = calibrate_noise_multiplier(3.0, 1e-5, 0.01, 1000)
    long = calibrate_noise_multiplier(3.0, 1e-5, 0.01, 4000)
    strict = calibrate_noise_multiplier(1.0, 1e-5, 0.01, 1000)
    assert short < long
    assert short < strict


def test_calibration_at_tiny_sampling_rate_stays_within_target() -> None:
    sigma = calibrate_noise_multiplier(1.0, 1e-5, 1e-6, 100)
    assert 0.99 <= epsilon_for([DPSegment(1e-6, sigma, 100)], 1e-5) <= 1.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_epsilon": 0.0},
        {"target_epsilon": -1.0},
        {"target_epsilon": math.inf},
        {"delta": 0.0},
        {"delta": 1.0},
        {"delta": -1e-5},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"steps": 2.5},
    ],
)
def test_calibration_rejects_invalid_arguments(kwargs: dict) -> None:
    arguments = {"target_epsilon": 3.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 100}
    with pytest.raises(ValueError):
        calibrate_noise_multiplier(**(arguments | kwargs))


@pytest.mark.parametrize(
    ("sample_rate", "noise_multiplier", "steps"),
    [(0.0, 1.0, 1), (1.01, 1.0, 1), (math.nan, 1.0, 1), (0.1, -1.0, 1), (0.1, 1.0, -1)],
)
def test_segment_rejects_invalid_values(
    sample_rate: float, noise_multiplier: float, steps: int
) -> None:
    with pytest.raises(ValueError):
        DPSegment(sample_rate, noise_multiplier, steps)


@pytest.mark.parametrize("delta", [0.0, 1.0, 2.0, -0.5])
def test_epsilon_rejects_invalid_delta(delta: float) -> None:
    with pytest.raises(ValueError, match="delta"):
        epsilon_for([DPSegment(0.1, 1.0, 10)], delta)


def test_default_delta() -> None:
    assert default_delta(100) == 1e-5
    assert default_delta(10_000) == 1e-5
    assert default_delta(1_000_000) == pytest.approx(1e-7)
    with pytest.raises(ValueError):
        default_delta(0)


def test_opacus_sample_rate_is_one_over_batch_count() -> None:
    assert opacus_sample_rate(100, 32) == 1 / 4  # not 32 / 100
    assert opacus_sample_rate(64, 32) == 1 / 2
    assert opacus_sample_rate(20, 64) == 1.0
    assert opacus_steps_per_epoch(100, 32) == 4
    # 1 / (1 / 93) rounds below 93: Opacus's sampler then yields 92 batches per epoch.
    assert opacus_steps_per_epoch(930, 10) == 92
    with pytest.raises(ValueError):
        opacus_sample_rate(0, 32)


PLD_CASES = [
    DPSegment(1 / 8, 1.0, 160),  # the UK recommender's schedule, ε ≈ 11
    DPSegment(1 / 38, 1.0, 304),
    DPSegment(1 / 157, 0.8, 3000),
    DPSegment(0.5, 3.0, 40),
    DPSegment(0.01, 0.6, 1000),
    DPSegment(1.0, 5.0, 10),
]


@pytest.mark.parametrize("segment", PLD_CASES)
def test_pld_matches_the_prv_oracle_and_is_tighter_than_rdp(segment: DPSegment) -> None:
    ours = PLD.epsilon([segment], 1e-5)
    assert ours == pytest.approx(independent_epsilon([segment], 1e-5, "pld"), abs=PLD_TOLERANCE)
    assert ours < RDP.epsilon([segment], 1e-5)


def test_pld_composes_mixed_segments_like_the_oracle() -> None:
    segments = [DPSegment(0.02, 1.1, 500), DPSegment(0.05, 0.9, 100), DPSegment(0.02, 1.1, 250)]
    for delta in (1e-5, 1e-7):
        ours = PLD.epsilon(segments, delta)
        assert ours == pytest.approx(independent_epsilon(segments, delta, "pld"), abs=PLD_TOLERANCE)
    assert PLD.epsilon(segments, 1e-5) == PLD.epsilon(
        [DPSegment(0.02, 1.1, 750), DPSegment(0.05, 0.9, 100)], 1e-5
    )


def test_pld_falls_back_to_rdp_below_its_noise_floor() -> None:
    tiny_noise = [DPSegment(0.1, MIN_NOISE_MULTIPLIER / 2, 50), DPSegment(0.1, 1.0, 50)]
    assert PLD.epsilon(tiny_noise, 1e-5) == RDP.epsilon(tiny_noise, 1e-5)
    assert PLD.epsilon([DPSegment(0.1, 0.0, 1)], 1e-5) == math.inf
    assert PLD.epsilon([], 1e-5) == 0.0


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_pld_calibration_needs_less_noise_than_rdp(target: float) -> None:
    sample_rate, steps = 1 / 38, 304  # the UK churn schedule of the main job
    sigma = PLD.calibrate_noise_multiplier(target, 1e-5, sample_rate, steps)
    achieved = PLD.epsilon([DPSegment(sample_rate, sigma, steps)], 1e-5)
    assert 0.99 * target <= achieved <= target
    oracle = independent_epsilon([DPSegment(sample_rate, sigma, steps)], 1e-5, "pld")
    assert oracle <= target + PLD_TOLERANCE
    assert sigma < RDP.calibrate_noise_multiplier(target, 1e-5, sample_rate, steps)


def test_accountants_by_name() -> None:
    assert DEFAULT_ACCOUNTANT == "pld"
    assert {create_accountant(name).name for name in ("rdp", "pld")} == {"rdp", "pld"}
    with pytest.raises(ValueError, match="unknown privacy accountant 'prv'"):
        create_accountant("prv")


def test_sites_of_different_sizes_with_one_sample_rate_share_one_calibration(monkeypatch) -> None:
    calls = []
    real = create_accountant

    def counting(name: str):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(planning, "create_accountant", counting)
    common = {"batch_size": 64, "local_epochs": 2, "planned_rounds": 3, "epsilon_budget": 2.718}
    plans = [planning.plan_dp(n_customers=n, **common) for n in (20, 37, 64)]
    assert len(calls) == 1  # every site of at most 64 customers has sample rate 1, δ 1e-5
    assert {plan.noise_multiplier for plan in plans} == {plans[0].noise_multiplier}
    assert [plan.customers for plan in plans] == [20, 37, 64]
    other = planning.plan_dp(n_customers=65, **common)  # two batches: a new calibration
    assert len(calls) == 2 and other.noise_multiplier != plans[0].noise_multiplier


def test_a_release_composes_with_dp_sgd_as_zcdp_in_an_independent_rdp_accountant() -> None:
    """A discrete Gaussian release with noise multiplier z is ρ = 1/(2z²)-zCDP (Canonne,
    Kamath and Steinke 2020); dp_accounting's RDP accountant composes it with the DP-SGD
    steps to the ε our RDP accountant reports."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    from privacy.accountants.base import DISCRETE_GAUSSIAN
    from privacy.accountants.rdp import RDP_ORDERS

    sgd = DPSegment(0.01, 1.1, 500)
    releases = DPSegment(1.0, 3.0, 4, DISCRETE_GAUSSIAN, 100)
    theirs = RdpAccountant(orders=RDP_ORDERS)
    theirs.compose(
        dp_accounting.PoissonSampledDpEvent(0.01, dp_accounting.GaussianDpEvent(1.1)), 500
    )
    theirs.compose(dp_accounting.ZCDpEvent(1 / (2 * 3.0**2)), 4)
    assert epsilon_for([sgd, releases], 1e-6) == pytest.approx(theirs.get_epsilon(1e-6), rel=1e-6)
    assert PLD.epsilon([sgd, releases], 1e-6) < epsilon_for([sgd, releases], 1e-6)
