"""The comparison: centralized, federated and storefront-alone runs of registered models.

:func:`run_comparison` trains each model (by default the next-basket recommender and the
churn MLP; any registered model, a plug-in included) on one order-line frame in several
ways and evaluates each on its fixed protocol, through the model's pooled study
(:func:`models.study.pooled_study`) and its own training — nothing here names a model:

* ``centralized``: every customer's data pooled, non-private, with the centralized
  non-private settings (the settings file's ε = 0 entry, chosen on validation);
* ``centralized-dp-eps-<ε>``: pooled, user-level DP-SGD (one example per customer) at
  each target ε with the centralized settings of the nearest ε
  (:mod:`models.settings_per_epsilon`, overridden by ``--set``), with
  δ = :func:`privacy.planning.default_delta` of the training customers and σ calibrated
  once for the whole planned training at the sample rate Opacus really uses
  (:func:`privacy.planning.plan_dp`, a one-round plan, by the default accountant); the ε
  recorded is recomputed from the DP segment the training really ran;
* ``federated`` and ``federated-dp-eps-<ε>`` (with ``federated=True``; the command's
  default): real simulations of the Flower app on the same storefronts, non-private and
  at each target ε per site with the federated settings of the nearest ε
  (:mod:`lab.federated_runs`);
* ``storefront-alone``: one non-private model per storefront
  (:func:`simulations.storefronts.assign_storefronts`) with the centralized non-private
  settings, trained on that storefront's customers only and scored on that storefront's
  test customers only; with a model per tested storefront, its pooled rows are the
  storefronts' customer-weighted means (:func:`models.metrics.pooled_rows`).

A model the settings file does not list (a plug-in) trains with its own
``default_training``, marked untuned. It writes ``comparison.json`` (every number) and
``comparison.md`` (tables side by side with each model's baselines, e.g.
:mod:`models.recommender.baselines`), both atomically. :func:`run_seeds` repeats
the comparison for several seeds (each in ``seed-<s>/``) and writes their pooled means and
spreads (:mod:`lab.compare_seeds`).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from clients.ingest import ingest_table
from common.atomic_files import atomic_write
from lab.compare_options import COMPARED_MODELS, DEFAULT_EPSILONS
from lab.compare_seeds import pool_seeds
from lab.federated_runs import federated_references
from models import metrics
from models.metrics import CUSTOMERS, pooled_rows
from models.registry import get_model
from models.settings_per_epsilon import (
    CENTRALIZED_MODE,
    NON_PRIVATE,
    TARGET_WINDOW,
    EpsilonSettings,
    validation_record,
)
from models.study import PooledStudy, current_settings, pooled_study
from models.training import LocalTraining, TrainingSettings
from privacy.accountants import DPSegment
from privacy.planning import DPPlan, default_delta, plan_dp
from privacy.pseudonymise import generate_key, load_key
from simulations.progress import SILENT, Progress
from simulations.run_configs import QUICK_OVERRIDES
from simulations.runner import DEFAULT_CLIENT_CPUS
from simulations.storefronts import (
    BUNDLED_DATA,
    DEFAULT_MIN_CUSTOMERS,
    assign_storefronts,
    prepare_storefronts,
)

COMPARISON_JSON = "comparison.json"
COMPARISON_MARKDOWN = "comparison.md"
FEDERATED_SPLIT = "storefronts"
"""Subdirectory of the comparison's output holding the federated runs' storefront split."""
CENTRALIZED = "centralized"
STOREFRONT_ALONE = "storefront-alone"


QUICK_EPOCHS = 2
"""Epochs of every epoch-based run in quick mode (tests)."""


def run_comparison(
    frame: pd.DataFrame,
    out_dir: Path,
    *,
    epsilons: Sequence[float] = DEFAULT_EPSILONS,
    seed: int = 0,
    quick: bool = False,
    min_customers: int = DEFAULT_MIN_CUSTOMERS,
    federated: bool = False,
    client_cpus: int = DEFAULT_CLIENT_CPUS,
    settings_overrides: Mapping[str, Any] | None = None,
    models: Sequence[str] = COMPARED_MODELS,
    progress: Progress = SILENT,
) -> dict[str, Any]:
    """Train and evaluate every run (module docstring) and write the JSON and Markdown.

    Args:
        frame: order lines in the canonical schema; ``storefront`` holds the country.
        out_dir: where ``comparison.json`` and ``comparison.md`` go (created if missing).
        epsilons: target ε of the centralized DP runs (each > 0).
        seed: seeds weights, sampling, target draws and DP noise.
        quick: :data:`QUICK_EPOCHS` epochs for every epoch-based run (tests, smoke runs).
        min_customers: storefront threshold of :func:`assign_storefronts`.
        federated: also run the federated simulations of
            :func:`lab.federated_runs.federated_references` (non-private and each
            ε) on the same storefronts, written under ``out_dir`` (minutes each).
        client_cpus: CPUs per simulated ClientApp of the federated runs.
        settings_overrides: run-config keys ``<model>.<key>`` that replace the settings
            per ε of every DP run (centralized and federated) of that model.
        models: the registered models compared (:func:`models.study.pooled_study`).
        progress: reports each training and evaluation with its wall time.

    Returns:
        The content of ``comparison.json``.
    """
    if not epsilons or any(not (math.isfinite(e) and e > 0) for e in epsilons):
        raise ValueError(f"every target ε must be finite and > 0, got {list(epsilons)}")
    with progress.step(f"split into storefronts (at least {min_customers} customers)"):
        assigned = assign_storefronts(frame, min_customers)
    overrides = dict(settings_overrides or {})
    result = {
        "settings": {
            "seed": seed,
            "quick": quick,
            "min-customers": min_customers,
            "epsilons": [float(e) for e in epsilons],
        },
        **{
            name: compare_model(name, assigned, epsilons, seed, quick, overrides, progress)
            for name in models
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    if federated:
        split = out_dir / FEDERATED_SPLIT
        with progress.step(f"write the storefront split to {split}"):
            prepare_storefronts(assigned, split, metadata={"min-customers": min_customers})
        runs = federated_references(
            split,
            out_dir,
            list(epsilons),
            models=models,
            overrides=QUICK_OVERRIDES if quick else None,
            settings_overrides=overrides,
            client_cpus=client_cpus,
            seed=seed,
            progress=progress,
        )
        for model, federated_runs in runs.items():
            result[model]["runs"] = _before_storefront_alone(result[model]["runs"], federated_runs)
    write_comparison(result, out_dir)
    return result


def run_seeds(
    frame: pd.DataFrame, out_dir: Path, seeds: Sequence[int], **options: Any
) -> dict[str, Any]:
    """:func:`run_comparison` once per seed; with several seeds each goes to
    ``out_dir/seed-<s>`` and ``out_dir`` gets their means and spreads
    (:func:`lab.compare_seeds.pool_seeds`). ``options``: those of
    :func:`run_comparison` but ``seed``.

    Raises:
        ValueError: no seed, a repeated seed, or an invalid option.
    """
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"give one or more distinct seeds, got {list(seeds)}")
    if len(seeds) == 1:
        return run_comparison(frame, out_dir, seed=seeds[0], **options)
    progress: Progress = options.get("progress", SILENT)
    results = []
    for number, seed in enumerate(seeds, start=1):
        with progress.step(f"seed {seed} ({number} of {len(seeds)})"):
            results.append(run_comparison(frame, out_dir / f"seed-{seed}", seed=seed, **options))
    pooled = pool_seeds(results, seeds)
    write_comparison(pooled, out_dir)
    return pooled


def write_comparison(result: dict[str, Any], out_dir: Path) -> None:
    """``comparison.json`` and ``comparison.md`` of ``result`` in ``out_dir``, atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / COMPARISON_JSON, json.dumps(result, indent=2, allow_nan=False) + "\n")
    atomic_write(out_dir / COMPARISON_MARKDOWN, comparison_markdown(result))


def _before_storefront_alone(runs: dict[str, Any], inserted: dict[str, Any]) -> dict[str, Any]:
    """``runs`` with ``inserted`` placed before the storefront-alone column."""
    ordered = {name: run for name, run in runs.items() if name != STOREFRONT_ALONE}
    return {**ordered, **inserted, STOREFRONT_ALONE: runs[STOREFRONT_ALONE]}


def compare_model(
    name: str,
    frame: pd.DataFrame,
    epsilons: Sequence[float],
    seed: int,
    quick: bool,
    overrides: Mapping[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    """Every centralized and storefront-alone run and every baseline of model ``name`` on
    its protocol (:func:`models.study.pooled_study`), as JSON-ready dicts."""
    with progress.step(f"{name}: the protocol's split"):
        study = pooled_study(name, frame)
    runs: dict[str, Any] = {}
    entry = non_private_settings(name)
    plain = quick_settings(entry.training(), quick)
    with progress.step(f"{name}: {CENTRALIZED} ({plain.local_epochs} epochs)"):
        examples = study.examples(entry.settings, seed)
        module, _ = fit(name, study.build, examples, plain, seed)
        runs[CENTRALIZED] = {
            "training": _entry_settings(entry, plain, len(examples)),
            "validation": validation_record(name, CENTRALIZED_MODE, NON_PRIVATE),
            "metrics": _rows(study.score(module)),
        }
    for epsilon in epsilons:
        dp_entry = centralized_dp_settings(name, epsilon, overrides)
        settings = quick_settings(dp_entry.training(), quick)
        examples = study.examples(dp_entry.settings, seed)
        plan = centralized_dp_plan(epsilon, len(examples), study.customers, settings)
        with progress.step(f"{name}: {dp_run_name(epsilon)} (σ {plan.noise_multiplier:.3g})"):
            module, steps = fit(name, study.build, examples, settings, seed, plan.noise_multiplier)
            runs[dp_run_name(epsilon)] = {
                "training": _entry_settings(dp_entry, settings, len(examples)),
                "validation": validation_record(name, CENTRALIZED_MODE, epsilon, overrides),
                "privacy": privacy_spent(plan, steps),
                "metrics": _rows(study.score(module)),
            }
    tested = set(runs[CENTRALIZED]["metrics"]) - {metrics.OVERALL, metrics.OUTSIDE_UK}
    runs[STOREFRONT_ALONE] = _storefront_alone(name, study, entry, plain, seed, tested, progress)
    with progress.step(f"{name}: baselines"):
        baselines = {baseline: _rows(table) for baseline, table in study.baselines().items()}
    return {"runs": runs, "baselines": baselines}


def _storefront_alone(
    name: str,
    study: PooledStudy,
    entry: EpsilonSettings,
    settings: TrainingSettings,
    seed: int,
    tested: set[str],
    progress: Progress,
) -> dict[str, Any]:
    """One non-private model per storefront, scored on that storefront's test customers;
    when every tested storefront has one, the pooled rows (overall, outside UK) mean "every
    storefront on its own" (:func:`models.metrics.pooled_rows`)."""
    training: dict[str, Any] = {}
    rows: dict[str, Any] = {}
    for storefront in study.storefronts():
        examples = study.examples(entry.settings, seed, storefront)
        if len(examples) == 0:
            continue  # no customer to learn from: nothing to compare
        with progress.step(f"{name}: {STOREFRONT_ALONE} {storefront} ({len(examples)})"):
            module, _ = fit(name, study.build, examples, settings, seed)
            rows[storefront] = _rows(study.score(module))[storefront]
        training[storefront] = _settings(settings, len(examples))
    if tested <= set(rows):
        rows = {**pooled_rows(rows, get_model(name).customer_means), **rows}
    return {"training": training, "metrics": rows}


def fit(
    name: str,
    build: Callable[[], nn.Module],
    examples: Dataset,
    settings: TrainingSettings,
    seed: int,
    noise_multiplier: float | None = None,
) -> tuple[nn.Module, int]:
    """A fresh module from ``build`` (after seeding torch) trained on ``examples`` by model
    ``name``'s own training (DP-SGD at ``noise_multiplier`` if given), and the DP steps it
    took."""
    torch.manual_seed(seed)
    module = build()
    plan = LocalTraining(settings, noise_multiplier=noise_multiplier, seed=seed)
    return module, get_model(name).train(module, examples, plan).dp_steps


def centralized_dp_plan(
    target_epsilon: float, n_examples: int, n_customers: int, settings: TrainingSettings
) -> DPPlan:
    """σ for ``settings.local_epochs`` epochs of Poisson batches over ``n_examples`` (one per
    customer who can give one) at δ of all ``n_customers``: a one-round plan."""
    return plan_dp(
        n_customers=n_examples,
        batch_size=settings.batch_size,
        local_epochs=settings.local_epochs,
        planned_rounds=1,
        epsilon_budget=target_epsilon,
        delta=default_delta(n_customers),
    )


def privacy_spent(plan: DPPlan, steps: int) -> dict[str, Any]:
    """The plan with the steps the training really took and the ε recomputed from them."""
    segment = DPSegment(plan.sample_rate, plan.noise_multiplier, steps)
    return {
        "target_epsilon": plan.epsilon_budget,
        "delta": plan.delta,
        "sample_rate": plan.sample_rate,
        "planned_steps": plan.steps_per_round,
        "noise_multiplier": plan.noise_multiplier,
        "accountant": plan.accountant,
        "steps": segment.steps,
        "epsilon": plan.epsilon([segment]),
    }


def non_private_settings(model: str) -> EpsilonSettings:
    """The centralized non-private settings of ``model``: the settings file's entry for
    ε = :data:`~models.settings_per_epsilon.NON_PRIVATE` (:func:`models.study.current_settings`)."""
    return current_settings(model, CENTRALIZED_MODE, NON_PRIVATE)


def centralized_dp_settings(
    model: str, epsilon: float, overrides: Mapping[str, Any] | None = None
) -> EpsilonSettings:
    """The centralized settings of the nearest ε for ``model``
    (:func:`models.study.current_settings`), with ``overrides`` (run-config keys
    ``<model>.<key>``) replacing its values."""
    return current_settings(model, CENTRALIZED_MODE, epsilon).with_overrides(overrides or {})


def dp_run_name(epsilon: float) -> str:
    """``centralized-dp-eps-8`` (integers without a decimal point)."""
    return f"{CENTRALIZED}-dp-eps-{epsilon:g}"


def quick_settings(settings: TrainingSettings, quick: bool) -> TrainingSettings:
    """``settings`` with :data:`QUICK_EPOCHS` local epochs in quick mode, else unchanged."""
    if not quick:
        return settings
    return replace(settings, local_epochs=QUICK_EPOCHS)


def _settings(settings: TrainingSettings, examples: int) -> dict[str, Any]:
    return {**settings.to_config(), "examples": examples}


def _entry_settings(
    entry: EpsilonSettings, settings: TrainingSettings, examples: int
) -> dict[str, Any]:
    """A run's settings from the settings file, its target window where it has one, and
    their provenance."""
    extra = {key: value for key, value in entry.settings.items() if key == TARGET_WINDOW}
    return {**_settings(settings, examples), **extra, "chosen-on": entry.chosen_on}


def _rows(table: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """Metric rows by group name, NaN (no AUC on one-class groups) as None."""
    return {str(name): _clean(row) for name, row in table.to_dict(orient="index").items()}


def _clean(row: dict[str, Any]) -> dict[str, float | None]:
    return {
        str(key): None if isinstance(value, float) and math.isnan(value) else float(value)
        for key, value in row.items()
    }


def comparison_markdown(result: dict[str, Any]) -> str:
    """Tables side by side, one per model and metric: groups (overall, outside UK,
    storefronts) down, runs and baselines across; ``—`` where a run has no such row. A
    pooled comparison of several seeds shows each run's mean and, in brackets, its
    smallest and largest value over the seeds."""
    sections = ["# Centralized, federated and storefront-alone runs, with and without DP\n"]
    seeds = result["settings"].get("seeds")
    if seeds:
        sections.append(
            f"Runs: mean over seeds {', '.join(map(str, seeds))} (smallest–largest); "
            "baselines are deterministic.\n"
        )
    for model in _models(result):
        columns = {**result[model]["runs"], **result[model]["baselines"]}
        groups: list[str] = []
        for run in columns.values():
            rows = run.get("metrics", run)
            groups += [g for g in rows if g not in groups]
        sizes = result[model]["runs"][CENTRALIZED]["metrics"]
        for name in _table_metrics(sizes):
            header = ["group", "customers", *columns]
            lines = [
                f"\n## {model}: {name}\n",
                "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header),
            ]
            for group in groups:
                customers = sizes.get(group, {}).get("customers")
                cells = [group, "—" if customers is None else f"{customers:.0f}"]
                for run in columns.values():
                    value = run.get("metrics", run).get(group, {}).get(name)
                    spread = run.get("spread", {}).get(group, {}).get(name)
                    cells.append(_cell(value, spread))
                lines.append("| " + " | ".join(cells) + " |")
            sections.append("\n".join(lines) + "\n")
    sections.append(_validation_table(result))
    sections.append(_privacy_table(result))
    return "\n".join(sections)


def _validation_table(result: dict[str, Any]) -> str:
    """Each run's headline metric on validation (what its settings were chosen by) beside
    its test score (mean and range over seeds when pooled); "no DP" for the settings of the
    non-private runs."""
    lines = [
        "\n## settings per ε: chosen on validation, scored on test\n",
        "| model | run | settings of ε | chosen on | trials | metric | validation | test |",
        "|---|---|---:|---|---:|---|---:|---:|",
    ]
    for model in _models(result):
        for name, run in result[model]["runs"].items():
            chosen = run.get("validation")
            if not chosen:
                continue
            metric = chosen["metric"]
            test = _cell(
                run["metrics"][metrics.OVERALL].get(metric),
                run.get("spread", {}).get(metrics.OVERALL, {}).get(metric),
            )
            score = "—" if chosen["score"] is None else f"{chosen['score']:.4f}"
            split = chosen["chosen-on"].split(" (")[0]
            epsilon = "no DP" if chosen["epsilon"] == NON_PRIVATE else f"{chosen['epsilon']:g}"
            lines.append(
                f"| {model} | {name} | {epsilon} | {split} | {chosen['trials']} | "
                f"{metric} | {score} | {test} |"
            )
    return "\n".join(lines) + "\n"


def _models(result: dict[str, Any]) -> list[str]:
    """The models a comparison result holds, in its order."""
    return [name for name in result if name != "settings"]


def _table_metrics(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The metrics tabulated for a model: its centralized run's, but counts and rates of
    the data itself (customers, the churn rate)."""
    return [name for name in rows[metrics.OVERALL] if name not in (CUSTOMERS, "churn-rate")]


def _cell(value: float | None, spread: list[float] | None) -> str:
    if value is None:
        return "—"
    if spread is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({spread[0]:.3f}–{spread[1]:.3f})"


def _privacy_table(result: dict[str, Any]) -> str:
    lines = [
        "\n## privacy of the centralized DP runs\n",
        "| model | run | target ε | ε (recomputed) | δ | σ | sample rate | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in _models(result):
        for name, run in result[model]["runs"].items():
            if "privacy" in run:
                p = run["privacy"]
                lines.append(
                    f"| {model} | {name} | {p['target_epsilon']:g} | {p['epsilon']:.3f} | "
                    f"{p['delta']:.2g} | {p['noise_multiplier']:.3f} | {p['sample_rate']:.4f} | "
                    f"{p['steps']} |"
                )
    return "\n".join(lines) + "\n"


def ingest_bundled(progress: Progress = SILENT) -> pd.DataFrame:
    """The bundled export's order lines in the canonical schema, pseudonymised under a
    throwaway key: a study needs pseudonymous tokens, never a stable mapping."""
    with tempfile.TemporaryDirectory() as key_dir, progress.step(f"ingest {BUNDLED_DATA.name}"):
        key_path = Path(key_dir) / "study.key"
        generate_key(key_path)
        frame, _ = ingest_table(BUNDLED_DATA, load_key(key_path))
    return frame


def run_compare(args: argparse.Namespace) -> int:
    """Centralized (plain and DP) and storefront-alone training of the chosen models on the
    bundled data; print the Markdown tables."""
    # One thread: these small models gain nothing from a second one on a shared 2-core box.
    torch.set_num_threads(1)
    progress = Progress()
    frame = ingest_bundled(progress)
    run_seeds(
        frame,
        args.out,
        args.seeds,
        epsilons=args.epsilons,
        quick=args.quick,
        federated=args.federated,
        client_cpus=args.client_cpus,
        settings_overrides=dict(args.set),
        models=args.models,
        progress=progress,
    )
    print((args.out / COMPARISON_MARKDOWN).read_text(), end="")
    return 0
