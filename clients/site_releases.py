"""What a site releases about its customers in a federated run, each through the release
mechanism (:mod:`privacy.release`) and its ledger.

- **Cohort sizes**, once per run and model: how many training and held-out customers the
  model's protocol finds at the run's shared facts, as one noisy histogram of two cells
  (each customer in one of them, or neither). The training size is what the site plans
  DP-SGD with and reports as ``num-examples``; both are what it compares with its
  minimum cohort. Counting once per run means a server learns a cohort's size with the
  noise of one release however many messages it sends, and the run's facts are fixed
  with it: a later message of the run with other facts is refused (moving the churn
  cutoff message by message would otherwise count customers by the day they first
  bought).
- **Evaluation answers**: the model's queries over its held-out customers, at most the
  policy's evaluations per run, which together spend at most the run's evaluation ε
  (:func:`privacy.planning.evaluation_budget`); the noise multiplier is calibrated for the
  evaluations the server plans (at most the policy's).

Each release is reserved in the ledger (checked against the model's lifetime cap, and an
evaluation against the run's evaluation limits) before any noise is drawn, and recorded
with its answer after.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from models.registry import FederatedModel, SiteData
from privacy import release
from privacy.accountants import DPSegment
from privacy.ledger import PrivacyLedger, ReleaseRecord
from privacy.planning import accounting_delta
from privacy.policy import SitePolicy
from privacy.release import Histogram

COHORT = "cohort"
"""Ledger purpose (and query name) of a run's cohort sizes."""
EVALUATION = "evaluation"
"""Ledger purpose of an evaluation's answers."""
COHORT_QUERY = Histogram(COHORT, 2)
"""Cell 0: the training customers; cell 1: the held-out customers."""


class CohortSizes(NamedTuple):
    """A run's cohort sizes as the site released them (noisy, public)."""

    training: float
    held_out: float


def cohort_sizes(
    ledger: PrivacyLedger,
    policy: SitePolicy,
    model: FederatedModel,
    data: SiteData,
    *,
    facts_digest: str,
    run: str,
    server_round: int,
    rng: np.random.Generator,
) -> CohortSizes:
    """The run's cohort sizes for ``model``: released at its first message, read back from
    the ledger at every later one.

    Raises:
        FactsChanged: the run's sizes were released at other shared facts.
        privacy.ledger.BudgetExceeded: the release would overspend the model's cap.
    """
    made = [r for r in ledger.releases(model.name, run=run, purpose=COHORT) if r.answer]
    if made:
        if made[-1].facts_digest != facts_digest:
            raise FactsChanged(
                f"the {model.name} shared facts changed within run {run}: a run's facts are "
                "fixed by its first message"
            )
        return CohortSizes(*made[-1].answer[COHORT])
    noise = policy.cohort_noise
    training, held_out = len(data.train), model.held_out_size(data.evaluation)
    record = ledger.reserve_release(
        model.name,
        release.segments([COHORT_QUERY], noise),
        purpose=COHORT,
        budget_epsilon=policy.cap_for(model.name),
        delta=accounting_delta(policy, ledger.entries(model.name)),
        accountant=policy.accountant,
        run=run,
        server_round=server_round,
        facts_digest=facts_digest,
    )
    cells = np.concatenate([np.zeros(training), np.ones(held_out)])
    answer = release.release([COHORT_QUERY], {COHORT: cells}, noise, rng)
    ledger.record_release(record, answer)
    return CohortSizes(*answer[COHORT])


def evaluation_noise(
    model: FederatedModel, budget: float, evaluations: int, delta: float, accountant: str
) -> float:
    """The noise multiplier of each of ``evaluations`` evaluations of ``model`` in a run,
    which together spend the run's evaluation ``budget`` (alone, at ``delta``)."""
    return release.calibrate(
        model.evaluation_queries, budget, delta, repeats=evaluations, accountant=accountant
    )


def planned_evaluation_segments(
    policy: SitePolicy, model: FederatedModel, evaluations: int, budget: float, delta: float
) -> list[DPSegment]:
    """What ``evaluations`` evaluations of ``model`` within ``budget`` will add to the
    ledger in a run (none for none): the training plan composes them into its calibration."""
    if evaluations == 0:
        return []
    noise = evaluation_noise(model, budget, evaluations, delta, policy.accountant)
    return release.segments(model.evaluation_queries, noise, repeats=evaluations)


def evaluation_answer(
    ledger: PrivacyLedger,
    policy: SitePolicy,
    model: FederatedModel,
    values: dict[str, np.ndarray],
    *,
    evaluations: int,
    budget: float,
    facts_digest: str,
    run: str,
    server_round: int,
    rng: np.random.Generator,
) -> tuple[dict, float]:
    """One evaluation's noisy answers to ``model``'s queries over the held-out ``values``
    (one of ``evaluations`` in the run, which together spend ``budget``), and their noise
    multiplier (the standard deviation of each answer).

    Raises:
        privacy.ledger.BudgetExceeded: the release would overspend the model's cap.
        privacy.ledger.ReleaseLimit: the run has had its evaluations, or their ε.
    """
    delta = accounting_delta(policy, ledger.entries(model.name))
    noise = evaluation_noise(model, budget, evaluations, delta, policy.accountant)
    record: ReleaseRecord = ledger.reserve_release(
        model.name,
        release.segments(model.evaluation_queries, noise),
        purpose=EVALUATION,
        budget_epsilon=policy.cap_for(model.name),
        delta=delta,
        accountant=policy.accountant,
        run=run,
        server_round=server_round,
        facts_digest=facts_digest,
        run_limit=(policy.max_evaluations_per_run, budget),
    )
    answer = release.release(model.evaluation_queries, values, noise, rng)
    ledger.record_release(record, answer)
    return answer, noise


class FactsChanged(ValueError):
    """A message of a run carries other shared facts than the run's first."""
