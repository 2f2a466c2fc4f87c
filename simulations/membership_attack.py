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
Everything here is plain numpy on arrays of losses: no model, no data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import metrics

LOW_FPR = 0.01
"""The false-positive rate at which the attack's true-positive rate is reported."""


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
    losses = np.asarray(losses, dtype=np.float64)
    reference_losses = np.asarray(reference_losses, dtype=np.float64)
    out = ~np.asarray(reference_in, dtype=bool)
    if reference_losses.shape != out.shape or reference_losses.shape[1:] != losses.shape:
        raise ValueError(
            f"reference losses {reference_losses.shape} and membership {out.shape} must be "
            f"(k, {losses.shape[0]})"
        )
    out_count = out.sum(axis=0)
    if (out_count == 0).any():
        raise ValueError(f"{int((out_count == 0).sum())} examples have no OUT reference model")
    out_mean = np.where(out, reference_losses, 0.0).sum(axis=0) / out_count
    return -(losses - out_mean)


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
