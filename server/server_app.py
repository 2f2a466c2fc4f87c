"""The fedshop ServerApp: trains each requested model federatedly, resumably, and exports it.

Models are trained one after the other (``models = "churn,recommender"``), each by its
own screened strategy (:mod:`server.strategy`) for ``num-server-rounds`` rounds. After
every round the app writes a checkpoint (:mod:`server.checkpoint`) and the run's
per-round log ``rounds.jsonl``; started again with the same ``run-dir`` it continues
at the next round of the model it was training. At the end it exports the model
bundle (:mod:`server.bundle`), the privacy report from the sites' reports
(:mod:`server.privacy_report`) and ``report.html`` (:mod:`server.report`), and delivers
the bundle to every site (:mod:`server.delivery`).

Models are found by name in the registry (:mod:`models.registry`): each says what it
needs on the server — its shared facts, initial weights, how its evaluation sums pool,
its bundle artefacts — and has its own local-training settings: those chosen on validation
for the run's ε (``models/<model>/settings-per-epsilon.json``, :func:`with_validated_settings`)
wherever its run-config table ``[tool.flwr.app.config.<model>]`` leaves one empty, the
table's value where it sets one (:func:`model_training_plan`). A deployment
(``fedshop-server submit``) and a simulation therefore train the same settings at the
same ε, and ``config.json`` says which entry each model's came from. DP-SGD's best
settings differ a lot between the recommender's thousands of item biases and the churn
model's 89 weights, and with ε.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from common import wire
from common.atomic_files import atomic_write
from common.wire_encoding import FLOAT32
from models.registry import BUILTIN_MODELS, FederatedModel, get_model, model_names
from models.settings_per_epsilon import (
    FEDERATED_MODE,
    federated_run_config,
    settings_epsilon,
    validation_record,
)
from models.training import TrainingSettings, simulation_seed
from server import progress
from server.bundle import export_bundle
from server.checkpoint import Checkpoint, ModelProgress, latest_checkpoint, save_checkpoint
from server.delivery import deliver_bundle
from server.evaluation import evaluation_aggregator
from server.run_files import RESOLVED_CONFIG, ROUNDS_LOG, VALIDATED_SETTINGS
from server.secure_aggregation import SecureAggregationSettings, start_secure_aggregation
from server.shared_facts import shared_facts
from server.strategy import (
    StrategySettings,
    ValidatedAggregation,
    build_strategy,
    planned_evaluations,
)


def model_training_plan(run_config: dict[str, Any], model: FederatedModel) -> TrainingSettings:
    """The model's local-training settings: its run-config table (``<model>.<key>``, after
    :func:`with_validated_settings`) over its defaults, checked before any site sees them.

    Raises:
        ValueError: a value is invalid; the message names the run-config key.
    """
    return TrainingSettings.from_config(
        run_config, prefix=f"{model.name}.", defaults=model.default_training
    )


def with_validated_settings(run_config: dict[str, Any]) -> dict[str, Any]:
    """``run_config`` with every setting its models' tables leave empty filled from the
    settings chosen on validation for the run's ε (:mod:`models.settings_per_epsilon`: the
    federated entry of the nearest ε, the non-private one without DP) — the one source a
    simulation and a deployment both train with. A model without an entry (a plug-in)
    keeps its defaults; a value the run config sets stays.

    Raises:
        ValueError: the settings file cannot be read.
    """
    epsilon = settings_epsilon(float(run_config.get(wire.EPSILON_BUDGET, 0.0)))
    names = model_names(run_config.get("models", ",".join(BUILTIN_MODELS)))
    resolved = dict(run_config)
    for key, value in federated_run_config(names, epsilon).items():
        if str(resolved.get(key, "")).strip() == "":
            resolved[key] = value
    return resolved


def validated_settings_record(run_config: dict[str, Any]) -> dict[str, Any]:
    """Per model, which entry of the settings file the run trains with (its ε, the split
    it was chosen on, its validation score; ``--set`` where the run config replaced it)."""
    epsilon = settings_epsilon(float(run_config.get(wire.EPSILON_BUDGET, 0.0)))
    names = model_names(run_config.get("models", ",".join(BUILTIN_MODELS)))
    tuned = federated_run_config(names, epsilon)
    overrides = {k: v for k, v in run_config.items() if k in tuned and str(v).strip() != ""}
    return {name: validation_record(name, FEDERATED_MODE, epsilon, overrides) for name in names}


def message_configs(
    run_config: dict[str, Any], model: FederatedModel
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config of the model's evaluate messages (the model's name, the evaluations the
    run plans and the ε the server asks for) and of its train messages (those, the training
    plan and the planned rounds). The shared facts travel in their own record
    (:data:`common.wire.FACTS`)."""
    rounds = int(run_config.get("num-server-rounds", 3))
    evaluations = planned_evaluations(str(run_config.get("evaluation-rounds", "last")), rounds)
    if float(run_config.get("fraction-evaluate", 1.0)) <= 0:
        evaluations = 0  # no evaluation: the sites keep its ε for training
    evaluate_config = {
        wire.MODEL: model.name,
        wire.PLANNED_EVALUATIONS: evaluations,
        wire.EPSILON_BUDGET: float(run_config.get(wire.EPSILON_BUDGET, 0.0)),
    }
    train_config = {
        **model_training_plan(run_config, model).to_config(),
        **evaluate_config,
        wire.PLANNED_ROUNDS: rounds,
    }
    return evaluate_config, train_config


@dataclass(frozen=True)
class ModelRun:
    """One requested model of a run, with everything its messages carry."""

    model: FederatedModel
    facts: dict[str, Any]
    evaluate_config: dict[str, Any]
    train_config: dict[str, Any]

    def content(self, arrays: ArrayRecord, config: dict[str, Any]) -> RecordDict:
        """A train or evaluate message's content: weights, ``config`` and the facts."""
        return RecordDict(
            {
                wire.ARRAYS: arrays,
                wire.CONFIG: ConfigRecord(config),
                wire.FACTS: ConfigRecord(self.facts),
            }
        )


def plan_models(run_config: dict[str, Any]) -> list[ModelRun]:
    """Every model the run config's ``models`` names, its shared facts and message configs,
    in training order. Everything is checked here, before any round.

    Raises:
        ValueError: an unknown model, a bad training plan, a fact that can be neither read
            nor derived, or a bad ``simulation-seed``.
    """
    simulation_seed(run_config)
    run_config = with_validated_settings(run_config)
    runs = []
    for name in model_names(run_config.get("models", ",".join(BUILTIN_MODELS))):
        model = get_model(name)
        facts = shared_facts(run_config, model)
        runs.append(ModelRun(model, facts, *message_configs(run_config, model)))
    return runs


def run_federation(grid: Grid, run_config: dict[str, Any]) -> Checkpoint:
    """Train every requested model to ``num-server-rounds``, resuming from ``run-dir``."""
    run_dir = Path(str(run_config.get("run-dir", "runs/latest"))).resolve()
    total_rounds = int(run_config.get("num-server-rounds", 3))
    settings = StrategySettings.from_run_config(run_config)
    secure = SecureAggregationSettings.from_run_config(run_config)
    if secure.enabled:  # SecAgg+ quantises each update its own way, before masking
        settings = replace(settings, update_encoding=FLOAT32)
    planned = plan_models(run_config)
    resolved = {
        **with_validated_settings(run_config),
        VALIDATED_SETTINGS: validated_settings_record(run_config),
    }
    _write_json(run_dir / RESOLVED_CONFIG, resolved)

    checkpoint = latest_checkpoint(run_dir) or Checkpoint({}, [], dict(run_config))
    if checkpoint.sequence:
        log(INFO, "Resuming from checkpoint: rounds done %s", _rounds_done(checkpoint))
    for run in planned:
        model = run.model
        done = checkpoint.rounds_done(model.name)
        if done >= total_rounds:
            continue
        strategy = build_strategy(settings, evaluation_aggregator(model))
        strategy.round_offset = done
        strategy.share_facts(run.facts)
        strategy.model_name, strategy.total_rounds = model.name, total_rounds
        if model.name in checkpoint.models:
            weights = checkpoint.models[model.name].weights
            strategy.load_optimizer_state(checkpoint.models[model.name].optimizer_state)
        else:
            weights = model.initial_weights(run.facts, simulation_seed(run_config))

        start = strategy.start
        if secure.enabled:  # same rounds, but the server sees only the sum of the updates
            start = partial(start_secure_aggregation, secure, strategy)
        start(
            grid=grid,
            initial_arrays=ArrayRecord({k: Array(np.asarray(v)) for k, v in weights.items()}),
            num_rounds=total_rounds - done,
            timeout=float(run_config.get("round-timeout", 3600.0)),
            train_config=ConfigRecord(run.train_config),
            evaluate_config=ConfigRecord(run.evaluate_config),
            evaluate_fn=checkpoint_hook(strategy, model, checkpoint, run_dir),
        )

    bundle = export_bundle(
        run_dir,
        {run.model.name: checkpoint.models[run.model.name].weights for run in planned},
        rounds_done=_rounds_done(checkpoint),
        privacy=site_privacy(checkpoint.round_records),
        run_config=dict(run_config),
        artefacts={run.model.name: run.model.artefacts(run.facts) for run in planned},
    )
    write_run_reports(run_dir, checkpoint.round_records)
    deliver_bundle(grid, bundle, run_dir, timeout=float(run_config.get("round-timeout", 3600.0)))
    return checkpoint


def write_run_reports(run_dir: Path, round_records: list[dict[str, Any]]) -> None:
    """``privacy_report.json`` from the sites' reports and ``report.html``: what the central
    team reads of a run. A report that cannot be built is logged; the run has succeeded."""
    # Imported here: the report draws with matplotlib, which rounds do not need.
    from server.privacy_report import reported_privacy, write_privacy_report
    from server.report import write_report

    try:
        write_privacy_report(run_dir, reported_privacy(round_records), round_records)
        write_report(run_dir)
    except Exception as error:  # the model is trained and exported; only the report failed
        log(WARNING, "Could not write the run's reports in %s: %s", run_dir, error)


def checkpoint_hook(
    strategy: ValidatedAggregation, model: FederatedModel, checkpoint: Checkpoint, run_dir: Path
) -> Callable[[int, ArrayRecord], None]:
    """The ``evaluate_fn`` Flower calls after each round: record it, checkpoint, and report
    the round's progress line."""

    def end_of_round(server_round: int, arrays: ArrayRecord) -> None:
        if server_round == 0:  # Flower's call before the first round
            return
        absolute_round = strategy.round_offset + server_round
        report = strategy.round_reports.get(absolute_round)
        record = {
            "model": model.name,
            "round": absolute_round,
            **(report.to_json() if report else {}),
        }
        checkpoint.round_records.append(record)
        checkpoint.models[model.name] = ModelProgress(
            absolute_round, {k: v.numpy() for k, v in arrays.items()}, strategy.optimizer_state()
        )
        save_checkpoint(run_dir, checkpoint)
        _write_rounds_log(run_dir / ROUNDS_LOG, checkpoint.round_records)
        log(INFO, "Checkpointed %s after round %d", model.name, absolute_round)
        progress.report(
            progress.round_finished(
                model.name, strategy.total_rounds, model.headline_metric, record
            )
        )

    return end_of_round


def site_privacy(round_records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per model and storefront, the privacy numbers the site last reported (each number
    from the latest reply that carried it: a train reply, or an evaluate reply after it)."""
    privacy: dict[str, dict[str, dict[str, float]]] = {}
    for record in round_records:
        model = privacy.setdefault(record["model"], {})
        for storefront, reported in record.get("privacy", {}).items():
            model[storefront] = {**model.get(storefront, {}), **reported}
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
