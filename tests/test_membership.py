"""The membership-inference attack machinery on synthetic losses whose answer is known."""

import re

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from lab.benchmarks import membership
from lab.benchmarks.membership import ReferenceHalves
from lab.membership_attack import (
    calibrated_scores,
    chance_auc_std,
    evaluate_attack,
    lira_offline_scores,
    lira_online_scores,
    logit_confidence,
    loss_threshold_scores,
    reference_membership,
    tpr_at_fpr,
    variance_for,
)
from models import schema

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


# LiRA (Carlini et al. 2022) on losses built from a chosen statistic: for a binary model,
# loss = softplus(−φ) has logit-scaled confidence exactly φ, so the tests pick φ's
# distribution over reference models and know what the attacks should reach.

REFERENCES = 16


def loss_of(phi: np.ndarray) -> np.ndarray:
    """The binary cross-entropy whose logit-scaled confidence is ``phi``."""
    return np.logaddexp(0.0, -np.asarray(phi, dtype=np.float64))


def shifted_population(shift: float, seed: int = 6):
    """φ = difficulty (SD 3) + ``shift`` when trained on + noise (SD 1), for the target
    (trained on the members) and 16 references on seeded halves."""
    is_member = memberships()
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 3.0, N)
    reference_in = reference_membership(N, REFERENCES, seed=seed + 1)
    reference_losses = loss_of(
        difficulty + shift * reference_in + rng.normal(0, 1, (REFERENCES, N))
    )
    losses = loss_of(difficulty + shift * is_member + rng.normal(0, 1, N))
    return losses, reference_losses, reference_in, is_member


def test_logit_confidence_inverts_the_binary_cross_entropy():
    phi = np.array([-8.0, -1.0, 0.0, 2.5, 20.0])

    assert logit_confidence(loss_of(phi)) == pytest.approx(phi, abs=1e-9)
    # A loss of 0 is floored (confidence 1 would give +inf): φ stays finite, about 27.6.
    assert logit_confidence(np.array([0.0]))[0] == pytest.approx(27.631, abs=1e-3)
    # The recommender's losses are large (p = exp(−loss) ≪ 1): φ is the negative loss.
    assert logit_confidence(np.array([8.0]))[0] == pytest.approx(-8.0, abs=1e-3)


def test_offline_lira_uses_the_pooled_out_variance_and_a_one_sided_test():
    # Two examples, two OUT references each: φ = 1, 3 (mean 2) and 10, 14 (mean 12). The
    # global variance pools the within-example squares: (1 + 1 + 4 + 4) / (1 + 1) = 5.
    reference_losses = loss_of(np.array([[1.0, 10.0], [3.0, 14.0], [0.0, 0.0]]))
    reference_in = np.array([[False, False], [False, False], [True, True]])
    sigma = np.sqrt(5.0)
    losses = loss_of(np.array([2.0 + sigma, 12.0 - 2 * sigma]))

    scores = lira_offline_scores(losses, reference_losses, reference_in)

    assert scores == pytest.approx(np.log(stats.norm.cdf([1.0, -2.0])), abs=1e-9)
    # Per-example variances: sqrt(2) and sqrt(8) (ddof 1).
    per_example = lira_offline_scores(losses, reference_losses, reference_in, "per-example")
    expected = stats.norm.logcdf([sigma / np.sqrt(2.0), -2 * sigma / np.sqrt(8.0)])
    assert per_example == pytest.approx(expected, abs=1e-9)


def test_online_lira_is_the_log_likelihood_ratio_of_the_in_and_out_gaussians():
    # One example: OUT φ = 0, 2 (mean 1, variance 2); IN φ = 4, 6, 8 (mean 6, variance 4).
    reference_losses = loss_of(np.array([[0.0], [2.0], [4.0], [6.0], [8.0]]))
    reference_in = np.array([[False], [False], [True], [True], [True]])
    phi = 5.0

    score = lira_online_scores(loss_of([phi]), reference_losses, reference_in)

    expected = stats.norm.logpdf(phi, 6.0, 2.0) - stats.norm.logpdf(phi, 1.0, np.sqrt(2.0))
    assert score[0] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("attack", [lira_offline_scores, lira_online_scores])
def test_lira_finds_members_whose_statistic_comes_from_a_separated_gaussian(attack):
    losses, reference_losses, reference_in, is_member = shifted_population(shift=6.0)

    result = evaluate_attack(attack(losses, reference_losses, reference_in), is_member)

    assert result.roc_auc > 0.999
    assert result.tpr_at_low_fpr > 0.95
    # The per-example difficulty hides much of it from the plain loss threshold.
    assert evaluate_attack(loss_threshold_scores(losses), is_member).roc_auc < 0.95


@pytest.mark.parametrize("attack", [lira_offline_scores, lira_online_scores])
def test_lira_reaches_the_auc_of_the_gaussian_shift(attack):
    # Training shifts φ by one noise SD. Knowing each example's OUT mean, the best test
    # reaches Φ(1 / sqrt(2)) = 0.760; estimating it from 8 OUT references adds 1/8 of the
    # noise variance: Φ(1 / sqrt(2 · 1.125)) = 0.748. The raw loss, blind to a difficulty
    # SD of 3, stays near Φ(1 / sqrt(2 · 10)) = 0.589.
    losses, reference_losses, reference_in, is_member = shifted_population(shift=1.0)

    lira = evaluate_attack(attack(losses, reference_losses, reference_in), is_member)
    raw = evaluate_attack(loss_threshold_scores(losses), is_member)

    assert lira.roc_auc == pytest.approx(stats.norm.cdf(1 / np.sqrt(2.25)), abs=0.03)
    assert raw.roc_auc == pytest.approx(stats.norm.cdf(1 / np.sqrt(20)), abs=0.04)


@pytest.mark.parametrize("variance", ["global", "per-example"])
@pytest.mark.parametrize("attack", [lira_offline_scores, lira_online_scores])
def test_lira_without_signal_stays_within_the_chance_spread(attack, variance):
    # IN and OUT references and members and non-members all draw φ from the same Gaussian.
    losses, reference_losses, reference_in, is_member = shifted_population(shift=0.0)

    result = evaluate_attack(attack(losses, reference_losses, reference_in, variance), is_member)

    assert abs(result.chance_sigmas) < 3
    assert result.tpr_at_low_fpr < 0.05


def test_online_lira_scores_an_example_without_in_reference_by_the_mean_shift():
    losses, reference_losses, reference_in, is_member = shifted_population(shift=6.0)
    reference_in = reference_in.copy()
    reference_in[:, :10] = False  # ten examples only have OUT references

    scores = lira_online_scores(losses, reference_losses, reference_in)

    assert np.isfinite(scores).all()
    assert evaluate_attack(scores[:10], is_member[:10]).roc_auc == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no example has an IN"):
        lira_online_scores(losses, reference_losses, np.zeros_like(reference_in))


def test_lira_refuses_examples_without_out_references_and_too_few_for_a_variance():
    with pytest.raises(ValueError, match="no OUT reference"):
        lira_offline_scores(np.zeros(2), np.zeros((2, 2)), np.array([[True, False], [True, True]]))
    one_out_each = np.array([[False, False], [True, True]])
    with pytest.raises(ValueError, match="global variance"):
        lira_offline_scores(np.zeros(2), np.zeros((2, 2)), one_out_each)


def test_the_variance_is_global_for_few_references():
    assert variance_for(16) == "global"
    assert variance_for(64) == "per-example"


def test_reference_halves_are_drawn_once_over_every_customer():
    frame = pd.DataFrame({schema.CUSTOMER: [f"c{i % 50}" for i in range(200)]})

    halves = ReferenceHalves.draw(frame, 4, seed=0)
    some = np.array(["c7", "c3", "c42"], dtype=object)

    assert halves.is_in.shape == (4, 50)
    assert (halves.is_in.sum(axis=0) == 2).all()
    assert (halves.of(some) == halves.is_in[:, [halves.customers.get_loc(c) for c in some]]).all()
    kept = halves.frame(frame, 1)
    assert set(kept[schema.CUSTOMER]) == set(halves.customers[halves.is_in[1]])
    assert len(kept) == 4 * halves.is_in[1].sum()  # all 4 rows of each of its customers


TABLE_ROW = re.compile(
    r"^\| (recommender|churn) \| ([^|]+) \| ([^|]+) \| ([^|]+) \| ([0-9.]+) \| ([-+0-9.]+) "
    r"\| ([0-9.]+) \|$"
)


@pytest.mark.slow
def test_the_quick_audit_attacks_every_target_against_references_of_its_recipe(capsys):
    # About a minute: both models, 5 targets each, 4 references per recipe (federated ones
    # trained by the sites' real code), every attack.
    threads = torch.get_num_threads()
    try:
        assert membership.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    section = capsys.readouterr().out

    rows = [TABLE_ROW.match(line) for line in section.splitlines()]
    table = {(m[1], m[2], m[3], m[4]): (float(m[5]), float(m[6]), float(m[7])) for m in rows if m}
    trainings = [
        (membership.CENTRALIZED, "—"),
        (membership.CENTRALIZED, "8"),
        (membership.OVERFITTED, "—"),
        (membership.FEDERATED, "—"),
        (membership.FEDERATED, "8"),
    ]
    attacks = [
        membership.LOSS_THRESHOLD,
        membership.CALIBRATED,
        membership.LIRA_OFFLINE,
        membership.LIRA_ONLINE,
    ]
    assert set(table) == {
        (model, training, epsilon, attack)
        for model in ("recommender", "churn")
        for training, epsilon in trainings
        for attack in attacks
    }
    population = re.finditer(
        r"^\| (recommender|churn) \| [^|]+ \| ([0-9,]+) \| ([0-9,]+) \| ([0-9.]+) \|$",
        section,
        re.M,
    )
    spread = {}
    for m in population:
        members, non_members = (int(count.replace(",", "")) for count in (m[2], m[3]))
        spread[m[1]] = chance_auc_std(members, non_members)
        assert float(m[4]) == pytest.approx(spread[m[1]], abs=5e-4)
    assert set(spread) == {"recommender", "churn"}
    for (model, *_), (auc, z, tpr) in table.items():
        assert 0.0 <= auc <= 1.0 and 0.0 <= tpr <= 1.0
        assert z == pytest.approx((auc - 0.5) / spread[model], abs=0.15)
    assert "4 reference models trained with its own recipe" in section
    # The over-fitted recommender memorises members: LiRA against 4 over-fitted references
    # separates them far beyond the chance spread.
    for attack in (membership.LIRA_OFFLINE, membership.LIRA_ONLINE):
        auc, z, _ = table[("recommender", membership.OVERFITTED, "—", attack)]
        assert auc > 0.6 and z > 5
    # The conclusion names the strongest attack's AUC at ε = 8 of each model.
    conclusion = next(line for line in section.splitlines() if line.startswith("The strongest"))
    at_goal = conclusion.split("ε = 8: ")[1].split(";")[0]
    for model in ("recommender", "churn"):
        best = max(
            auc
            for (m, training, epsilon, _), (auc, _, _) in table.items()
            if m == model and epsilon == "8"
        )
        assert f"{model} {best:.3f}" in at_goal


def test_the_summary_keeps_the_strongest_attack_per_model_and_epsilon_and_the_report_reads_it():
    from lab.membership_attack import AttackResult
    from simulations.privacy_report import attack_at

    def row(model, training, epsilon, attack, auc):
        return membership.Row(model, training, epsilon, attack, AttackResult(auc, 0.02, 500, 500))

    rows = [
        row("churn", membership.CENTRALIZED, 8.0, "LiRA offline", 0.53),
        row("churn", membership.FEDERATED, 8.0, "LiRA online", 0.54),
        row("churn", membership.CENTRALIZED, 1.0, "calibrated loss", 0.51),
        row("churn", membership.OVERFITTED, None, "LiRA online", 0.80),  # not a recipe sites use
        row("churn", membership.CENTRALIZED, None, "loss threshold", 0.60),
    ]
    summary = membership.strongest_attacks(rows, "python -m lab.benchmarks.membership")
    by_epsilon = {entry["epsilon"]: entry for entry in summary["strongest"]}
    assert set(by_epsilon) == {8.0, 1.0, None}
    assert (by_epsilon[8.0]["attack"], by_epsilon[8.0]["roc-auc"]) == ("LiRA online", 0.54)
    assert by_epsilon[None]["roc-auc"] == 0.60
    strongest = summary["strongest"]
    assert "ε 8: ROC-AUC 0.540" in attack_at(strongest, "churn", 7.97)  # the next audited ε up
    assert "ε 1: ROC-AUC 0.510" in attack_at(strongest, "churn", 0.34)
    assert "no DP: ROC-AUC 0.600" in attack_at(strongest, "churn", 12.0)
    assert attack_at(strongest, "recommender", 8.0) == ""
