"""``python -m lab tune``: a seeded random search of a model's training settings at one ε
(or without DP, ε = 0), scored on the validation protocols only.

Each trial trains the model with one draw of settings (:mod:`lab.tuning_space`;
trial 0 is the settings file's current entry) under user-level DP at the target ε, or
without DP for the non-private runs' settings, and scores it on validation: the
recommender's NDCG@10 on the second-to-last invoices (:mod:`models.recommender.validation`),
churn's ROC-AUC one horizon before the test cutoff (:mod:`models.churn.validation`). The
test split is never scored here: every objective below reads only the validation
protocols' data.

- ``centralized``: the pooled validation data in this process, σ calibrated for the
  whole planned training as :mod:`lab.compare` does; a trial's score is the mean
  over ``repeats`` training seeds (weights, sampling, DP noise): on the bundled data one
  seed moves churn's validation ROC-AUC by about 0.02, as much as most setting changes;
- ``federated``: the storefronts' validation data (each site's orders without its test
  invoices, or up to the test cutoff) in the sequential federation
  (:func:`lab.sequential.run_sequential_federation`: the sites' own code, DP
  planning and ledgers, FedAvg) for :data:`FEDERATED_ROUNDS` rounds; a fresh run
  directory per trial and seed, so every run starts with unspent site budgets. A trial's
  score is the mean over ``repeats`` runs, each with its own ``simulation-seed``.

It writes ``trials.csv`` and ``trials.md`` (every trial: settings, validation score,
seconds) and ``chosen.json`` (the best trial's entry for the settings file) into the
output directory; ``--write-settings`` records that entry in
``models/<model>/settings-per-epsilon.json``. The best trial is the best score (the
highest, or the lowest for a headline metric that is an error), the earlier trial on a
tie (so the current settings stay unless a draw beats them).

Churn is ranked by ROC-AUC, which ignores calibration, yet its probabilities are what a
storefront acts on. So churn's best trial is chosen among the *calibrated* ones: those
whose validation Brier score is below the base rate's, r(1 − r) for the held-out churn
rate r, which is the Brier of forecasting r for every customer (Brier 1950). Without the
guard the first federated searches chose settings whose validation Brier was 0.256 against
the base rate's 0.249.
Only when no trial is calibrated is the best of all chosen, and its entry says so.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.atomic_files import atomic_write
from lab.compare import centralized_dp_plan, fit, ingest_bundled
from lab.tuning_space import draw_trials
from models.metrics import OVERALL
from models.registry import get_model
from models.settings_per_epsilon import (
    NON_PRIVATE,
    EpsilonSettings,
    record,
    training_settings,
)
from models.study import (
    current_settings,
    pooled_study,
    search_space,
    validation_note,
    validation_orders,
)
from models.training import SIMULATION_SEED, TrainingSettings
from simulations.errors import CommandError
from simulations.progress import SILENT, Progress
from simulations.run_configs import MAIN_RUN_CONFIG, PLAIN_SITE_POLICY
from simulations.site_policies import apply_site_policy
from simulations.storefronts import assign_storefronts, prepare_storefronts, read_split

FEDERATED_ROUNDS = int(MAIN_RUN_CONFIG["num-server-rounds"])
"""Rounds of every federated trial: the main job's."""
TRIALS_CSV = "trials.csv"
TRIALS_MARKDOWN = "trials.md"
CHOSEN_JSON = "chosen.json"

Objective = Callable[[int, Mapping[str, Any]], list[dict[str, float]]]
"""(trial number, settings in run-config spelling) -> validation metrics of each training
seed: the model's headline metric and, for churn, ``brier`` and ``churn-rate``."""
BRIER = "brier"
CHURN_RATE = "churn-rate"


@dataclass(frozen=True)
class Trial:
    """One trial: its settings, validation metrics (one dict per training seed), the metric
    it is ranked by, and wall time."""

    number: int
    settings: dict[str, Any]
    metrics: list[dict[str, float]]
    metric: str
    seconds: float

    @property
    def scores(self) -> list[float]:
        """The ranking metric of each training seed."""
        return [seed[self.metric] for seed in self.metrics]

    @property
    def score(self) -> float:
        """The mean validation score over the training seeds."""
        return float(np.mean(self.scores))

    @property
    def brier(self) -> float | None:
        """Mean validation Brier score over the seeds, if the model reports one."""
        return _mean(self.metrics, BRIER)

    @property
    def base_rate_brier(self) -> float | None:
        """Mean r(1 − r) over the seeds, r the held-out churn rate: the Brier of forecasting
        the base rate for everyone (same customers every seed, so the same each time)."""
        if CHURN_RATE not in self.metrics[0]:
            return None
        return float(np.mean([seed[CHURN_RATE] * (1 - seed[CHURN_RATE]) for seed in self.metrics]))

    @property
    def calibrated(self) -> bool:
        """Brier below the base rate's (module docstring); true for a model without one."""
        if self.brier is None or self.base_rate_brier is None:
            return True
        return self.brier < self.base_rate_brier


def best_trial(trials: list[Trial], higher_is_better: bool = True) -> Trial:
    """The best mean score (the highest, or the lowest for a metric where lower is better)
    among the calibrated trials (all trials if none is), the earlier trial on a tie."""
    eligible = [trial for trial in trials if trial.calibrated] or trials
    sign = 1.0 if higher_is_better else -1.0
    return max(eligible, key=lambda trial: (sign * trial.score, -trial.number))


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
    vary: Sequence[str] | None = None,
    progress: Progress = SILENT,
) -> TuningResult:
    """Run the search (module docstring) and write its table and chosen entry.

    Args:
        frame: order lines in the canonical schema, ``storefront`` holding each customer's
            storefront (:func:`simulations.storefronts.assign_storefronts`).
        model, mode, epsilon: what to tune (a registered model with a validation split,
            :data:`~models.settings_per_epsilon.MODES`, target ε > 0).
        trials: how many settings to try (the current ones first).
        seed: seeds the draws and, in centralized mode, the first training seed.
        out_dir: where the table and the chosen entry go (created if missing).
        data: names the data in the chosen entry (e.g. ``bundled``).
        repeats: training seeds ``seed .. seed + repeats - 1`` per trial (federated mode:
            the runs' ``simulation-seed``).
        vary: draw only these settings, holding the others at the current entry's
            (default: draw all).
        progress: reports each trial with its wall time.

    Raises:
        ValueError: ``repeats`` < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    seeds = list(range(seed, seed + repeats))
    current = current_settings(model, mode, epsilon)
    private = epsilon != NON_PRIVATE
    candidates = draw_trials(model, mode, current.settings, trials, seed, vary, private=private)
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
            metrics = objective(number, settings)
        seconds = time.perf_counter() - started
        done.append(Trial(number, dict(settings), metrics, current.metric, seconds))
    best = best_trial(done, get_model(model).headline_higher_is_better)
    chosen = EpsilonSettings(
        model=model,
        mode=mode,
        epsilon=epsilon,
        settings=best.settings,
        metric=current.metric,
        validation_score=round(best.score, 4),
        chosen_on=validation_note(model),
        data=data,
        seeds=seeds,
        trials=len(done),
        note=f"python -m lab tune --model {model} --mode {mode} --epsilon {epsilon:g} "
        f"--trials {trials} --seed {seed}"
        + (f" --vary {','.join(vary)}" if vary else "")
        + f": trial {best.number} of {len(done)}"
        + (f", {FEDERATED_ROUNDS} rounds" if mode == "federated" else "")
        + f", training seeds {seeds[0]}..{seeds[-1]}"
        + _calibration_note(done)
        + f"; trial 0 was the entry before ({_provenance(current)})",
    )
    result = TuningResult(done, chosen)
    write_tables(result, out_dir)
    return result


def centralized_objective(
    frame: pd.DataFrame,
    model: str,
    epsilon: float,
    seeds: list[int],
) -> Objective:
    """Train on the pooled validation training data (the model's validation study,
    :func:`models.study.pooled_study`) with DP at ``epsilon`` (none at
    :data:`NON_PRIVATE`), once per training seed; score the validation holdout: the model's
    headline metric, and its Brier score and churn rate where it has them."""
    study = pooled_study(model, frame, validation=True)

    def score(number: int, settings: Mapping[str, Any]) -> list[dict[str, float]]:
        training = training_settings(settings)
        per_seed = []
        for seed in seeds:
            examples = study.examples(settings, seed)
            noise = _noise(epsilon, len(examples), study.customers, training)
            trained, _ = fit(model, study.build, examples, training, seed, noise)
            overall = study.score(trained).loc[OVERALL]
            per_seed.append(_validation_metrics(model, overall))
        return per_seed

    return score


def _noise(
    epsilon: float, examples: int, customers: int, training: TrainingSettings
) -> float | None:
    """σ of a centralized plan at ``epsilon``; None without DP (:data:`NON_PRIVATE`)."""
    if epsilon == NON_PRIVATE:
        return None
    return centralized_dp_plan(epsilon, examples, customers, training).noise_multiplier


def federated_objective(
    frame: pd.DataFrame, model: str, epsilon: float, out_dir: Path, seeds: list[int]
) -> Objective:
    """Federate over the storefronts' validation data (written to
    ``out_dir/validation-storefronts``) with DP at ``epsilon`` per site, once per
    ``simulation-seed`` in ``seeds`` (each with fresh site ledgers); score the final
    weights exactly on every storefront's validation customers. At :data:`NON_PRIVATE` the
    simulated sites' policy lets them train without DP, as the comparison's non-private run
    does."""
    # Imported here: the sequential federation pulls in Flower, which centralized tuning
    # does not need.
    from lab.sequential import run_sequential_federation

    split_dir, facts = validation_storefronts(frame, model, out_dir / "validation-storefronts")
    metric = get_model(model).headline_metric

    def federated_score(number: int, settings: Mapping[str, Any]) -> list[dict[str, float]]:
        per_seed = []
        trial = {f"{model}.{key}": value for key, value in settings.items()}
        for seed in seeds:
            run_config = validation_run_config(model, epsilon, seed, facts, trial)
            run_dir = out_dir / f"trial-{number}" / f"seed-{seed}"
            if epsilon == NON_PRIVATE:
                apply_site_policy(
                    split_dir, run_dir, PLAIN_SITE_POLICY, set_by="python -m lab tune"
                )
            result = run_sequential_federation(split_dir, run_dir, run_config)
            final = result.exact[model]
            if metric not in final or not math.isfinite(final[metric]):
                reasons = "; ".join(result.declined[model]) or "no held-out customer"
                raise ValueError(f"trial {number}: no pooled {metric} ({reasons})")
            per_seed.append(_validation_metrics(model, final))
        return per_seed

    return federated_score


def _validation_metrics(model: str, metrics: Mapping[str, Any]) -> dict[str, float]:
    """What a trial keeps of one validation score: the model's headline metric, and its
    Brier score and churn rate where it has them (the calibration guard)."""
    kept = (get_model(model).headline_metric, BRIER, CHURN_RATE)
    return {key: float(metrics[key]) for key in kept if key in metrics}


def _mean(metrics: list[dict[str, float]], key: str) -> float | None:
    return float(np.mean([seed[key] for seed in metrics])) if key in metrics[0] else None


def _calibration_note(trials: list[Trial]) -> str:
    """What the churn calibration guard did, for the chosen entry's note ('' without one)."""
    if trials[0].brier is None:
        return ""
    calibrated = sum(trial.calibrated for trial in trials)
    if calibrated == 0:
        return "; no trial's Brier beat the base rate's, so the best of all was chosen"
    return f"; chosen among the {calibrated} trials whose Brier beat the base rate's"


def validation_storefronts(
    frame: pd.DataFrame, model: str, split_dir: Path
) -> tuple[Path, dict[str, Any]]:
    """Write the storefronts' validation data of ``model`` to ``split_dir`` (each site's
    orders without its test invoices, or up to the test cutoff) and return it with the
    run-config facts a federation on it needs (churn: the validation cutoff)."""
    validation, facts = validation_orders(model, frame)
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
                **_calibration_columns(trial),
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
        "Trial 0 is the settings file's entry before this search."
        + (
            " Chosen among the calibrated trials: Brier below the base rate's r(1 − r)."
            if "calibrated" in rows
            else ""
        ),
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


def _calibration_columns(trial: Trial) -> dict[str, Any]:
    """Brier, the base rate's and whether the trial is calibrated (churn only)."""
    if trial.brier is None or trial.base_rate_brier is None:
        return {}
    return {
        BRIER: round(trial.brier, 4),
        "base-rate brier": round(trial.base_rate_brier, 4),
        "calibrated": trial.calibrated,
    }


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
    try:  # before any data is read: a model tune cannot search is a usage error
        search_space(args.model, args.mode, private=args.epsilon != NON_PRIVATE)
    except ValueError as error:
        raise CommandError(f"tune --model {args.model}: {error}") from None
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
        vary=args.vary,
        progress=progress,
    )
    if args.write_settings:
        record(result.chosen)
    print((args.out / TRIALS_MARKDOWN).read_text(), end="")
    return 0
