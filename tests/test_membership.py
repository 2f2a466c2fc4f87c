"""The membership-inference attack machinery on synthetic losses whose answer is known."""

import numpy as np
import pytest

from simulations.membership_attack import (
    calibrated_scores,
    chance_auc_std,
    evaluate_attack,
    loss_threshold_scores,
    reference_membership,
    tpr_at_fpr,
)

N = 2000


def memberships(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(N) < 0.5


def test_members_with_near_zero_loss_are_all_found():
    is_member = memberships()
    rng = np.random.default_rng(1)
    losses = np.where(is_member, rng.uniform(0.0, 0.01, N), rng.uniform(2.0, 5.0, N))

    result = evaluate_attack(loss_threshold_scores(losses), is_member)

    assert result.roc_auc == pytest.approx(1.0)
    assert result.chance_sigmas > 30
    assert result.tpr_at_low_fpr == pytest.approx(1.0)
    assert (result.members, result.non_members) == (is_member.sum(), (~is_member).sum())


def test_the_chance_spread_of_the_auc_matches_signal_free_attacks():
    rng = np.random.default_rng(5)
    is_member = memberships()
    aucs = [evaluate_attack(rng.random(N), is_member).roc_auc for _ in range(200)]

    expected = chance_auc_std(int(is_member.sum()), int((~is_member).sum()))
    assert np.std(aucs) == pytest.approx(expected, rel=0.2)


def test_identical_loss_distributions_give_a_coin_flip():
    is_member = memberships()
    losses = np.random.default_rng(2).exponential(1.0, N)

    result = evaluate_attack(loss_threshold_scores(losses), is_member)

    assert result.roc_auc == pytest.approx(0.5, abs=0.04)
    assert abs(result.chance_sigmas) < 4
    assert result.tpr_at_low_fpr < 0.05


def test_calibration_removes_a_per_example_difficulty():
    # Training lowers a member's loss by 0.3, but examples differ in difficulty by far more:
    # the raw loss barely tells members apart; the loss minus the OUT references' does.
    is_member = memberships()
    rng = np.random.default_rng(3)
    difficulty = rng.gamma(2.0, 2.0, N)
    losses = difficulty - 0.3 * is_member + rng.normal(0, 0.05, N)
    reference_in = reference_membership(N, 4, seed=4)
    reference_losses = difficulty - 0.3 * reference_in + rng.normal(0, 0.05, (4, N))

    raw = evaluate_attack(loss_threshold_scores(losses), is_member)
    calibrated = evaluate_attack(
        calibrated_scores(losses, reference_losses, reference_in), is_member
    )

    assert raw.roc_auc < 0.6
    assert calibrated.roc_auc > 0.99
    assert calibrated.tpr_at_low_fpr > 0.9


def test_every_customer_is_in_exactly_half_of_the_reference_models():
    reference_in = reference_membership(N, 6, seed=0)

    assert reference_in.shape == (6, N)
    assert (reference_in.sum(axis=0) == 3).all()
    assert np.allclose(reference_in.mean(axis=1), 0.5, atol=0.05)
    with pytest.raises(ValueError, match="even number"):
        reference_membership(N, 3, seed=0)


def test_tpr_at_fpr_counts_tied_scores_as_one_threshold():
    scores = np.array([3.0, 2.0, 2.0, 1.0, 0.0])
    is_member = np.array([True, True, False, True, False])

    # "score >= 3" finds one member of three with no false positive; "score >= 2" cannot
    # take the tied member without the tied non-member (FPR 1/2), and then "score >= 1"
    # finds all three members at the same FPR.
    assert tpr_at_fpr(scores, is_member, fpr=0.49) == pytest.approx(1 / 3)
    assert tpr_at_fpr(scores, is_member, fpr=0.5) == pytest.approx(1.0)


def test_an_example_without_an_out_reference_is_refused():
    with pytest.raises(ValueError, match="no OUT reference"):
        calibrated_scores(np.zeros(2), np.zeros((2, 2)), np.array([[True, False], [True, True]]))
