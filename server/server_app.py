"""The fedshop ServerApp: trains each requested model federatedly, resumably, and exports it.

Models are trained one after the other (``models = "churn,recommender"``), each by its
own screened strategy (:mod:`server.strategy`) for ``num-server-rounds`` rounds. After
every round the app writes a checkpoint (:mod:`server.checkpoint`) and the run's
per-round log ``rounds.jsonl``; started again with the same ``run-dir`` it continues
at the next round of the model it was training. At the end it exports the model
bundle (:mod:`server.bundle`).

Each model has its own local-training settings (optimizer, learning rate, batch size,
clipping norm, local epochs) in its run-config table, ``[tool.flwr.app.config.<model>]``
(:func:`model_training_plan`): DP-SGD's best settings differ a lot between the
recommender's thousands of item biases and the churn model's 89 weights.

What each model needs on the server (initial weights, evaluation pooling, bundle
artefacts) is a :class:`ModelSpec` in :data:`MODEL_SPECS`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from clients import messages as wire
from models.churn import LOG_FEATURE_MEAN, LOG_FEATURE_STD, ChurnModel
from models.churn_protocol import FEATURES
from models.nextbasket_features import FEATURE_NAMES
from models.optimizers import OPTIMIZERS
from models.recommender import NextBasketRecommender
from privacy.atomic_files import atomic_write
from server.bundle import export_bundle
from server.checkpoint import Checkpoint, ModelProgress, latest_checkpoint, save_checkpoint
from server.evaluation import EVALUATION_AGGREGATORS
from server.secure_aggregation import SecureAggregationSettings, start_secure_aggregation
from server.shared_facts import catalogue_items, churn_cutoff_for
from server.strategy import StrategySettings, ValidatedAggregation, build_strategy

ROUNDS_LOG = "rounds.jsonl"
RESOLVED_CONFIG = "config.json"


@dataclass(frozen=True)
class ModelSpec:
    """What the server needs to know about one model."""

    initial_weights: Callable[[dict[str, Any]], dict[str, np.ndarray]]
    """Fresh global weights from the run config (same seed -> same weights)."""
    aggregate_evaluation: Callable[[list[RecordDict], str], MetricRecord]
    """Pools the sites' evaluation replies into overall and per-storefront metrics."""
    artefacts: Callable[[dict[str, Any]], dict[str, Any]]
    """JSON-serialisable artefacts for the bundle (vocabulary, scaling constants)."""
    message_config: Callable[[dict[str, Any]], dict[str, Any]] = lambda run_config: {}
    """Extra config entries every train and evaluate message of the model carries."""


def _recommender_weights(run_config: dict[str, Any]) -> dict[str, np.ndarray]:
    torch.manual_seed(0)  # same run config, same initial weights
    model = NextBasketRecommender(len(catalogue_items(run_config)))
    return {name: value.numpy() for name, value in model.state_dict().items()}


def _churn_weights(run_config: dict[str, Any]) -> dict[str, np.ndarray]:
    del run_config
    torch.manual_seed(0)
    return {name: value.numpy() for name, value in ChurnModel().state_dict().items()}


MODEL_SPECS: dict[str, ModelSpec] = {
    "churn": ModelSpec(
        initial_weights=_churn_weights,
        aggregate_evaluation=EVALUATION_AGGREGATORS["churn"],
        artefacts=lambda run_config: {
            "features": list(FEATURES),
            "log-feature-mean": list(LOG_FEATURE_MEAN),
            "log-feature-std": list(LOG_FEATURE_STD),
            "churn-cutoff": churn_cutoff_for(run_config),
        },
        message_config=lambda run_config: {wire.CHURN_CUTOFF: churn_cutoff_for(run_config)},
    ),
    "recommender": ModelSpec(
        initial_weights=_recommender_weights,
        aggregate_evaluation=EVALUATION_AGGREGATORS["recommender"],
        artefacts=lambda run_config: {
            "item-vocabulary": catalogue_items(run_config),
            "personal-features": list(FEATURE_NAMES),
        },
        message_config=lambda run_config: {wire.CATALOGUE: catalogue_items(run_config)},
    ),
}


def requested_models(run_config: dict[str, Any], specs: dict[str, ModelSpec]) -> list[str]:
    """The models named in the ``models`` run-config key, validated, in order."""
    names = [n.strip() for n in str(run_config.get("models", "churn")).split(",") if n.strip()]
    unknown = [n for n in names if n not in specs]
    if not names or unknown:
        raise ValueError(f"run config 'models' must name some of {sorted(specs)}, got {names}")
    return names


def model_training_plan(run_config: dict[str, Any], model: str) -> dict[str, Any]:
    """The model's local-training keys (:data:`clients.messages.MODEL_TRAINING_KEYS`), read
    from its run-config table (``<model>.<key>``) and checked before any site sees them."""
    plan = {}
    for key in wire.MODEL_TRAINING_KEYS:
        name = f"{model}.{key}"
        if name not in run_config:
            raise ValueError(f"run config lacks '{name}' ([tool.flwr.app.config.{model}])")
        plan[key] = run_config[name]
    if plan[wire.OPTIMIZER] not in OPTIMIZERS:
        raise ValueError(
            f"run config '{model}.{wire.OPTIMIZER}' must be one of {sorted(OPTIMIZERS)}, "
            f"got {plan[wire.OPTIMIZER]!r}"
        )
    for key in (wire.LOCAL_EPOCHS, wire.BATCH_SIZE, wire.LEARNING_RATE, wire.MAX_GRAD_NORM):
        if not (isinstance(plan[key], int | float) and plan[key] > 0):
            raise ValueError(f"run config '{model}.{key}' must be > 0, got {plan[key]!r}")
    return plan


def message_configs(
    run_config: dict[str, Any], model: str, spec: ModelSpec
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config of the model's evaluate messages (model name and shared facts) and of
    its train messages (that, the training plan, the ε budget and the planned rounds)."""
    evaluate_config = {wire.MODEL: model, **spec.message_config(run_config)}
    train_config = {
        **model_training_plan(run_config, model),
        wire.EPSILON_BUDGET: float(run_config.get(wire.EPSILON_BUDGET, 0.0)),
        **evaluate_config,
        wire.PLANNED_ROUNDS: int(run_config.get("num-server-rounds", 3)),
    }
    return evaluate_config, train_config


def run_federation(
    grid: Grid, run_config: dict[str, Any], specs: dict[str, ModelSpec] | None = None
) -> Checkpoint:
    """Train every requested model to ``num-server-rounds``, resuming from ``run-dir``."""
    specs = MODEL_SPECS if specs is None else specs
    run_dir = Path(str(run_config.get("run-dir", "runs/latest"))).resolve()
    total_rounds = int(run_config.get("num-server-rounds", 3))
    models = requested_models(run_config, specs)
    settings = StrategySettings.from_run_config(run_config)
    secure = SecureAggregationSettings.from_run_config(run_config)
    for model in models:  # a bad training plan stops the run before any round
        model_training_plan(run_config, model)
    _write_json(run_dir / RESOLVED_CONFIG, dict(run_config))

    checkpoint = latest_checkpoint(run_dir) or Checkpoint({}, [], dict(run_config))
    if checkpoint.sequence:
        log(INFO, "Resuming from checkpoint: rounds done %s", _rounds_done(checkpoint))
    for model in models:
        done = checkpoint.rounds_done(model)
        if done >= total_rounds:
            continue
        strategy = build_strategy(settings, specs[model].aggregate_evaluation)
        strategy.round_offset = done
        if model in checkpoint.models:
            weights = checkpoint.models[model].weights
            strategy.load_optimizer_state(checkpoint.models[model].optimizer_state)
        else:
            weights = specs[model].initial_weights(run_config)
        evaluate_config, train_config = message_configs(run_config, model, specs[model])

        start = strategy.start
        if secure.enabled:  # same rounds, but the server sees only the sum of the updates
            start = partial(start_secure_aggregation, secure, strategy)
        start(
            grid=grid,
            initial_arrays=ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()}),
            num_rounds=total_rounds - done,
            timeout=float(run_config.get("round-timeout", 3600.0)),
            train_config=ConfigRecord(train_config),
            evaluate_config=ConfigRecord(evaluate_config),
            evaluate_fn=checkpoint_hook(strategy, model, checkpoint, run_dir),
        )

    export_bundle(
        run_dir,
        {m: checkpoint.models[m].weights for m in models},
        rounds_done=_rounds_done(checkpoint),
        privacy=site_privacy(checkpoint.round_records),
        run_config=dict(run_config),
        artefacts={m: specs[m].artefacts(run_config) for m in models},
    )
    return checkpoint


def checkpoint_hook(
    strategy: ValidatedAggregation, model: str, checkpoint: Checkpoint, run_dir: Path
) -> Callable[[int, ArrayRecord], None]:
    """The ``evaluate_fn`` Flower calls after each round: record it and checkpoint."""

    def end_of_round(server_round: int, arrays: ArrayRecord) -> None:
        if server_round == 0:  # Flower's call before the first round
            return
        absolute_round = strategy.round_offset + server_round
        report = strategy.round_reports.get(absolute_round)
        record = {"model": model, "round": absolute_round, **(report.to_json() if report else {})}
        checkpoint.round_records.append(record)
        checkpoint.models[model] = ModelProgress(
            absolute_round, {k: v.numpy() for k, v in arrays.items()}, strategy.optimizer_state()
        )
        save_checkpoint(run_dir, checkpoint)
        _write_rounds_log(run_dir / ROUNDS_LOG, checkpoint.round_records)
        log(INFO, "Checkpointed %s after round %d", model, absolute_round)

    return end_of_round


def site_privacy(round_records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and storefront, the privacy numbers the site last reported."""
    privacy: dict[str, dict[str, dict[str, float]]] = {}
    for record in round_records:
        privacy.setdefault(record["model"], {}).update(record.get("privacy", {}))
    return privacy


def _rounds_done(checkpoint: Checkpoint) -> dict[str, int]:
    return {model: progress.rounds_done for model, progress in checkpoint.models.items()}


def _write_rounds_log(path: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite the JSON-lines round log from the checkpointed records (atomically)."""
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(payload, indent=2, sort_keys=True))


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config."""
    # Opacus (imported by model code) adds a root log handler; keep flwr's lines single.
    logging.getLogger("flwr").propagate = False
    run_federation(grid, dict(context.run_config))
