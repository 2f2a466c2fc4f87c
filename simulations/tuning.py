"""``fedshop-sim tune``: a seeded random search of a model's DP training settings at one ε,
scored on the validation protocols only.

Each trial trains the model with one draw of settings (:mod:`simulations.tuning_space`;
trial 0 is the settings file's current entry) under user-level DP at the target ε and
scores it on validation: the recommender's NDCG@10 on the second-to-last invoices
(:mod:`models.nextbasket_validation`), churn's ROC-AUC one horizon before the test cutoff
(:mod:`models.churn_validation`). The test split is never scored here: every objective
below reads only the validation protocols' data.

- ``centralized``: the pooled validation data in this process, σ calibrated for the
  whole planned training as :mod:`simulations.compare` does; a trial's score is the mean
  over ``repeats`` training seeds (weights, sampling, DP noise): on the bundled data one
  seed moves churn's validation ROC-AUC by about 0.02, as much as most setting changes;
- ``federated``: the storefronts' validation data (each site's orders without its test
  invoices, or up to the test cutoff) in the sequential federation
  (:func:`simulations.sequential.run_sequential_federation`: the sites' own code, DP
  planning and ledgers, FedAvg) for :data:`FEDERATED_ROUNDS` rounds; a fresh run
  directory per trial and seed, so every run starts with unspent site budgets. A trial's
  score is the mean over ``repeats`` runs, each with its own ``simulation-seed``.

It writes ``trials.csv`` and ``trials.md`` (every trial: settings, validation score,
seconds) and ``chosen.json`` (the best trial's entry for the settings file) into the
output directory; ``--write-settings`` records that entry in
``simulations/data/settings-per-epsilon.json``. The best trial is the highest score, the
earlier trial on a tie (so the current settings stay unless a draw beats them).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models import schema
from models.churn import evaluate_churn
from models.churn_protocol import churn_cutoff
from models.churn_validation import before_test_labels, churn_validation_data, validation_cutoff
from models.metrics import OVERALL
from models.nextbasket_features import TrainingExamples, build_histories
from models.nextbasket_validation import split_next_basket_validation, without_test_invoices
from models.recommender import evaluate_recommender
from models.registry import get_model
from models.training import SIMULATION_SEED
from privacy.atomic_files import atomic_write
from simulations.compare import centralized_dp_plan, fit_churn_dp, fit_recommender, ingest_bundled
from simulations.progress import SILENT, Progress
from simulations.run_configs import MAIN_RUN_CONFIG
from simulations.settings_per_epsilon import (
    EpsilonSettings,
    record,
    settings_for,
    target_window,
    training_settings,
)
from simulations.storefronts import assign_storefronts, prepare_storefronts, read_split
from simulations.tuning_space import draw_trials

FEDERATED_ROUNDS = int(MAIN_RUN_CONFIG["num-server-rounds"])
"""Rounds of every federated trial: the main job's."""
CHOSEN_ON: dict[str, str] = {
    "recommender": "validation (second-to-last invoice of each test customer; test invoices "
    "removed from everything the model sees)",
    "churn": "validation (cutoff 90 days before the test cutoff; no row after the test cutoff "
    "read)",
}
"""What ``chosen-on`` says of settings this command chose, per model."""
TRIALS_CSV = "trials.csv"
TRIALS_MARKDOWN = "trials.md"
CHOSEN_JSON = "chosen.json"

Objective = Callable[[int, Mapping[str, Any]], list[float]]
"""(trial number, settings in run-config spelling) -> validation score of each training
seed (higher is better)."""


@dataclass(frozen=True)
class Trial:
    """One trial: its settings, validation scores (one per training seed) and wall time."""

    number: int
    settings: dict[str, Any]
    scores: list[float]
    seconds: float

    @property
    def score(self) -> float:
        """The mean validation score over the training seeds."""
        return float(np.mean(self.scores))


@dataclass(frozen=True)
class TuningResult:
    """Every trial and the entry the best one makes for the settings file."""

    trials: list[Trial]
    chosen: EpsilonSettings


def tune(
    frame: pd.DataFrame,
    *,
    model: str,
    mode: str,
    epsilon: float,
    trials: int,
    seed: int,
    out_dir: Path,
    data: str,
    repeats: int = 1,
    progress: Progress = SILENT,
) -> TuningResult:
    """Run the search (module docstring) and write its table and chosen entry.

    Args:
        frame: order lines in the canonical schema, ``storefront`` holding each customer's
            storefront (:func:`simulations.storefronts.assign_storefronts`).
        model, mode, epsilon: what to tune (:data:`simulations.tune_options.TUNABLE_MODELS`,
            :data:`~simulations.tune_options.MODES`, target ε > 0).
        trials: how many settings to try (the current ones first).
        seed: seeds the draws and, in centralized mode, the first training seed.
        out_dir: where the table and the chosen entry go (created if missing).
        data: names the data in the chosen entry (e.g. ``bundled``).
        repeats: training seeds ``seed .. seed + repeats - 1`` per trial (federated mode:
            the runs' ``simulation-seed``).
        progress: reports each trial with its wall time.

    Raises:
        ValueError: ``repeats`` < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    seeds = list(range(seed, seed + repeats))
    current = settings_for(model, mode, epsilon)
    candidates = draw_trials(model, mode, current.settings, trials, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with progress.step(f"{model}: validation data ({mode})"):
        if mode == "centralized":
            objective = centralized_objective(frame, model, epsilon, seeds)
        else:
            objective = federated_objective(frame, model, epsilon, out_dir, seeds)
    done: list[Trial] = []
    for number, settings in enumerate(candidates):
        started = time.perf_counter()
        with progress.step(f"{model} trial {number + 1}/{len(candidates)}: {_brief(settings)}"):
            scores = objective(number, settings)
        done.append(Trial(number, dict(settings), scores, time.perf_counter() - started))
    best = max(done, key=lambda trial: (trial.score, -trial.number))
    chosen = EpsilonSettings(
        model=model,
        mode=mode,
        epsilon=epsilon,
        settings=best.settings,
        metric=current.metric,
        validation_score=round(best.score, 4),
        chosen_on=CHOSEN_ON[model],
        data=data,
        seeds=seeds,
        trials=len(done),
        note=f"fedshop-sim tune --model {model} --mode {mode} --epsilon {epsilon:g} "
        f"--trials {trials} --seed {seed}: trial {best.number} of {len(done)}"
        + (f", {FEDERATED_ROUNDS} rounds" if mode == "federated" else "")
        + f", training seeds {seeds[0]}..{seeds[-1]}"
        + f"; trial 0 was the entry before ({_provenance(current)})",
    )
    result = TuningResult(done, chosen)
    write_tables(result, out_dir)
    return result


def centralized_objective(
    frame: pd.DataFrame, model: str, epsilon: float, seeds: list[int]
) -> Objective:
    """Train on the pooled validation training data with DP at ``epsilon``, once per
    training seed; score the validation holdout."""
    if model == "recommender":
        split = split_next_basket_validation(frame)
        histories = build_histories(split.train, split.items)
        customers = split.train[schema.CUSTOMER].nunique()

        def recommender_score(number: int, settings: Mapping[str, Any]) -> list[float]:
            training = training_settings(settings)
            scores = []
            for seed in seeds:
                window = target_window(settings)
                examples = TrainingExamples(histories, seed=seed, target_window=window)
                plan = centralized_dp_plan(epsilon, len(examples), customers, training)
                trained, _ = fit_recommender(
                    len(split.items), examples, training, seed, plan.noise_multiplier
                )
                scores.append(float(evaluate_recommender(trained, split).loc[OVERALL, "ndcg@10"]))
            return scores

        return recommender_score
    data = churn_validation_data(frame)
    train, held_out = data.part(held_out=False), data.part(held_out=True)

    def churn_score(number: int, settings: Mapping[str, Any]) -> list[float]:
        training = training_settings(settings)
        plan = centralized_dp_plan(epsilon, len(train.labels), len(train.labels), training)
        scores = []
        for seed in seeds:
            trained, _ = fit_churn_dp(train, training, plan.noise_multiplier, seed)
            scores.append(float(evaluate_churn(trained, held_out).loc[OVERALL, "roc-auc"]))
        return scores

    return churn_score


def federated_objective(
    frame: pd.DataFrame, model: str, epsilon: float, out_dir: Path, seeds: list[int]
) -> Objective:
    """Federate over the storefronts' validation data (written to
    ``out_dir/validation-storefronts``) with DP at ``epsilon`` per site, once per
    ``simulation-seed`` in ``seeds`` (each with fresh site ledgers); score the pooled
    evaluation after the last round."""
    # Imported here: the sequential federation pulls in Flower, which centralized tuning
    # does not need.
    from simulations.sequential import run_sequential_federation

    split_dir, facts = validation_storefronts(frame, model, out_dir / "validation-storefronts")
    metric = get_model(model).headline_metric

    def federated_score(number: int, settings: Mapping[str, Any]) -> list[float]:
        scores = []
        trial = {f"{model}.{key}": value for key, value in settings.items()}
        for seed in seeds:
            run_config = validation_run_config(model, epsilon, seed, facts, trial)
            run_dir = out_dir / f"trial-{number}" / f"seed-{seed}"
            result = run_sequential_federation(split_dir, run_dir, run_config)
            final = result.metrics[model][-1]
            if metric not in final:
                reasons = "; ".join(result.declined[model]) or "no site sent an evaluation"
                raise ValueError(f"trial {number}: no pooled {metric} ({reasons})")
            scores.append(float(final[metric]))
        return scores

    return federated_score


def validation_storefronts(
    frame: pd.DataFrame, model: str, split_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """Write the storefronts' validation data of ``model`` to ``split_dir`` (each site's
    orders without its test invoices, or up to the test cutoff) and return it with the
    run-config facts a federation on it needs (churn: the validation cutoff)."""
    facts: dict[str, Any] = {}
    if model == "recommender":
        validation = without_test_invoices(frame)
    else:
        test_cutoff = churn_cutoff(frame)
        validation = before_test_labels(frame, test_cutoff)
        facts["churn.cutoff"] = validation_cutoff(test_cutoff).isoformat()
    prepare_storefronts(validation, split_dir, metadata={"source": "validation protocol"})
    return split_dir, facts


def validation_run_config(
    model: str,
    epsilon: float,
    seed: int,
    facts: Mapping[str, Any],
    *overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """The run config of one federation of ``model`` over its validation storefronts: DP at
    ``epsilon``, :data:`FEDERATED_ROUNDS` rounds, the split's ``facts``
    (:func:`validation_storefronts`), then ``overrides`` in order (a later one wins), and
    ``seed`` as its ``simulation-seed``."""
    config: dict[str, Any] = {
        "models": model,
        "epsilon": epsilon,
        "num-server-rounds": FEDERATED_ROUNDS,
        **facts,
    }
    for override in overrides:
        config.update(override)
    return {**config, SIMULATION_SEED: seed}


def write_tables(result: TuningResult, out_dir: Path) -> None:
    """``trials.csv``, ``trials.md`` and ``chosen.json`` of a search, atomically."""
    rows = pd.DataFrame(
        [
            {
                "trial": trial.number,
                **trial.settings,
                result.chosen.metric: round(trial.score, 4),
                "spread": round(max(trial.scores) - min(trial.scores), 4),
                "seconds": round(trial.seconds, 1),
                "chosen": trial.settings == result.chosen.settings,
            }
            for trial in result.trials
        ]
    )
    atomic_write(out_dir / TRIALS_CSV, rows.to_csv(index=False))
    chosen = result.chosen
    lines = [
        f"# {chosen.model}, {chosen.mode}, ε = {chosen.epsilon:g}: {len(result.trials)} trials",
        "",
        f"Scored on {chosen.chosen_on}; {chosen.metric} (mean over training seeds "
        f"{', '.join(map(str, chosen.seeds))}; spread = max − min), data: {chosen.data}. "
        "Trial 0 is the settings file's entry before this search.",
        "",
        "| " + " | ".join(rows.columns) + " |",
        "|" + "---|" * len(rows.columns),
        *(
            "| " + " | ".join(_cell(value) for value in row) + " |"
            for row in rows.itertuples(False)
        ),
        "",
    ]
    atomic_write(out_dir / TRIALS_MARKDOWN, "\n".join(lines))
    entry = {key.replace("_", "-"): value for key, value in asdict(chosen).items()}
    atomic_write(out_dir / CHOSEN_JSON, json.dumps(entry, indent=2, ensure_ascii=False) + "\n")


def _cell(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "**yes**" if value else ""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _provenance(entry: EpsilonSettings) -> str:
    """How an entry was chosen, in a few words: untuned, or its search's size and seed."""
    if entry.trials == 0:
        return "not yet tuned"
    return f"best of {entry.trials} validation trials, seed {', '.join(map(str, entry.seeds))}"


def _brief(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in settings.items())


def run_tune(args: argparse.Namespace) -> int:
    """Tune on the bundled data (or ``--storefronts``); print the trial table."""
    torch.set_num_threads(1)  # tiny models on shared cores, as compare does
    progress = Progress()
    if args.storefronts is not None:
        frame, data = read_split(args.storefronts), f"storefronts {args.storefronts}"
    else:
        frame, data = assign_storefronts(ingest_bundled(progress)), "bundled"
    result = tune(
        frame,
        model=args.model,
        mode=args.mode,
        epsilon=args.epsilon,
        trials=args.trials,
        seed=args.seed,
        out_dir=args.out,
        data=data,
        repeats=args.repeats,
        progress=progress,
    )
    if args.write_settings:
        record(result.chosen)
    print((args.out / TRIALS_MARKDOWN).read_text(), end="")
    return 0
