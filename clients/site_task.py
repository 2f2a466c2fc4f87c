"""What a site does before it trains a round: plan DP for its whole run and reserve budget.

User-level DP (one example per customer): the noise multiplier σ is calibrated once
for the site's whole planned training — ``planned-rounds x local-epochs x steps per
epoch`` at Opacus's real sampling rate 1/ceil(n/B) — to the site's ε budget, so every
round trains with the same σ and the ledger reaches at most ε when the plan is done.
Calibration is deterministic, so recomputing it each round (each message may run in a
fresh process) gives the same σ.

The round's segment is reserved in the site's ledger (``<data-path>/privacy-ledger.sqlite``)
before training; a round that would overspend, or a ledger that cannot be trusted,
becomes a decline reply (error code ``DECLINED_BUDGET_EXHAUSTED``) and the server
carries on without the site.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flwr.app import Error, Message

from clients import messages as wire
from privacy.accountant import (
    DPSegment,
    calibrate_noise_multiplier,
    default_delta,
    opacus_sample_rate,
    opacus_steps_per_epoch,
)
from privacy.ledger import BudgetExceeded, LedgerError, PrivacyLedger, Reservation

LEDGER_FILE = "privacy-ledger.sqlite"


@dataclass(frozen=True)
class DPPlan:
    """The DP parameters of one site's whole planned training of one model."""

    sample_rate: float
    noise_multiplier: float
    steps_per_round: int
    delta: float
    epsilon_budget: float

    @property
    def round_segment(self) -> DPSegment:
        """The segment one round of local training adds to the ledger."""
        return DPSegment(self.sample_rate, self.noise_multiplier, self.steps_per_round)


def plan_dp(
    *,
    n_customers: int,
    batch_size: int,
    local_epochs: int,
    planned_rounds: int,
    epsilon_budget: float,
) -> DPPlan:
    """Calibrate σ once for ``planned_rounds x local_epochs`` epochs at the site's size."""
    sample_rate = opacus_sample_rate(n_customers, batch_size)
    steps_per_round = local_epochs * opacus_steps_per_epoch(n_customers, batch_size)
    delta = default_delta(n_customers)
    noise_multiplier = calibrate_noise_multiplier(
        epsilon_budget, delta, sample_rate, steps_per_round * planned_rounds
    )
    return DPPlan(sample_rate, noise_multiplier, steps_per_round, delta, epsilon_budget)


def reserve_round(
    data_path: Path,
    model: str,
    plan: DPPlan,
    *,
    max_grad_norm: float,
    server_round: int,
) -> Reservation | Error:
    """Record the round's DP segment in the site's ledger, or say why the site declines."""
    try:
        with PrivacyLedger(Path(data_path) / LEDGER_FILE) as ledger:
            return ledger.reserve(
                model,
                plan.round_segment,
                budget_epsilon=plan.epsilon_budget,
                delta=plan.delta,
                max_grad_norm=max_grad_norm,
                server_round=server_round,
            )
    except (BudgetExceeded, LedgerError) as err:
        reason = wire.DECLINE_REASONS[wire.DECLINED_BUDGET_EXHAUSTED]
        return Error(wire.DECLINED_BUDGET_EXHAUSTED, f"{reason}: {err}")


def decline(msg: Message, error: Error) -> Message:
    """The reply of a site that does not train this round."""
    return Message(error, reply_to=msg)
