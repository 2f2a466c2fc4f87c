"""Membership-inference attacks on per-example losses, and how well they separate.

An attacker who can evaluate a trained model's loss on a customer's example guesses
"member" (the example was in the training data) when the loss is low:

- **loss threshold** (Yeom et al. 2018): score = −loss;
- **calibrated loss** (the per-example difficulty removed, as in Watson et al. 2022 and
  the offline variant of LiRA, Carlini et al. 2022): score = −(loss − mean loss of the
  same example under reference models trained *without* that customer). An example that
  is hard for every model (an unusual basket) no longer looks like a non-member.

Reference models are trained on seeded halves of the population: :func:`reference_membership`
puts every customer in exactly half of them, so every example has the same number of
OUT references. An attack is judged by its ROC-AUC over members and non-members (0.5:
no better than a coin) and by its true-positive rate at a low false-positive rate
(:func:`tpr_at_fpr`), which says whether *some* members are exposed with confidence.

The likelihood-ratio attack (LiRA, Carlini et al. 2022, "Membership Inference Attacks From
First Principles") models, per example, the distribution of a confidence statistic φ over
reference models that did (IN) and did not (OUT) train on it, as Gaussians:

- **LiRA offline** (:func:`lira_offline_scores`): only OUT references; the one-sided test
  Λ = Pr[Z ≤ φ_target], Z ~ N(μ_out, σ²_out) — a member's φ lies above what models that
  never saw it give;
- **LiRA online** (:func:`lira_online_scores`): IN and OUT references; the likelihood ratio
  Λ = N(φ_target; μ_in, σ²_in) / N(φ_target; μ_out, σ²_out).

φ is the logit-scaled confidence of :func:`logit_confidence` (the paper's statistic, with
the confidence p = exp(−loss)). With few references, a per-example variance is a noisy
estimate from a handful of values, so, as Carlini et al. recommend for small numbers of
shadow models, σ² is by default one *global* variance pooled over all examples
(:func:`variance_for` says which is used for a number of references).

Everything here is plain numpy/scipy on arrays of losses: no model, no data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from models import metrics

LOW_FPR = 0.01
"""The false-positive rate at which the attack's true-positive rate is reported."""

Variance = Literal["global", "per-example"]
"""How LiRA estimates σ²: one value pooled over all examples, or one per example."""
PER_EXAMPLE_VARIANCE_FROM = 64
"""From this many reference models on, :func:`variance_for` fits a variance per example (32
OUT values each); below, one global variance (Carlini et al. 2022 find the global one
better with few shadow models, and per-example only catching up at around 64)."""
LOSS_FLOOR = 1e-12
"""Losses below this are raised to it before :func:`logit_confidence`: a loss of exactly 0
(confidence 1 in float32) would give φ = +∞ and break the Gaussian fits; the floor caps φ
at about 27.6."""
MIN_STD = 1e-12
"""Floor of a fitted standard deviation (identical reference statistics give σ = 0)."""


@dataclass(frozen=True)
class AttackResult:
    """How well one attack's scores separate members from non-members."""

    roc_auc: float
    tpr_at_low_fpr: float
    """True-positive rate at :data:`LOW_FPR` false positives (or the ``fpr`` asked for)."""
    members: int
    non_members: int

    @property
    def chance_sigmas(self) -> float:
        """How many standard deviations of a signal-free attack the ROC-AUC lies above 0.5
        (:func:`chance_auc_std`)."""
        return (self.roc_auc - 0.5) / chance_auc_std(self.members, self.non_members)


def chance_auc_std(members: int, non_members: int) -> float:
    """Standard deviation of the ROC-AUC of scores that carry no membership signal: the
    Mann-Whitney statistic under the null hypothesis, sqrt((m + n + 1) / (12 m n))."""
    return float(np.sqrt((members + non_members + 1) / (12.0 * members * non_members)))


def loss_threshold_scores(losses: np.ndarray) -> np.ndarray:
    """Yeom et al.'s attack: the lower the loss, the likelier a member (score = −loss)."""
    return -np.asarray(losses, dtype=np.float64)


def calibrated_scores(
    losses: np.ndarray, reference_losses: np.ndarray, reference_in: np.ndarray
) -> np.ndarray:
    """Score = −(loss − mean loss under the reference models that did not train on it).

    Args:
        losses: ``(n,)`` the target model's loss of each example.
        reference_losses: ``(k, n)`` each reference model's loss of each example.
        reference_in: ``(k, n)`` bool, True where reference ``j`` trained on example ``i``.

    Raises:
        ValueError: shapes disagree, or an example has no OUT reference.
    """
    losses, reference_losses, reference_in = _checked(losses, reference_losses, reference_in)
    return -(losses - _means(reference_losses, ~reference_in))


def logit_confidence(losses: np.ndarray) -> np.ndarray:
    """LiRA's statistic φ = log(p / (1 − p)) of the confidence p = exp(−loss).

    Carlini et al. 2022 logit-scale the model's confidence in the true label because the
    result is close to Gaussian over models, where the confidence (piled up near 1) and the
    loss (piled up near 0) are not. For the churn model's binary cross-entropy, p is the
    probability of the true label and φ is exactly the model's logit towards it; for the
    recommender's multi-label cross-entropy, p is the geometric mean of the softmax
    probabilities of the basket's items, so small that φ ≈ −loss. Computed stably as
    −loss − log(−expm1(−loss)); losses are floored at :data:`LOSS_FLOOR`.
    """
    loss = np.maximum(np.asarray(losses, dtype=np.float64), LOSS_FLOOR)
    return -loss - np.log(-np.expm1(-loss))


def variance_for(references: int) -> Variance:
    """The variance LiRA fits with ``references`` reference models: global below
    :data:`PER_EXAMPLE_VARIANCE_FROM`, per example from there on."""
    return "per-example" if references >= PER_EXAMPLE_VARIANCE_FROM else "global"


def lira_offline_scores(
    losses: np.ndarray,
    reference_losses: np.ndarray,
    reference_in: np.ndarray,
    variance: Variance = "global",
) -> np.ndarray:
    """Offline LiRA (Carlini et al. 2022): log Pr[Z ≤ φ], Z ~ N(μ_out, σ²_out).

    φ (:func:`logit_confidence`) of the target's loss, against a Gaussian fitted to the
    same example's φ under its OUT references only, so no reference has to be trained on a
    candidate: the one-sided test asks how unusually confident the target is. The log
    keeps scores of examples far in the tail apart (their probabilities round to 1).

    Args:
        losses, reference_losses, reference_in: as for :func:`calibrated_scores`.
        variance: one pooled σ²_out (``"global"``) or one per example.

    Raises:
        ValueError: shapes disagree, an example has no OUT reference, or too few OUT
            references to estimate the variance.
    """
    losses, reference_losses, reference_in = _checked(losses, reference_losses, reference_in)
    mean, std = _gaussians(logit_confidence(reference_losses), ~reference_in, variance)
    return stats.norm.logcdf(logit_confidence(losses), loc=mean, scale=std)


def lira_online_scores(
    losses: np.ndarray,
    reference_losses: np.ndarray,
    reference_in: np.ndarray,
    variance: Variance = "global",
) -> np.ndarray:
    """Online LiRA (Carlini et al. 2022): log N(φ; μ_in, σ²_in) − log N(φ; μ_out, σ²_out).

    The likelihood ratio of the target's φ (:func:`logit_confidence`) under the example's
    IN and OUT Gaussians, each fitted to the references that did and did not train on it.
    An example with no IN reference (possible when a site's protocol holds out a customer
    its reference half contains) gets μ_in = μ_out + the mean IN−OUT shift of the examples
    that have both, rather than no score.

    Args:
        losses, reference_losses, reference_in: as for :func:`calibrated_scores`.
        variance: one pooled σ² per side (``"global"``) or one per example and side.

    Raises:
        ValueError: shapes disagree, an example has no OUT reference, no example has an IN
            one, or too few references to estimate a variance.
    """
    losses, reference_losses, reference_in = _checked(losses, reference_losses, reference_in)
    statistic = logit_confidence(reference_losses)
    out_mean, out_std = _gaussians(statistic, ~reference_in, variance)
    has_in = reference_in.any(axis=0)
    if not has_in.any():
        raise ValueError("no example has an IN reference model")
    in_mean, in_std = _gaussians(statistic[:, has_in], reference_in[:, has_in], variance)
    shift = float(np.mean(in_mean - out_mean[has_in]))
    mean_in = out_mean + shift
    mean_in[has_in] = in_mean
    if variance == "global":
        std_in = np.full_like(out_std, in_std[0])
    else:
        std_in = np.full_like(out_std, float(np.sqrt(np.mean(in_std**2))))
        std_in[has_in] = in_std
    phi = logit_confidence(losses)
    return stats.norm.logpdf(phi, mean_in, std_in) - stats.norm.logpdf(phi, out_mean, out_std)


def _checked(
    losses: np.ndarray, reference_losses: np.ndarray, reference_in: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arrays as float64/bool after checking their shapes and that every example has
    an OUT reference."""
    losses = np.asarray(losses, dtype=np.float64)
    reference_losses = np.asarray(reference_losses, dtype=np.float64)
    reference_in = np.asarray(reference_in, dtype=bool)
    if (
        reference_losses.ndim != 2
        or reference_losses.shape != reference_in.shape
        or reference_losses.shape[1:] != losses.shape
    ):
        raise ValueError(
            f"reference losses {reference_losses.shape} and membership {reference_in.shape} "
            f"must be (k, {losses.shape[0]})"
        )
    missing = int((reference_in.all(axis=0)).sum())
    if missing:
        raise ValueError(f"{missing} examples have no OUT reference model")
    return losses, reference_losses, reference_in


def _means(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-example mean of ``values`` ``(k, n)`` over the rows where ``mask`` is True."""
    return np.where(mask, values, 0.0).sum(axis=0) / mask.sum(axis=0)


def _gaussians(
    values: np.ndarray, mask: np.ndarray, variance: Variance
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and standard deviation of ``values`` ``(k, n)`` over the rows where
    ``mask`` is True (every example needs one).

    The global variance pools every example's squared deviations from its own mean, with
    one degree of freedom spent per example's mean: Σ_i Σ_j (v_ij − μ_i)² / Σ_i (k_i − 1),
    the within-example spread only (the spread of the means is the per-example difficulty
    that the fit removes).
    """
    counts = mask.sum(axis=0)
    mean = _means(values, mask)
    squares = np.where(mask, (values - mean) ** 2, 0.0).sum(axis=0)
    if variance == "global":
        freedom = int((counts - 1).sum())
        if freedom < 1:
            raise ValueError("too few reference models to estimate a global variance")
        std = np.full_like(mean, np.sqrt(squares.sum() / freedom))
    elif variance == "per-example":
        if (counts < 2).any():
            raise ValueError("a per-example variance needs two references of a kind per example")
        std = np.sqrt(squares / (counts - 1))
    else:
        raise ValueError(f"variance must be 'global' or 'per-example', got {variance!r}")
    return mean, np.maximum(std, MIN_STD)


def reference_membership(customers: int, references: int, seed: int) -> np.ndarray:
    """``(references, customers)`` bool: which reference models train on which customer.

    Every customer is IN exactly ``references / 2`` models, chosen at random per customer
    (seeded), so each reference model trains on about half of the customers and every
    example has ``references / 2`` OUT references.

    Raises:
        ValueError: ``references`` is not a positive even number.
    """
    if references < 2 or references % 2:
        raise ValueError(f"need an even number of reference models >= 2, got {references}")
    draws = np.random.default_rng(seed).random((references, customers))
    ranks = draws.argsort(axis=0).argsort(axis=0)
    return ranks < references // 2


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr: float = LOW_FPR) -> float:
    """The highest true-positive rate of "member if score ≥ t" over thresholds ``t``
    whose false-positive rate is at most ``fpr`` (tied scores share one threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    members, non_members = int(is_member.sum()), int((~is_member).sum())
    if members == 0 or non_members == 0:
        raise ValueError("need at least one member and one non-member")
    order = np.argsort(-scores, kind="stable")
    ranked, member = scores[order], is_member[order]
    # A threshold sits after the last of each run of tied scores.
    cut = np.r_[ranked[1:] != ranked[:-1], True]
    true_positive = np.cumsum(member)[cut] / members
    false_positive = np.cumsum(~member)[cut] / non_members
    allowed = true_positive[false_positive <= fpr]
    return float(allowed.max()) if allowed.size else 0.0


def evaluate_attack(
    scores: np.ndarray, is_member: np.ndarray, fpr: float = LOW_FPR
) -> AttackResult:
    """ROC-AUC and TPR at ``fpr`` of ``scores`` (higher = more likely a member)."""
    is_member = np.asarray(is_member, dtype=bool)
    return AttackResult(
        roc_auc=metrics.roc_auc(scores, is_member),
        tpr_at_low_fpr=tpr_at_fpr(scores, is_member, fpr),
        members=int(is_member.sum()),
        non_members=int((~is_member).sum()),
    )
