"""From a privacy budget to a DP-SGD plan: sampling rate, steps, δ and noise multiplier.

User-level DP (one example per customer) at a site: the noise multiplier σ is calibrated
*once* for the site's whole planned training — ``planned_rounds × local_epochs × steps
per epoch`` at the sampling rate Opacus really uses, 1/⌈n/B⌉ — to the budget (ε, δ) by the
named accountant, so that every round trains with the same σ and the ledger reaches at
most ε when the plan is complete. A centralized run is the one-round case. Calibration is
deterministic: recomputing it (each message may run in a fresh process, and the server
recomputes a site's plan to screen its update) gives the same σ.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from common import wire
from privacy.accountants import DEFAULT_ACCOUNTANT, DPSegment, create_accountant
from privacy.ledger import LedgerEntry, ledger_epsilon
from privacy.policy import SitePolicy


@dataclass(frozen=True)
class DPPlan:
    """The DP parameters of one site's whole planned training of one model."""

    epsilon_budget: float
    """The ε the plan spends when complete."""
    customers: int
    """Training customers n (one example each)."""
    delta: float
    sample_rate: float
    noise_multiplier: float
    steps_per_round: int
    planned_rounds: int
    accountant: str
    """The accountant σ was calibrated with (a name of :data:`privacy.accountants.ACCOUNTANTS`)."""

    @property
    def round_segment(self) -> DPSegment:
        """The segment one round of local training adds to the ledger."""
        return DPSegment(self.sample_rate, self.noise_multiplier, self.steps_per_round)

    @property
    def expected_batch_size(self) -> float:
        """Customers per Poisson batch on average, ``q · n`` (Opacus's averaging denominator
        up to rounding)."""
        return self.sample_rate * self.customers

    def epsilon(self, segments: list[DPSegment]) -> float:
        """ε of ``segments`` by this plan's accountant at its δ."""
        return create_accountant(self.accountant).epsilon(segments, self.delta)


def plan_dp(
    *,
    n_customers: int,
    batch_size: int,
    local_epochs: int,
    planned_rounds: int,
    epsilon_budget: float,
    delta: float | None = None,
    accountant: str = DEFAULT_ACCOUNTANT,
    prior: Sequence[DPSegment] = (),
) -> DPPlan:
    """Calibrate σ once for ``planned_rounds × local_epochs`` epochs at the site's size.

    ``delta`` defaults to :func:`default_delta` of the customers. With ``prior`` segments
    (what earlier runs spent, this run's releases), ``epsilon_budget`` is the ε of all of
    them composed with this plan, not of the plan alone.

    Raises:
        ValueError: invalid arguments, or no σ reaches the budget at this size.
    """
    epsilon_budget = float(epsilon_budget)
    delta = default_delta(n_customers) if delta is None else float(delta)
    _check_positive_int("local_epochs", local_epochs)
    _check_positive_int("planned_rounds", planned_rounds)
    sample_rate = opacus_sample_rate(n_customers, batch_size)
    steps_per_round = local_epochs * opacus_steps_per_epoch(n_customers, batch_size)
    noise_multiplier = _calibrated_noise_multiplier(
        accountant,
        epsilon_budget,
        delta,
        sample_rate,
        steps_per_round * planned_rounds,
        tuple(prior),
    )
    return DPPlan(
        epsilon_budget=epsilon_budget,
        customers=n_customers,
        delta=delta,
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        steps_per_round=steps_per_round,
        planned_rounds=planned_rounds,
        accountant=accountant,
    )


@lru_cache(maxsize=1024)
def _calibrated_noise_multiplier(
    accountant: str,
    epsilon_budget: float,
    delta: float,
    sample_rate: float,
    steps: int,
    prior: tuple[DPSegment, ...],
) -> float:
    # Cached by what σ depends on, not by site size: a PLD calibration takes 20 ms to 2 s,
    # a simulation process or the server's screening plans the same sizes every round, and
    # many sites of different sizes share a sample rate (every site of at most B customers
    # has rate 1) and δ.
    return create_accountant(accountant).calibrate_noise_multiplier(
        epsilon_budget, delta, sample_rate, steps, prior=prior
    )


EXHAUSTED_FRACTION = 0.01
"""A model whose remaining ε is below this share of its cap declines: what is left buys
no useful training, only noise."""


@dataclass(frozen=True)
class RunGrant:
    """What a site grants a run of one model: a DP plan (or none: no DP, as the policy
    allows), and why it differs from the request ("" when granted as asked)."""

    plan: DPPlan | None
    note: str = ""


class PolicyDecline(Exception):
    """The site's policy declines the request; ``code`` is a ``common.wire.DECLINED_*``."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{wire.DECLINE_REASONS[code]}: {detail}")
        self.code = code


def plan_site_run(
    policy: SitePolicy,
    model: str,
    *,
    requested_epsilon: float,
    n_customers: int,
    batch_size: int,
    local_epochs: int,
    planned_rounds: int,
    earlier: Sequence[LedgerEntry],
    releases: Sequence[DPSegment] = (),
) -> RunGrant:
    """Turn a server's request into the plan the site's policy allows, or decline it.

    The server asks for ``requested_epsilon`` for this run of ``model``; ``earlier`` are
    the model's ledger entries of *other* runs, ``releases`` this run's releases, made or
    planned (its cohort sizes and evaluations), and ``n_customers`` the training cohort's
    size as the site released it (a public, noisy count: nothing planned depends on the
    exact one). The run may bring the model's ε at most to ``min(cap, spent +
    min(request, max-epsilon-per-run))`` (spent and the target composed by the policy's
    accountant, at the policy's δ, :func:`accounting_delta`), and σ is calibrated so that
    all earlier segments, the run's releases and its whole training plan stay within
    that. A request for no DP is declined when the policy requires DP, and trained
    without DP (no plan) otherwise.

    Raises:
        PolicyDecline: DP is required but not asked for, the budget is spent, or no σ
            reaches what remains at this site's size.
    """
    if not asks_for_dp(policy, model, requested_epsilon):
        return RunGrant(None, "trained without DP as asked: this site's policy allows it")
    delta = accounting_delta(policy, earlier)
    cap = policy.cap_for(model)
    spent = ledger_epsilon(list(earlier), delta)
    run_budget = min(requested_epsilon, policy.max_epsilon_per_run)
    target = min(cap, spent + run_budget)
    if cap - spent < EXHAUSTED_FRACTION * cap:
        raise PolicyDecline(
            wire.DECLINED_BUDGET_EXHAUSTED,
            f"{model} has spent ε {spent:.4g} of this site's lifetime cap {cap:g} "
            f"(δ = {delta:.3g})",
        )
    notes = []
    if run_budget < requested_epsilon:
        notes.append(
            f"asked ε {requested_epsilon:g} for this run, the policy allows "
            f"{policy.max_epsilon_per_run:g} per run"
        )
    if target < spent + run_budget:
        notes.append(
            f"ε {spent:.3g} of the lifetime cap {cap:g} is spent, {cap - spent:.3g} remains"
        )
    try:
        plan = plan_dp(
            n_customers=n_customers,
            batch_size=batch_size,
            local_epochs=local_epochs,
            planned_rounds=planned_rounds,
            epsilon_budget=target,
            delta=delta,
            accountant=policy.accountant,
            prior=[*(entry.segment for entry in earlier), *releases],
        )
    except ValueError as error:
        raise PolicyDecline(wire.DECLINED_BUDGET_EXHAUSTED, str(error)) from None
    note = (
        f"planned down: {'; '.join(notes)}; this run may add ε {target - spent:.3g}"
        if notes
        else ""
    )
    return RunGrant(plan, note)


EVALUATION_SHARE = 0.25
"""The share of a run's ε its evaluations may take alone, when less than the policy's
evaluation ε (so a run asking little ε still has most of it for training)."""


def evaluation_budget(policy: SitePolicy, requested_epsilon: float) -> float:
    """The ε (alone) all of a run's evaluation releases of a model may spend: the policy's
    evaluation ε, or :data:`EVALUATION_SHARE` of what the run may spend if that is less (a
    run asked for no DP is held to the policy's evaluation ε)."""
    if not (math.isfinite(requested_epsilon) and requested_epsilon > 0):
        return policy.evaluation_epsilon
    run_budget = min(requested_epsilon, policy.max_epsilon_per_run)
    return min(policy.evaluation_epsilon, EVALUATION_SHARE * run_budget)


def asks_for_dp(policy: SitePolicy, model: str, requested_epsilon: float) -> bool:
    """Whether the server asks to train ``model`` with DP (a finite ε > 0).

    Raises:
        PolicyDecline: it asks for no DP and the policy requires DP (a refusal that
            depends on the request and the policy alone: check it before releasing).
    """
    if math.isfinite(requested_epsilon) and requested_epsilon > 0:
        return True
    if policy.dp_required:
        raise PolicyDecline(
            wire.DECLINED_POLICY,
            f"the server asked to train {model} without DP (epsilon={requested_epsilon:g}); "
            "this site's policy requires DP",
        )
    return False


def accounting_delta(policy: SitePolicy, entries: Sequence[LedgerEntry]) -> float:
    """The δ a site's ε is computed at: the policy's fixed δ, or the smallest δ any of
    ``entries`` was accounted at if that is smaller (an older ledger's rows; a policy
    without a fixed δ has only those).

    Raises:
        ValueError: the policy fixes no δ and the ledger has none.
    """
    deltas = [entry.delta for entry in entries]
    if policy.delta is not None:
        deltas.append(policy.delta)
    if not deltas:
        raise ValueError(
            "the site's policy fixes no δ; set one with `fedshop-site policy --set delta=...`"
        )
    return min(deltas)


def site_delta(n_customers: int) -> float:
    """The δ a site fixes in its policy when it is written: :func:`default_delta` of its
    customers, rounded down to a power of ten — a size class, so that the δ in its replies
    does not state its exact number of customers."""
    return 10.0 ** math.floor(math.log10(default_delta(n_customers)) + 1e-9)


def default_delta(n_customers: int) -> float:
    """The project's default δ for a site: min(1e-5, 1 / (10 · customers))."""
    if isinstance(n_customers, bool) or not isinstance(n_customers, numbers.Integral):
        raise ValueError(f"n_customers must be an integer, got {n_customers!r}")
    if n_customers < 1:
        raise ValueError(f"n_customers must be >= 1, got {n_customers}")
    return min(1e-5, 1.0 / (10 * n_customers))


def opacus_sample_rate(n_examples: int, batch_size: int) -> float:
    """The Poisson sampling rate Opacus's ``DPDataLoader`` really uses: 1 / ⌈n / B⌉.

    ``DPDataLoader.from_data_loader`` sets ``sample_rate = 1 / len(data_loader)`` and a
    plain ``DataLoader`` (``drop_last=False``) has ⌈n / B⌉ batches; this is not B / n.
    """
    _check_positive_int("n_examples", n_examples)
    _check_positive_int("batch_size", batch_size)
    return 1.0 / math.ceil(n_examples / batch_size)


def opacus_steps_per_epoch(n_examples: int, batch_size: int) -> int:
    """How many batches one pass over Opacus's ``DPDataLoader`` yields.

    Its sampler draws ``int(1 / sample_rate)`` batches, which floating point makes one less
    than ⌈n / B⌉ for some sizes (e.g. 1 / (1 / 93) = 92.99…). Plan steps with this number.
    """
    return int(1 / opacus_sample_rate(n_examples, batch_size))


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
