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

:func:`train_round` and :func:`evaluate_round` are the whole of a site's answer to a
train or evaluate message (the ClientApp only dispatches to them): find the data, split
it by the model's protocol (:mod:`clients.model_tasks`), pass the privacy gate, train
with DP-SGD at the plan's σ (:mod:`privacy.dp`), confirm the steps in the ledger, and
only then build the reply — weights plus the fixed metric keys of :mod:`clients.messages`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from torch import nn

from clients import messages as wire
from clients.model_tasks import MODEL_TASKS, LocalTraining, ModelTask, SiteSplit
from clients.site_data import SiteLocation, load_orders, locate_site, storefront_of
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


@dataclass(frozen=True)
class TrainingPlan:
    """The local training the server asked for in a train message's config."""

    model: str
    local_epochs: int
    optimizer: str
    learning_rate: float
    batch_size: int
    epsilon_budget: float
    max_grad_norm: float
    planned_rounds: int
    server_round: int
    proximal_mu: float
    """FedProx's μ; 0 unless the server runs FedProx."""

    @property
    def private(self) -> bool:
        """DP-SGD with ledger accounting; a budget of 0 or less trains without DP."""
        return self.epsilon_budget > 0

    @classmethod
    def from_config(cls, config: ConfigRecord) -> TrainingPlan:
        """Read the plan from the train config (keys in :mod:`clients.messages`)."""
        return cls(
            model=str(config[wire.MODEL]),
            local_epochs=int(config[wire.LOCAL_EPOCHS]),
            optimizer=str(config[wire.OPTIMIZER]),
            learning_rate=float(config[wire.LEARNING_RATE]),
            batch_size=int(config[wire.BATCH_SIZE]),
            epsilon_budget=float(config[wire.EPSILON_BUDGET]),
            max_grad_norm=float(config[wire.MAX_GRAD_NORM]),
            planned_rounds=int(config[wire.PLANNED_ROUNDS]),
            server_round=int(config[wire.SERVER_ROUND]),
            proximal_mu=float(config.get(wire.PROXIMAL_MU, 0.0)),
        )


def train_round(msg: Message, context: Context) -> Message:
    """A site's whole answer to a train message (see the module docstring)."""
    config = dict(msg.content[wire.CONFIG])
    plan = TrainingPlan.from_config(msg.content[wire.CONFIG])
    task = _task(plan.model)
    location = locate_site(context.node_config, context.run_config)
    split, storefront = prepared_split(location, plan.model, config)
    n_customers = len(split.train)
    if n_customers == 0:
        return _no_data(msg, plan.model, storefront)

    noise_multiplier, reservation, dp_plan = None, None, None
    if plan.private:
        try:
            dp_plan = plan_dp(
                n_customers=n_customers,
                batch_size=plan.batch_size,
                local_epochs=plan.local_epochs,
                planned_rounds=plan.planned_rounds,
                epsilon_budget=plan.epsilon_budget,
            )
        except ValueError as err:  # no σ reaches the budget at this site's size
            reason = wire.DECLINE_REASONS[wire.DECLINED_BUDGET_EXHAUSTED]
            return decline(msg, Error(wire.DECLINED_BUDGET_EXHAUSTED, f"{reason}: {err}"))
        reservation = reserve_round(
            location.ledger_dir,
            plan.model,
            dp_plan,
            max_grad_norm=plan.max_grad_norm,
            server_round=plan.server_round,
        )
        if isinstance(reservation, Error):
            return decline(msg, reservation)
        noise_multiplier = dp_plan.noise_multiplier

    module = task.build(config)
    module.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict(), strict=True)
    local = LocalTraining(
        epochs=plan.local_epochs,
        batch_size=plan.batch_size,
        optimizer=plan.optimizer,
        learning_rate=plan.learning_rate,
        proximal_mu=plan.proximal_mu,
        max_grad_norm=plan.max_grad_norm,
        noise_multiplier=noise_multiplier,
        seed=_simulation_seed(context, plan.server_round) if location.simulated else None,
    )
    result = task.train(module, split.train, local)

    if reservation is None:
        epsilon, delta, dp_steps = math.inf, 0.0, 0
    else:
        # The update leaves the site only after its real steps are confirmed on disk.
        with PrivacyLedger(location.ledger_dir / LEDGER_FILE) as ledger:
            ledger.commit(reservation, steps_taken=result.dp_steps)
            status = ledger.budget_status(plan.model, plan.epsilon_budget, dp_plan.delta)
        epsilon, delta, dp_steps = status.epsilon_spent, dp_plan.delta, status.total_steps

    metrics = {
        wire.NUM_EXAMPLES: n_customers,
        wire.TRAIN_LOSS: result.train_loss,
        wire.EPSILON: epsilon,
        wire.DELTA: delta,
        wire.DP_STEPS: dp_steps,
    }
    return Message(
        RecordDict(
            {
                wire.ARRAYS: ArrayRecord(_plain_weights(module)),
                wire.METRICS: MetricRecord(metrics),
                wire.SITE: ConfigRecord({wire.STOREFRONT: storefront}),
            }
        ),
        reply_to=msg,
    )


def evaluate_round(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's held-out customers: sums and counts only."""
    config = dict(msg.content[wire.CONFIG])
    model = str(config[wire.MODEL])
    task = _task(model)
    location = locate_site(context.node_config, context.run_config)
    split, storefront = prepared_split(location, model, config)
    module = task.build(config)
    module.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict(), strict=True)
    module.eval()
    with torch.no_grad():
        metrics = task.evaluate(module, split.evaluation)
    if set(metrics) != wire.EVALUATE_METRIC_KEYS[model]:
        # A task bug must not put undocumented values on the wire.
        raise RuntimeError(
            f"{model} evaluation produced keys {sorted(metrics)}, "
            f"not the documented {sorted(wire.EVALUATE_METRIC_KEYS[model])}"
        )
    return Message(
        RecordDict(
            {
                wire.METRICS: MetricRecord(metrics),
                wire.SITE: ConfigRecord({wire.STOREFRONT: storefront}),
            }
        ),
        reply_to=msg,
    )


def prepared_split(
    location: SiteLocation, model: str, config: dict[str, Any]
) -> tuple[SiteSplit, str]:
    """The site's split for ``model`` and its storefront name, cached per data version.

    A simulation serves many messages from one process, so the split is built once; a
    changed file (new export) has a new modification time, and a changed catalogue or
    churn cutoff is a new key, so either is read again.
    """
    path = location.orders_file
    version = path.stat().st_mtime_ns if path.is_file() else 0
    catalogue = tuple(config.get(wire.CATALOGUE) or ())
    cutoff = str(config.get(wire.CHURN_CUTOFF, ""))
    return _prepared_split(location, model, version, catalogue, cutoff)


@lru_cache(maxsize=4)
def _prepared_split(
    location: SiteLocation, model: str, version: int, catalogue: tuple[str, ...], cutoff: str
) -> tuple[SiteSplit, str]:
    del version  # part of the cache key only
    orders = load_orders(location)
    shared = {wire.CATALOGUE: list(catalogue), wire.CHURN_CUTOFF: cutoff}
    split = _task(model).prepare(orders, shared)
    return split, storefront_of(location, orders)


def _task(model: str) -> ModelTask:
    if model not in MODEL_TASKS:
        raise ValueError(f"unknown model {model!r}; this site trains {sorted(MODEL_TASKS)}")
    return MODEL_TASKS[model]


def _no_data(msg: Message, model: str, storefront: str) -> Message:
    reason = wire.DECLINE_REASONS[wire.DECLINED_NO_DATA]
    detail = f"{reason}: {storefront} has no training customers for {model}"
    return decline(msg, Error(wire.DECLINED_NO_DATA, detail))


def _plain_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _simulation_seed(context: Context, server_round: int) -> int:
    """Reproducible simulations: one seed per (simulated site, round)."""
    return 1000 * server_round + int(context.node_config["partition-id"])
