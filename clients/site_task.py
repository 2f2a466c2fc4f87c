"""A site's whole answer to a train or evaluate message, for any registered model.

:func:`train_round` finds the site's data, splits it by the model's protocol
(:class:`models.registry.FederatedModel`), passes the privacy gate, trains, confirms the
DP steps in the ledger, and only then builds the reply — weights plus the fixed metric
keys of :mod:`privacy.wire`. :func:`evaluate_round` answers with the model's sums and
counts over the site's held-out customers. The ClientApp only dispatches to these.

The privacy gate: the noise multiplier σ is calibrated once for the site's whole planned
training (:func:`privacy.planning.plan_dp`) and the round's segment is reserved in the
site's ledger (``<ledger dir>/privacy-ledger.sqlite``) before training; a round that
would overspend, or a ledger that cannot be trusted, becomes a decline reply (error code
``DECLINED_BUDGET_EXHAUSTED``) and the server carries on without the site.
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

from clients.site_data import SiteLocation, load_orders, locate_site, storefront_of
from models.registry import FederatedModel, SiteData, get_model
from models.training import LocalTraining, TrainingSettings
from privacy import wire
from privacy.accountants import DEFAULT_ACCOUNTANT
from privacy.ledger import LEDGER_FILE, BudgetExceeded, LedgerError, PrivacyLedger, Reservation
from privacy.planning import DPPlan, plan_dp


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
                accountant=plan.accountant,
                server_round=server_round,
            )
    except (BudgetExceeded, LedgerError) as err:
        return _budget_error(str(err))


def decline(msg: Message, error: Error) -> Message:
    """The reply of a site that does not train this round."""
    return Message(error, reply_to=msg)


@dataclass(frozen=True)
class TrainingPlan:
    """The local training the server asked for in a train message's config."""

    model: str
    settings: TrainingSettings
    epsilon_budget: float
    accountant: str
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
        """Read the plan from the train config (keys in :mod:`privacy.wire`)."""
        return cls(
            model=str(config[wire.MODEL]),
            settings=TrainingSettings.from_config(config, defaults=None),
            epsilon_budget=float(config[wire.EPSILON_BUDGET]),
            accountant=str(config.get(wire.ACCOUNTANT, DEFAULT_ACCOUNTANT)),
            planned_rounds=int(config[wire.PLANNED_ROUNDS]),
            server_round=int(config[wire.SERVER_ROUND]),
            proximal_mu=float(config.get(wire.PROXIMAL_MU, 0.0)),
        )


def train_round(msg: Message, context: Context) -> Message:
    """A site's whole answer to a train message (see the module docstring)."""
    plan = TrainingPlan.from_config(msg.content[wire.CONFIG])
    model = get_model(plan.model)
    facts = shared_facts(msg, model)
    location = locate_site(context.node_config, context.run_config)
    data, storefront = prepared_data(location, model, facts)
    n_customers = len(data.train)
    if n_customers == 0:
        return _no_data(msg, plan.model, storefront)

    noise_multiplier, reservation, dp_plan = None, None, None
    if plan.private:
        try:
            dp_plan = plan_dp(
                n_customers=n_customers,
                batch_size=plan.settings.batch_size,
                local_epochs=plan.settings.local_epochs,
                planned_rounds=plan.planned_rounds,
                epsilon_budget=plan.epsilon_budget,
                accountant=plan.accountant,
            )
        except ValueError as err:  # no σ reaches the budget at this site's size
            return decline(msg, _budget_error(str(err)))
        reservation = reserve_round(
            location.ledger_dir,
            plan.model,
            dp_plan,
            max_grad_norm=plan.settings.max_grad_norm,
            server_round=plan.server_round,
        )
        if isinstance(reservation, Error):
            return decline(msg, reservation)
        noise_multiplier = dp_plan.noise_multiplier

    module = _global_module(model, facts, msg)
    local = LocalTraining(
        settings=plan.settings,
        proximal_mu=plan.proximal_mu,
        noise_multiplier=noise_multiplier,
        seed=_simulation_seed(context, plan.server_round) if location.simulated else None,
    )
    result = model.train(module, data.train, local)

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
    wire.check_keys(f"{plan.model} train reply", metrics, wire.TRAIN_METRIC_KEYS)
    return site_reply(
        msg,
        storefront,
        metrics,
        {wire.ARRAYS: ArrayRecord(_plain_weights(module))},
    )


def evaluate_round(msg: Message, context: Context) -> Message:
    """Evaluate the global model on the site's held-out customers: sums and counts only."""
    model = get_model(str(msg.content[wire.CONFIG][wire.MODEL]))
    facts = shared_facts(msg, model)
    location = locate_site(context.node_config, context.run_config)
    data, storefront = prepared_data(location, model, facts)
    module = _global_module(model, facts, msg)
    module.eval()
    with torch.no_grad():
        metrics = model.evaluate(module, data.evaluation)
    # A model bug must not put undocumented values on the wire.
    wire.check_keys(f"{model.name} evaluate reply", metrics, model.evaluate_metric_keys)
    return site_reply(msg, storefront, metrics, {})


def shared_facts(msg: Message, model: FederatedModel) -> dict[str, Any]:
    """The model's shared facts the message carries (:data:`privacy.wire.FACTS`).

    Raises:
        ValueError: a fact the model needs is missing.
    """
    record = msg.content.config_records.get(wire.FACTS)
    facts = dict(record) if record is not None else {}
    missing = [key for key in model.shared_fact_keys if key not in facts]
    if missing:
        raise ValueError(f"the {model.name} message lacks the shared facts {missing}")
    return {key: facts[key] for key in model.shared_fact_keys}


def prepared_data(
    location: SiteLocation, model: FederatedModel, facts: dict[str, Any]
) -> tuple[SiteData, str]:
    """The site's data for ``model`` and its storefront name, cached per data version.

    A simulation serves many messages from one process, so the split is built once; a
    changed file (new export) has a new modification time, and changed shared facts (a
    new catalogue or cutoff) are a new key, so either is read again.
    """
    path = location.orders_file
    version = path.stat().st_mtime_ns if path.is_file() else 0
    key = tuple((name, _hashable(value)) for name, value in sorted(facts.items()))
    return _prepared_data(location, model.name, version, key)


@lru_cache(maxsize=4)
def _prepared_data(
    location: SiteLocation, model: str, version: int, facts: tuple[tuple[str, Any], ...]
) -> tuple[SiteData, str]:
    del version  # part of the cache key only
    orders = load_orders(location)
    data = get_model(model).site_data(orders, {key: value for key, value in facts})
    return data, storefront_of(location, orders)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _global_module(model: FederatedModel, facts: dict[str, Any], msg: Message) -> nn.Module:
    """A fresh module of ``model`` holding the global weights the message carries."""
    module = model.build(facts)
    module.load_state_dict(msg.content[wire.ARRAYS].to_torch_state_dict(), strict=True)
    return module


def site_reply(
    msg: Message, storefront: str, metrics: dict[str, Any], records: dict[str, Any]
) -> Message:
    """A site's reply to ``msg``: ``records``, the metrics and the ``site`` record."""
    content = RecordDict(
        {
            **records,
            wire.METRICS: MetricRecord(metrics),
            wire.SITE: ConfigRecord({wire.STOREFRONT: storefront}),
        }
    )
    return Message(content, reply_to=msg)


def _budget_error(detail: str) -> Error:
    reason = wire.DECLINE_REASONS[wire.DECLINED_BUDGET_EXHAUSTED]
    return Error(wire.DECLINED_BUDGET_EXHAUSTED, f"{reason}: {detail}")


def _no_data(msg: Message, model: str, storefront: str) -> Message:
    reason = wire.DECLINE_REASONS[wire.DECLINED_NO_DATA]
    detail = f"{reason}: {storefront} has no training customers for {model}"
    return decline(msg, Error(wire.DECLINED_NO_DATA, detail))


def _plain_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def _simulation_seed(context: Context, server_round: int) -> int:
    """Reproducible simulations: one seed per (simulated site, round)."""
    return 1000 * server_round + int(context.node_config["partition-id"])
