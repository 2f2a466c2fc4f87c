"""Federated averaging in one process over the sites' own code: the cost reference.

:func:`run_sequential_federation` does for each model what a simulated federation does —
the server's initial weights, training plan and message config
(:func:`server.server_app.plan_models`),
every site's real train and evaluate answers (:func:`clients.site_task.train_round` and
:func:`clients.site_task.evaluate_round`, DP planning, releases and privacy ledgers
included, evaluating as the run config's ``evaluation-rounds`` says),
the update encoding of the run config (:func:`server.strategy.training_arrays`,
:func:`~server.strategy.trained_weights`), weighted FedAvg of the replies and the
server's pooled evaluation, and then the final weights' exact metrics
(:mod:`simulations.exact_evaluation`) — but site after site
in the calling process: no SuperLink, no Ray workers, no messages between processes.

It is the denominator of the federation-cost benchmark
(``python -m lab.benchmarks.federation_cost``) and a quick loop for tuning. It
does not screen updates, checkpoint or write a run directory: those are the server's
work, not local training.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.app.metadata import Metadata
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from clients.site_task import evaluate_round, train_round
from common import wire
from models.training import simulation_seed
from server.evaluation import evaluation_aggregator
from server.server_app import plan_models
from server.strategy import StrategySettings, trained_weights, training_arrays
from simulations.exact_evaluation import exact_metrics
from simulations.progress import SILENT, Progress
from simulations.runner import app_run_config, storefront_slugs
from simulations.shared_facts import with_split_facts


@dataclass
class SequentialResult:
    """What :func:`run_sequential_federation` measured."""

    seconds: float
    """Wall time of the whole training and evaluation."""
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per model, the pooled evaluation (estimates from the sites' noisy answers, same keys
    as the server's) after each evaluated round (``evaluation-rounds``)."""
    exact: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model, the final weights' exact metrics on every storefront's held-out customers
    (:func:`simulations.exact_evaluation.exact_metrics`)."""
    declined: dict[str, list[str]] = field(default_factory=dict)
    """Per model, ``"<round>: <reason>"`` of every declined or failed site reply."""
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Per model, the global weights after the last round (a ``state_dict`` as arrays)."""


def run_sequential_federation(
    storefronts_dir: Path,
    run_dir: Path,
    run_config: Mapping[str, Any],
    *,
    progress: Progress = SILENT,
) -> SequentialResult:
    """Train the run config's models on every storefront of the split, in this process.

    Args:
        storefronts_dir: a split written by :mod:`simulations.storefronts`.
        run_dir: where the simulated sites keep their privacy ledgers.
        run_config: overrides of the app's ``[tool.flwr.app.config]``.
    """
    config = {
        **app_run_config(),
        **run_config,
        "storefronts-dir": str(Path(storefronts_dir).resolve()),
        "run-dir": str(Path(run_dir).resolve()),
    }
    slugs = storefront_slugs(Path(storefronts_dir))
    contexts = [
        Context(0, node, {"partition-id": node, "num-partitions": len(slugs)}, RecordDict(), config)
        for node in range(len(slugs))
    ]
    rounds = int(config["num-server-rounds"])
    result = SequentialResult(seconds=0.0)
    started = time.perf_counter()
    settings = StrategySettings.from_run_config(config)
    encoding = settings.update_encoding
    for run in plan_models(with_split_facts(config)):
        model = run.model.name
        pool = evaluation_aggregator(run.model)
        initial = run.model.initial_weights(run.facts, simulation_seed(config))
        arrays = ArrayRecord({k: Array(v) for k, v in initial.items()})
        result.metrics[model], result.declined[model] = [], []
        for server_round in range(1, rounds + 1):
            with progress.step(f"{model} round {server_round}/{rounds}"):
                round_config = {
                    **run.train_config,
                    wire.SERVER_ROUND: server_round,
                    wire.UPDATE_ENCODING: encoding,
                }
                global_weights = {name: array.numpy() for name, array in arrays.items()}
                sent = run.content(training_arrays(global_weights, encoding), round_config)
                replies = _ask_sites(contexts, "train", sent)
                trained = [
                    _with_weights(reply.content, global_weights, encoding)
                    for reply in replies
                    if not reply.has_error()
                ]
                result.declined[model] += [
                    f"{server_round}: {reply.error.reason}"
                    for reply in replies
                    if reply.has_error()
                ]
                if trained:
                    arrays = aggregate_arrayrecords(trained, wire.NUM_EXAMPLES)
                if settings.evaluation_rounds == "last" and server_round < rounds:
                    continue
                evaluations = _ask_sites(
                    contexts, "evaluate", run.content(arrays, run.evaluate_config)
                )
                # refusals (e.g. an evaluation below a site's minimum cohort) are left out
                pooled = pool([r.content for r in evaluations if not r.has_error()], "")
                result.metrics[model].append(dict(pooled))
        result.weights[model] = {name: array.numpy() for name, array in arrays.items()}
        result.exact[model] = exact_metrics(
            Path(storefronts_dir), model, result.weights[model], run.facts
        )
    result.seconds = time.perf_counter() - started
    return result


def _with_weights(
    content: RecordDict, global_weights: dict[str, np.ndarray], encoding: str
) -> RecordDict:
    """A train reply's content holding the site's trained weights, as the server reads them."""
    arrays = {name: array.numpy() for name, array in content[wire.ARRAYS].items()}
    weights = trained_weights(arrays, global_weights, encoding)
    content[wire.ARRAYS] = ArrayRecord({name: Array(value) for name, value in weights.items()})
    return content


def _ask_sites(contexts: list[Context], kind: str, content: RecordDict) -> list[Message]:
    answer = train_round if kind == "train" else evaluate_round
    return [answer(server_message(content, kind, context.node_id), context) for context in contexts]


def server_message(content: RecordDict, kind: str, node_id: int) -> Message:
    """A server message as a site receives it (metadata filled in as the runtime would)."""
    metadata = Metadata(
        run_id=0,
        message_id=f"{kind}-{node_id}-{time.monotonic_ns()}",
        src_node_id=0,
        dst_node_id=node_id,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=kind,
    )
    return Message(content=content, metadata=metadata)
