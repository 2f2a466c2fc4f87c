"""Benchmark: the federation's run-level settings, rounds and server optimiser, on
validation only (issue #12).

Run ``python -m lab.benchmarks.federated_choices``; it prints a Markdown section for
BENCHMARKS.md. Each model federates over its storefronts' validation data
(:func:`lab.tuning.validation_storefronts`: each site's orders without its test
invoices, or up to the test cutoff; the test split is never read) with DP at each ε and
that ε's federated entry of the settings file, the sites keeping their default policy:

- **rounds**: the sequential federation (:func:`lab.sequential.run_sequential_federation`:
  the sites' own code, DP planning and ledgers, FedAvg) with each ``--rounds`` value, once
  per ``--seeds`` value (the run's ``simulation-seed``); every site calibrates σ for the
  whole run, so more rounds mean more, noisier steps at the same ε;
- **server optimiser**: real ``flwr run`` simulations
  (:func:`simulations.runner.run_simulation_job`: the ServerApp's own strategies) of FedAvg
  and of FedAdam at each ``--server-learning-rates`` value, at the main job's rounds and
  ``--optimiser-epsilon``, once per ``--optimiser-seeds`` value.

Each row is the headline validation metric after the last round (NDCG@10, ROC-AUC): the
mean over seeds and its range.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lab.compare import ingest_bundled
from lab.sequential import run_sequential_federation
from lab.tuning import FEDERATED_ROUNDS, validation_run_config, validation_storefronts
from models import metrics
from models.registry import get_model
from models.settings_per_epsilon import FEDERATED_MODE, settings_for
from server.run_results import load_run
from simulations.reference_runs import final_rows
from simulations.runner import run_simulation_job
from simulations.storefronts import assign_storefronts

MODELS = ("recommender", "churn")

RunFederation = Callable[[Path, Path, dict[str, Any]], float]
"""Runs one federation (split, run directory, run config) and returns the model's
validation metric after its last round."""


def sequential_score(model: str) -> RunFederation:
    """One sequential federation of ``model``: its pooled metric after the last round."""
    metric = get_model(model).headline_metric

    def run(split_dir: Path, run_dir: Path, run_config: dict[str, Any]) -> float:
        result = run_sequential_federation(split_dir, run_dir, run_config)
        return float(result.metrics[model][-1][metric])

    return run


def simulated_score(model: str) -> RunFederation:
    """One ``flwr run`` simulation of ``model``: its pooled metric after the last round."""
    metric = get_model(model).headline_metric

    def run(split_dir: Path, run_dir: Path, run_config: dict[str, Any]) -> float:
        run_simulation_job(split_dir, run_dir, run_config=run_config)
        final = final_rows(load_run(run_dir).scored(model), model)
        return float(final[metrics.OVERALL][metric])

    return run


def measure(
    model: str,
    epsilon: float,
    variant: dict[str, Any],
    seeds: Sequence[int],
    split: tuple[Path, dict[str, Any]],
    work: Path,
    federate: RunFederation,
) -> list[float]:
    """The metric of one variant (run-config keys over the ε's settings) per seed."""
    split_dir, facts = split
    tuned = settings_for(model, FEDERATED_MODE, epsilon).run_config()
    scores = []
    for seed in seeds:
        run_config = validation_run_config(model, epsilon, seed, facts, tuned, variant)
        chosen = "-".join(f"{key}={value}" for key, value in variant.items()) or "current"
        run_dir = work / f"{model}-eps{epsilon:g}-{chosen}-seed{seed}"
        scores.append(federate(split_dir, run_dir, run_config))
    return scores


def markdown_row(model: str, epsilon: float, choice: str, scores: Sequence[float]) -> str:
    """One table row: mean and range over the seeds."""
    values = np.asarray(scores)
    return (
        f"| {model} | {epsilon:g} | {choice} | {values.mean():.4f} | "
        f"{values.min():.4f}–{values.max():.4f} |"
    )


def validation_section(heading: str, description: str, rows: Sequence[str], seconds: float) -> str:
    """A BENCHMARKS.md section of validation checks: heading, the ``Command:`` line and
    what ran (``description``), the table of :func:`markdown_row` rows, the total time."""
    return "\n".join(
        [
            f"## {heading}",
            "",
            description,
            "",
            "| model | ε | choice | validation (mean) | min–max over seeds |",
            "|---|---:|---|---:|---:|",
            *rows,
            "",
            f"Total time {seconds:.0f} s.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Measure every variant and print the Markdown section."""
    parser = argparse.ArgumentParser(prog="python -m lab.benchmarks.federated_choices")
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--optimiser-epsilon", type=float, default=8.0)
    parser.add_argument("--server-learning-rates", type=float, nargs="+", default=[0.1, 0.03])
    parser.add_argument("--optimiser-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    args = parser.parse_args(argv)
    command = " ".join(["python -m lab.benchmarks.federated_choices", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    frame = assign_storefronts(ingest_bundled())
    rows = []
    with tempfile.TemporaryDirectory(prefix="federated-choices-") as scratch:
        work = Path(scratch)
        for model in args.models:
            split = validation_storefronts(frame, model, work / f"{model}-validation")
            runs = work / f"{model}-runs"
            runs.mkdir()
            for epsilon in args.epsilons:
                for rounds in args.rounds:
                    choice = f"FedAvg, {rounds} rounds" + (
                        " (current)" if rounds == FEDERATED_ROUNDS else ""
                    )
                    variant = {"num-server-rounds": rounds}
                    scores = measure(
                        model, epsilon, variant, args.seeds, split, runs, sequential_score(model)
                    )
                    rows.append(markdown_row(model, epsilon, f"{choice}, sequential", scores))
                    _progress(rows[-1])
            optimisers: list[tuple[str, dict[str, Any]]] = [("FedAvg (current)", {})]
            optimisers += [
                (
                    f"FedAdam, η {rate:g}",
                    {"server-optimizer": "fedadam", "server-learning-rate": rate},
                )
                for rate in args.server_learning_rates
            ]
            for name, variant in optimisers:
                scores = measure(
                    model,
                    args.optimiser_epsilon,
                    variant,
                    args.optimiser_seeds,
                    split,
                    runs,
                    simulated_score(model),
                )
                rows.append(
                    markdown_row(
                        model,
                        args.optimiser_epsilon,
                        f"{name}, {FEDERATED_ROUNDS} rounds, flwr run",
                        scores,
                    )
                )
                _progress(rows[-1])
    description = (
        f"Command: `{command}`; bundled data, each model's validation protocol (the "
        "test split never read), DP at each ε with that ε's federated settings-file "
        f"entry; rounds: sequential federation, seeds {_list(args.seeds)}; server "
        f"optimiser: `flwr run` simulations at ε = {args.optimiser_epsilon:g}, seeds "
        f"{_list(args.optimiser_seeds)}. Metric: NDCG@10 (recommender), ROC-AUC (churn) "
        "after the last round."
    )
    heading = "Rounds and server optimiser on validation (issue #12)"
    print(validation_section(heading, description, rows, time.perf_counter() - started))
    return 0


def _list(values: Sequence[Any]) -> str:
    return ", ".join(map(str, values))


def _progress(row: str) -> None:
    print(f"[federated-choices] {row}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
